"""The one doubling backoff: a delay per failure in a row, doubled each time, up to a cap.

Pure and stateless, so that every retry loop (a patch, a start-up LIST, a
background loop's restart) counts its own failures and asks the same rule.
"""

from __future__ import annotations

import dataclasses
import math

_MAX_DOUBLINGS = 1000  # 2.0 ** 1024 overflows; a cap is reached long before


@dataclasses.dataclass(frozen=True)
class Backoff:
    """`first` seconds after the first failure, doubled per further failure in a row, never over `cap`."""

    first: float
    cap: float = math.inf

    def after(self, failures: int) -> float:
        """The delay after `failures` (1 or more) failures in a row."""
        return min(self.first * 2.0 ** min(max(failures - 1, 0), _MAX_DOUBLINGS), self.cap)
