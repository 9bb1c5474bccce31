"""The platform-independent failover core: one shard manager per shard.

``state`` (snapshots and observations), ``policy`` (settings), ``order``,
``decide``, ``replication`` and ``switchover`` are pure; ``observe`` probes
PostgreSQL with asyncpg; ``manager`` runs the loop and acts through a
:class:`pgshard_operator.platform.base.Platform`. The same code runs under the
local platform and the Kubernetes operator.
"""
