"""Benchmarks, run on purpose (never by the test suite's timing): one entry point per benchmark."""
