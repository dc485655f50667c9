"""How kube-controller-manager's flag values are written (Go durations, Go booleans), and the error a bad one raises.

The flags keep kube-controller-manager's names and its value grammar, so that its command line can be pasted:
`15s` and `1m30s` as Go's time.ParseDuration reads them, `t` and `false` as Go's flag package does.
"""

from __future__ import annotations

import fractions
import math
import re


class ConfigError(ValueError):
    """A flag value that cannot work; the message names the flag and the fix."""

    def __init__(self, flag: str, problem: str, fix: str) -> None:
        super().__init__(f"{flag}: {problem}; {fix}")
        self.flag = flag


_DURATION_UNITS_NS = {
    "ns": 1,
    "us": 10**3,
    "\u00b5s": 10**3,  # micro sign, as Go accepts
    "\u03bcs": 10**3,  # Greek mu, as Go accepts
    "ms": 10**6,
    "s": 10**9,
    "m": 60 * 10**9,
    "h": 3600 * 10**9,
}
_DURATION_PART = re.compile(r"(\d*)(?:\.(\d*))?([^\d.]*)")
_MAX_DURATION_NS = 2**63 - 1  # Go's time.Duration is an int64 of nanoseconds
_DURATION_EXAMPLES = "write it like 15s, 1m30s, .5s or 1.5h (units ns, us, ms, s, m, h)"


def parse_duration(flag: str, text: str) -> float:
    """Seconds from a Go duration, by the rules of Go's time.ParseDuration.

    "15s", "1m30s", ".5s", "1.5h" and "0" are accepted; a bare number other
    than 0 is refused, as Go refuses it (is "15" seconds or minutes?). A
    negative duration is valid Go but means nothing for these flags: refused.
    """
    body = text[1:] if text[:1] in ("+", "-") else text
    negative = text.startswith("-")
    if body == "0":
        return 0.0
    if not body:
        raise ConfigError(flag, f"{text!r} is not a duration", _DURATION_EXAMPLES)
    total = fractions.Fraction(0)
    position = 0
    while position < len(body):
        match = _DURATION_PART.match(body, position)
        assert match is not None  # every group may be empty
        whole, fraction, unit = match.groups()
        if not whole and not fraction:
            raise ConfigError(flag, f"{text!r} is not a duration", _DURATION_EXAMPLES)
        if not unit:
            fix = f"Go durations need one: {body}s, {body}m or {body}h" if match.end() == len(body) == len(match[0]) else ""
            raise ConfigError(flag, f"{text!r} has a number without a unit", fix or _DURATION_EXAMPLES)
        if unit not in _DURATION_UNITS_NS:
            raise ConfigError(flag, f"{text!r} has an unknown unit {unit!r}", _DURATION_EXAMPLES)
        number = fractions.Fraction(f"{whole or 0}.{fraction or 0}")
        total += number * _DURATION_UNITS_NS[unit]
        position = match.end()
    nanoseconds = math.floor(total)  # Go drops what is below a nanosecond
    if nanoseconds > _MAX_DURATION_NS:
        raise ConfigError(flag, f"{text!r} is longer than Go's longest duration (about 292 years)", "use a shorter one")
    if negative and nanoseconds:
        raise ConfigError(flag, f"{text!r} is negative", "use a positive duration, e.g. 15s")
    return nanoseconds / 1e9


def go_duration(seconds: float) -> str:
    """A whole number of hours, minutes or seconds as Go writes it ("3m", "15s"): a default's text for its flag."""
    for unit, size in (("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{round(seconds * 1000)}ms"


def parse_bool(flag: str, text: str | bool) -> bool:
    """Accept the boolean spellings Go's flag package accepts."""
    if isinstance(text, bool):
        return text
    lowered = text.strip().lower()
    if lowered in ("1", "t", "true"):
        return True
    if lowered in ("0", "f", "false"):
        return False
    raise ConfigError(flag, f"{text!r} is not a boolean", "use true or false")
