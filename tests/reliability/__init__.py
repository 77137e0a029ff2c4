"""Reliability tests: several processes and crashes against real files."""
