"""Integration tests on a real local Ray (a package so their Ray cluster is torn down after them)."""
