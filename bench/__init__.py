"""Benchmarks: cloudlog against watchtower and the naive decoupled design, on one machine.

``python -m bench`` (``make bench``) starts its own emulator for each system, runs the three
side by side and writes ``bench/results/latest.json``, ``latest.md`` and PNG plots.
See docs/benchmarks.md.
"""
