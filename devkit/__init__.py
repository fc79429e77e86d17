"""Tooling around the lesson, not part of it: the runner, the embedded Valkey, benchmarks."""
