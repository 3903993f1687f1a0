"""pytest-benchmark suite of the deterministic cores. Run from the repository root:

    pytest bench/micro --benchmark-only

It is not part of the CI suite: the default `pytest` collects only tests/ (pyproject testpaths),
and the default options skip benchmarks (--benchmark-skip), which --benchmark-only overrides.
"""
