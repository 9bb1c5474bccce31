"""Stable modules shared with the control plane (the only part of the proxy it may import)."""
