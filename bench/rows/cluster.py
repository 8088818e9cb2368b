"""The cluster rows (SPEC §10): relay with 1, 2 and 3 nodes and cross-node latency (bench/cluster.py)."""

from bench import cluster
from bench.registry import scenario

scenario("cluster")(cluster.cluster)
