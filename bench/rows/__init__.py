"""Benchmark rows added one file each: every module here is imported by ``python3 -m bench``
and registers its scenarios with ``bench.registry.scenario`` (see that module)."""
