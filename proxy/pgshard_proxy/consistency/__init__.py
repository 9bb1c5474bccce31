"""Per-session consistency: position tokens (pure) and the follower position monitor (asyncpg)."""
