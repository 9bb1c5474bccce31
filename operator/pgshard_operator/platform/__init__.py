"""Platforms carry out the shard manager's actions: ``base`` is the interface."""
