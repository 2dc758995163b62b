"""Server-wide fault sampling (``--fail-rate``, ``--stall-after``, ``--cut-after``), seedable."""

from __future__ import annotations

import random
from dataclasses import replace

from llm_sim.config import SimConfig
from llm_sim.knobs import Knobs


class FaultSampler:
    """Decides, per chat request, which server-wide faults hit it.

    Every request draws the same number of random numbers whatever its headers say, so with
    ``--seed`` a given sequence of requests always sees the same faults.
    """

    def __init__(self, config: SimConfig) -> None:
        self._config = config
        self._rng = random.Random(config.seed)

    def _hit(self, rate: float) -> bool:
        if rate >= 1.0:
            return True
        if rate <= 0.0:
            return False
        return self._rng.random() < rate

    def sample(self, base: Knobs) -> Knobs:
        """Return ``base`` with the server-wide faults this request drew."""
        config = self._config
        fail = self._hit(config.fail_rate)
        cut = config.cut_after is not None and self._hit(config.cut_rate)
        stall = config.stall_after is not None and self._hit(config.stall_rate)
        if not (fail or cut or stall):
            return base
        return replace(
            base,
            fail_status=config.fail_status if fail else base.fail_status,
            cut_after=config.cut_after if cut else base.cut_after,
            stall_after=config.stall_after if stall else base.stall_after,
        )
