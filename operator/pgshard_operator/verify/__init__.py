"""``pgshard verify``: a checker users can run against their cluster (issue 13).

``history`` holds what a workload recorded and the pure checks over it; the
workload through the proxy, the fault injection and the command come next.
"""
