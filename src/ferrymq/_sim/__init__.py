"""The deterministic simulator: the real replication protocol over a simulated network,
disk, clock and coordinator, seeded so that a failing run replays exactly
(``python -m ferrymq._sim --seed N``)."""

from ferrymq._sim._replication import Scenario, SimulationFailure, run_seed

__all__ = ["Scenario", "SimulationFailure", "run_seed"]
