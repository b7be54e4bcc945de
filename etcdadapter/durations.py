"""Durations as etcd's flags and our URL options take them: plain seconds ("30", "0.05")
or Go-style ("10m", "1m30s", "500ms")."""

import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")


def seconds(value):
    """Seconds (float) of ``value``; ValueError if it is not a duration.  The sign is
    the caller's to check."""
    text = str(value).strip().lower()
    try:
        return float(text)
    except ValueError:
        pass
    parts = _PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError("not a duration: %r (e.g. 10m, 30s, 500ms)" % text)
    return sum(float(n) * _UNITS[u] for n, u in parts)
