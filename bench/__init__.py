"""Benchmarks: never part of the test run; every figure is a ratio against a baseline measured in the same run."""
