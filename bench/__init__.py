"""Benchmarks (`make bench-*`): measurements printed side by side, not tests."""
