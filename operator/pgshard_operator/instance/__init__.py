"""The instance agent: the command of every shard member (pod or local process)."""
