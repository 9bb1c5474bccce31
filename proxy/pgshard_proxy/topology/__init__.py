"""Where the proxy learns the cluster topology: the TopologySource protocol and its sources."""
