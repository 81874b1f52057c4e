"""Which cluster tests run with which target: one process serves one RQ prefix (SPEC §1), so
a test running sessionq on the cluster (its namespace partitioned: RQ's prefix is that of its
global keys, rqcompat.rq_home) runs with SESSIONQ_TEST_TARGET=cluster, and one using the
default prefix with the default target."""

from __future__ import annotations

from tests.conftest import ON_CLUSTER

collect_ignore = (["test_layout_cluster.py"] if ON_CLUSTER
                  else ["test_cluster_failover.py", "test_cluster_spread.py",
                        "test_cluster_wake.py", "test_sharded_events.py"])  # fmt: skip
