"""Per-connection limits of the client port, and the counters /metrics shows for them.

``max_connections``: etcd has no such limit (the open-file limit is its bound).  Ours
defaults to the soft open-file limit minus :data:`FD_RESERVE`: past the fd limit every
accept fails, and so does everything else that needs a descriptor -- the SQL store's
reconnects, SQLite's files, log files -- so the adapter would stop serving the clients it
already has.  Refusing the extra connections at once keeps those working.  0 = no limit.
"""

import resource

from etcdadapter.transport.output_budget import DEFAULT_BUDGET

FD_RESERVE = 256               # descriptors kept for the store, logs and listeners


def default_max_connections():
    """The soft RLIMIT_NOFILE minus the reserve (0 = unlimited if there is no limit)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 0
    return max(soft - FD_RESERVE, 16)


class ConnectionLimits(object):
    """Tunables (set from the daemon's options)."""

    def __init__(self, header_timeout=10.0, idle_timeout=300.0, max_connections=0,
                 output_budget=DEFAULT_BUDGET):
        self.header_timeout = header_timeout
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.output_budget = output_budget


class ConnectionStats(object):
    """Counts for /metrics (``etcd_adapter_connections*``)."""

    def __init__(self):
        self.accepted = 0
        self.refused = 0            # over max_connections
        self.timed_out = {"header": 0, "body": 0, "idle": 0}
        self.paused = 0             # times a connection's output went over its budget


class LogThrottle(object):
    """At most one log line per ``interval`` seconds for one kind of event: a connection
    storm must not become a log storm (the counters in /metrics are exact)."""

    def __init__(self, clock, interval=10.0):
        self.clock = clock
        self.interval = interval
        self._last = None
        self._unlogged = 0

    def due(self):
        """Count one event; return how many to report now (0: stay quiet)."""
        self._unlogged += 1
        now = self.clock.seconds()
        if self._last is not None and now - self._last < self.interval:
            return 0
        self._last = now
        n, self._unlogged = self._unlogged, 0
        return n
