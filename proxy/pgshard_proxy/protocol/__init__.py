"""Sans-I/O PostgreSQL v3 protocol: framing, message codecs, SQLSTATE errors, auth.

Nothing here touches sockets or asyncio; the server package feeds bytes in and
writes the bytes these modules produce.
"""
