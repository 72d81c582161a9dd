"""Abnormal-parent detection: slow pieces, repeated piece failures and digest mismatches
(``docs/reference/scheduler.md#abnormal-parents``).

Dragonfly judges a candidate only by its own download costs at filter time (``Peer.is_bad`` keeps that rule).
Here children's reports also count against the parent that served them, and a parent found abnormal is marked
bad for ``badParent.coolDown``, so it is not handed out even between reports:

- slow: the cost of a piece it served is abnormal against the task's swarm window (Dragonfly's rule: above
  20x the mean while the window fills, above mean + 3 sigma once full), judged after ``minSwarmSamples``;
- failures: ``failureThreshold`` piece failures reported against it within the cool-down, or one failure a
  child reports as not temporary (Dragonfly only logs those);
- digest: a child reports a digest for a piece that differs from the digest the origin's bytes had.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from dragonfly.scheduler.resource.stats import RollingWindow

if TYPE_CHECKING:
    from dragonfly.scheduler.config import BadParentConfig
    from dragonfly.scheduler.metrics import Metrics
    from dragonfly.scheduler.resource.peer import Peer

log = logging.getLogger(__name__)

SLOW = "slow"
FAILURES = "piece_failures"
DIGEST = "digest_mismatch"


class AbnormalDetector:
    """Turn children's piece reports into bad-parent marks."""

    def __init__(self, config: BadParentConfig, metrics: Metrics) -> None:
        self._config = config
        self._metrics = metrics

    def piece_served(self, parent: Peer, cost: float, now: float) -> None:
        """Account a piece ``parent`` served in ``cost`` seconds."""
        served = parent.served_window
        if served is None:
            served = parent.served_window = RollingWindow(self._config.window_size)
        served.add(cost)
        swarm = parent.task.cost_window
        if len(swarm) >= self._config.min_swarm_samples and swarm.is_outlier(cost):
            self.mark(parent, SLOW, f"served a piece in {cost:.3f}s, swarm mean {swarm.mean():.3f}s", now)
        # A parent marked bad would drag the yardstick towards itself.
        if now >= parent.bad_until:
            swarm.add(cost)

    def piece_failed(self, parent: Peer, *, temporary: bool, now: float) -> None:
        """Account a piece failure a child reported against ``parent``."""
        config = self._config
        horizon = now - config.cool_down
        times = [t for t in parent.failure_times if t > horizon]
        times.append(now)
        parent.failure_times = times
        if not temporary:
            self.mark(parent, FAILURES, "a child reported a non-temporary piece failure", now)
        elif len(times) >= config.failure_threshold:
            self.mark(parent, FAILURES, f"{len(times)} piece failures within {config.cool_down:g}s", now)

    def digest_mismatch(self, parent: Peer, number: int, expected: str, actual: str, now: float) -> None:
        """Account a peer that reported a piece digest other than the trusted (origin's) one."""
        self.mark(parent, DIGEST, f"piece {number} digest {actual}, origin's {expected}", now)

    def mark(self, parent: Peer, reason: str, detail: str, now: float) -> None:
        """Mark ``parent`` bad for the cool-down, logging and counting a new mark."""
        if parent.mark_bad(f"{reason}: {detail}", now, now + self._config.cool_down):
            self._metrics.bad_parent_marks.labels(reason).inc()
            log.warning(
                "parent marked bad",
                extra={"task_id": parent.task.id, "peer_id": parent.id, "reason": reason, "detail": detail},
            )
