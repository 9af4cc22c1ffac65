"""LedgerBridge benchmarks (issue #8): `python -m bench --help`. Not tests: see docs/benchmarks.md."""
