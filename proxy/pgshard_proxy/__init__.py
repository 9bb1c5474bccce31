"""pgshard proxy: PostgreSQL wire protocol, routing, session consistency."""

__version__ = "0.1.0"
