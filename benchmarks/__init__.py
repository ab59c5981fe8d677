"""Benchmarks for bundler's kernel pipeline: `python -m benchmarks [--quick] [--only NAME]`.

Every benchmark measures its baseline in the same process and run and reports a ratio, so the
figures compare like with like on whatever machine runs them. Nothing here is a test: the test
suite only checks that the code runs at a tiny size and that the naive and shipped pipelines
write identical submissions (`tests/test_benchmarks.py`).
"""
