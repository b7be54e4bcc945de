"""Log observers for ``twistd --logger``: one event per line, as JSON or as text.

::

    twistd -n --pidfile= --logger etcdadapter.logs.json etcd-adapter --store ...
    twistd -n --pidfile= --logger etcdadapter.logs.text etcd-adapter --store ...

``json``: one JSON object per line on standard output (journald, Docker and Kubernetes
collect it as is)::

    {"time": "2026-01-02T03:04:05.678Z", "level": "info", "namespace":
     "etcdadapter.server", "msg": "etcd-adapter ready: ...", "event": "ready",
     "store": "mysql://etcd:***@db:3306/etcd", "revision": 1767322245678, ...}

``time`` (UTC, milliseconds), ``level``, ``namespace`` (the emitting module) and ``msg``
(the formatted text) are always there; then the event's own fields (the values named in
the message and any extra ones, e.g. ``event``, a stable name for the events operators
alert on: ``listening``, ``ready``, ``store-unavailable``, ``store-available``,
``slow-request``, ``draining``, ``drained``, ``stopped``).  A field whose name collides
with one of the four is written as ``field_<name>``.  An event carrying an error adds
``error`` (the exception) and ``traceback``.

``text``: ``<time> <level> [<namespace>] <msg>`` with a traceback folded into the same
line (newlines as ``\\n``), for log shippers that split on newlines.

Both drop events below ``ETCD_ADAPTER_LOG_LEVEL`` (debug, info -- the default --, warn,
error, critical).  twistd calls the factory before it redirects standard output into the
log, so the observer keeps the real standard output.
"""

import json as _json
import os
import sys
import time

from twisted.logger import (FileLogObserver, FilteringLogObserver, LogLevel,
                            LogLevelFilterPredicate, formatEvent)

LEVEL_ENV = "ETCD_ADAPTER_LOG_LEVEL"

_STANDARD = ("time", "level", "namespace", "msg")
# Keys of twisted.python.log's legacy events (already rendered in ``msg``).
_LEGACY = frozenset(("message", "isError", "system", "time", "format", "why", "failure",
                     "printed"))


def address_text(address):
    """"host:port" ("[v6]:port") of a Twisted address, or a UNIX socket's path."""
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    if host is not None and port is not None:
        return ("[%s]:%d" if ":" in host else "%s:%d") % (host, port)
    name = getattr(address, "name", None)
    if isinstance(name, bytes):
        name = name.decode("utf-8", "backslashreplace")
    return name or ("" if address is None else str(address))


def background_failure(logger, text, failure, **fields):
    """Log a failed background task (lease expiry pass, change feed poll, auth refresh):
    with its traceback, unless the store is just unreachable -- the store logs that once
    (store-unavailable) instead of every pass doing it twice a second."""
    from etcdadapter.errors import EtcdError, StatusCode
    error = failure.value
    if isinstance(error, EtcdError) and error.code == StatusCode.UNAVAILABLE:
        logger.debug(text + ": {error}", error=error.message, **fields)
    else:
        logger.failure(text, failure, **fields)


def utc_time(seconds):
    """ISO 8601 in UTC with milliseconds: 2026-01-02T03:04:05.678Z."""
    if seconds is None:
        seconds = time.time()
    whole = int(seconds)
    return "%s.%03dZ" % (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)),
                         int((seconds - whole) * 1000))


def _level_name(event):
    level = event.get("log_level")
    return level.name if level is not None else "info"


def _failure(event):
    return event.get("log_failure") or event.get("failure")


def event_fields(event):
    """The event as a flat dict, ready for JSON (values JSON-able)."""
    out = {"time": utc_time(event.get("log_time")), "level": _level_name(event),
           "namespace": event.get("log_namespace") or event.get("system") or "-",
           "msg": formatEvent(event)}
    for key, value in event.items():
        if key.startswith("log_") or key in _LEGACY:
            continue
        out["field_" + key if key in _STANDARD else key] = _jsonable(value)
    failure = _failure(event)
    if failure is not None:
        out["error"] = "%s: %s" % (failure.type.__name__, failure.value)
        out["traceback"] = failure.getTraceback()
    return out


def _jsonable(value):
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


def json_line(event):
    return _json.dumps(event_fields(event), ensure_ascii=False,
                       separators=(",", ":")) + "\n"


def text_line(event):
    line = "%s %s [%s] %s" % (utc_time(event.get("log_time")), _level_name(event),
                              event.get("log_namespace") or "-", formatEvent(event))
    failure = _failure(event)
    if failure is not None:
        line += " | " + failure.getTraceback()
    return line.rstrip("\n").replace("\r", "\\r").replace("\n", "\\n") + "\n"


#: The level ``--log-level`` chose (set before twistd calls the observer factory);
#: None: ETCD_ADAPTER_LOG_LEVEL, else info.
DEFAULT_LEVEL = None


def _level_from_environment():
    name = DEFAULT_LEVEL or os.environ.get(LEVEL_ENV, "info").strip().lower() or "info"
    try:
        return LogLevel.levelWithName({"warning": "warn"}.get(name, name))
    except Exception:
        sys.stderr.write("%s: unknown level %r, using info\n" % (LEVEL_ENV, name))
        return LogLevel.info


def _observer(format_line, out=None):
    out = out if out is not None else sys.stdout
    return FilteringLogObserver(
        FileLogObserver(out, format_line),
        [LogLevelFilterPredicate(defaultLogLevel=_level_from_environment())])


def json(out=None):
    """``twistd --logger etcdadapter.logs.json``: one JSON object per event and line."""
    return _observer(json_line, out)


def text(out=None):
    """``twistd --logger etcdadapter.logs.text``: one line of text per event."""
    return _observer(text_line, out)
