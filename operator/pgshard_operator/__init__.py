"""pgshard control plane: shard manager, instance agent, local platform and operator."""

__version__ = "0.1.0"
