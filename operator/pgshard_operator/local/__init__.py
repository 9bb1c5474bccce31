"""``pgshard local``: a whole cluster as processes on this machine (supervisor, files, CLI)."""
