"""The asyncio side of the proxy: listener, client sessions, backend connections, cancel."""
