"""A real two-node Ray cluster on this machine (``ray.cluster_utils.Cluster``), for the
Ray engine's tests: a head node and a worker node, 2 logical CPUs each, no dashboard;
this process's Ray connects to it."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def two_node_cluster(cpus: int = 2) -> Iterator[Any]:
    """The cluster (``.head_node``, ``.worker_nodes``), with ``ray`` connected to it."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": cpus, "include_dashboard": False}
    )
    try:
        cluster.add_node(num_cpus=cpus)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level=logging.ERROR, log_to_driver=False)
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()  # type: ignore[no-untyped-call]
