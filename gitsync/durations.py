"""Go-style durations ("500ms", "10s", "1m30s"), as git-sync's flags take them."""

import re

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def parse_duration(text: str) -> float:
    """Return the duration in seconds; raise ValueError for anything Go would reject.

    As in Go (and git-sync), a number needs a unit: "10" is refused, since it could mean
    seconds or milliseconds; only "0" stands alone.
    """
    value = text.strip()
    if not value:
        raise ValueError("empty duration")
    sign = -1.0 if value.startswith("-") else 1.0
    value = value.lstrip("+-")
    if re.fullmatch(r"\d+(?:\.\d*)?", value):
        if float(value) == 0:
            return 0.0
        raise ValueError(f"invalid duration {text!r}: a number needs a unit, e.g. {value}s or {value}ms")
    total, pos = 0.0, 0
    for match in _PART.finditer(value):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(value) or pos == 0:
        raise ValueError(f"invalid duration {text!r} (use e.g. 500ms, 10s, 2m)")
    return sign * total


def format_duration(seconds: float) -> str:
    """The shortest Go-style spelling, for --help defaults and logs."""
    if seconds == 0:
        return "0s"
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    if seconds % 3600 == 0:
        return f"{seconds / 3600:g}h"
    if seconds % 60 == 0:
        return f"{seconds / 60:g}m"
    return f"{seconds:g}s"
