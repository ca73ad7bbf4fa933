"""The one backoff helper: exponential, capped, with full jitter."""

from __future__ import annotations

import random


class Backoff:
    """Delays for consecutive failures: initial * factor**n, capped, jittered.

    Full jitter (a random share between `1 - jitter` and 1 of the delay) keeps many
    collectors that failed together from retrying together.
    """

    def __init__(
        self,
        initial: float = 1.0,
        cap: float = 300.0,
        factor: float = 2.0,
        jitter: float = 0.5,
        rng: random.Random | None = None,
    ) -> None:
        if initial <= 0 or cap < initial or factor < 1 or not 0 <= jitter <= 1:
            raise ValueError("backoff needs 0 < initial <= cap, factor >= 1, 0 <= jitter <= 1")
        self.initial = initial
        self.cap = cap
        self.factor = factor
        self.jitter = jitter
        self.failures = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        """Record one more failure and return how long to wait before the next try."""
        raw = min(self.cap, self.initial * self.factor**self.failures)
        self.failures += 1
        return raw * (1 - self.jitter * self._rng.random())

    def reset(self) -> None:
        """Record a success: the next failure starts from `initial` again."""
        self.failures = 0
