"""Health state machines of one target, driven by the caller's clock (no I/O).

Passive health follows nginx's ``max_fails``/``fail_timeout``:

- ``max_fails`` failures, each within ``fail_timeout_s`` of the first of the series,
  take the target out of rotation for ``fail_timeout_s``;
- when that time is over, one request is let through as a trial (the target is out
  again for ``fail_timeout_s`` while it runs): success brings the target back, failure
  keeps it out for another ``fail_timeout_s``;
- any success resets the count. ``max_fails=0`` disables passive health.

Active health counts consecutive probe results against two thresholds.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PassiveHealth", "ProbeHealth"]


@dataclass(slots=True)
class PassiveHealth:
    """Failure accounting of one target (nginx's ``fails``/``checked`` per peer)."""

    max_fails: int
    fail_timeout_s: float
    fails: int = 0
    """Failures in the current series (not reset while the target is out)."""
    series_started: float = 0.0
    out_until: float = 0.0
    """Until when the target is skipped (only meaningful while ``tripped``)."""

    @property
    def tripped(self) -> bool:
        """Whether the target has reached ``max_fails`` and waits for a successful trial."""
        return 0 < self.max_fails <= self.fails

    def available(self, now: float) -> bool:
        """Whether a request may go to the target at ``now``."""
        return not self.tripped or now >= self.out_until

    def picked(self, now: float) -> bool:
        """Note that a request goes to the target; True if it is a trial after time-out.

        A trial keeps the target out for other requests until it succeeds or
        ``fail_timeout_s`` passes again, so one request at a time probes a dead target.
        """
        if self.tripped:
            self.out_until = now + self.fail_timeout_s
            return True
        return False

    def failed(self, now: float) -> bool:
        """Record a failure at ``now``; True if this one took the target out."""
        if self.max_fails == 0:
            return False
        if self.tripped:  # a failed trial (or a straggler): out for another period
            self.fails += 1
            self.out_until = now + self.fail_timeout_s
            return False
        if self.fails == 0 or now - self.series_started > self.fail_timeout_s:
            self.fails = 0
            self.series_started = now
        self.fails += 1
        if self.fails >= self.max_fails:
            self.out_until = now + self.fail_timeout_s
            return True
        return False

    def succeeded(self) -> bool:
        """Record a success; True if it brought a tripped target back."""
        was_tripped = self.tripped
        self.fails = 0
        self.out_until = 0.0
        return was_tripped


@dataclass(slots=True)
class ProbeHealth:
    """Consecutive active-probe results of one target against the thresholds."""

    healthy_threshold: int
    unhealthy_threshold: int
    healthy: bool = True
    successes: int = 0
    failures: int = 0

    def record(self, ok: bool) -> bool:
        """Count one probe result; True if ``healthy`` flipped."""
        if ok:
            self.successes += 1
            self.failures = 0
            if not self.healthy and self.successes >= self.healthy_threshold:
                self.healthy = True
                return True
        else:
            self.failures += 1
            self.successes = 0
            if self.healthy and self.failures >= self.unhealthy_threshold:
                self.healthy = False
                return True
        return False
