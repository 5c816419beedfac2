"""Benchmarks (not tests): run each file as a script, see its docstring."""
