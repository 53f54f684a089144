"""The deterministic simulators, seeded so that a failing run replays exactly
(``python -m ferrymq._sim [--cluster] --seed N``):

- ``run_seed``: the real replication protocol (``Replica``, the election rule) over a
  simulated network, disk, clock and coordinator (``_replication``, ``_world``);
- ``run_cluster_seed``: real cluster nodes (``ferrymq._cluster._node.Node``, with their
  controller, replicated stores and services) on a virtual-time event loop (``_loop``),
  a simulated disk (``_disk``) and network, and the contract-tested in-process
  coordinator, judged by ``ferrymq._verify``'s checker (``_cluster``).
"""

from ferrymq._sim._cluster import ClusterScenario, run_cluster_seed
from ferrymq._sim._replication import Scenario, SimulationFailure, run_seed

__all__ = ["ClusterScenario", "Scenario", "SimulationFailure", "run_cluster_seed", "run_seed"]
