"""Benchmarks: each prints its figures (medians, and ratios to a baseline from the same run)."""
