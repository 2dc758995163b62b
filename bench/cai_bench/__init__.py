"""Cai's benchmark suite: load against Cai and against the bare model (the floor), same run.

Run it with `make bench` (see docs/performance.md).
"""
