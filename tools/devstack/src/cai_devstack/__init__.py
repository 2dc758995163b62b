"""Cai's local stack for development, tests and benchmarks (never deployed)."""
