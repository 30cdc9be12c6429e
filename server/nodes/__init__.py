"""Worker nodes: the machines that run jobs, their heartbeats and their GPU leases."""
