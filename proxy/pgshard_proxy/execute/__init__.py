"""Carrying out shard plans over server connections: scatter reads and their merge."""
