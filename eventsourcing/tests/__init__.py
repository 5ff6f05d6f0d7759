"""Reusable test cases and example models, importable by extensions and backend test suites."""
