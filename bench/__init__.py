"""pftray benchmarks: scripts that print figures (never timed asserts)."""
