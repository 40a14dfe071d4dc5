"""Benchmarks: each prints a table and refreshes its own section of benchmarks/RESULTS.md."""
