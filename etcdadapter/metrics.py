"""Prometheus metrics, served at ``GET /metrics`` on the client port like etcd's (and on
the ``--listen-metrics-urls`` listeners, :mod:`etcdadapter.metrics_port`).

Names follow what etcd exports so existing dashboards and alerts keep working:
go-grpc-prometheus' ``grpc_server_*`` (every call, whichever face carried it: gRPC, the
JSON gateway and the in-process client dispatch alike, through the method registry's
interceptors -- :class:`_CallCollector` is one), ``etcd_debugging_mvcc_*`` revisions and
watchers, ``etcd_mvcc_db_total_size_in_bytes``, ``etcd_server_has_leader`` (0 while the
store cannot be reached) and ``etcd_server_version``; the process (``process_*``, as every
Prometheus client exports them).  Our own additions are prefixed ``etcd_adapter_``.
Each adapter has its own registry (several can run in one process, e.g. embedded or in
tests).
"""

import bisect

from prometheus_client import CollectorRegistry, Gauge, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily)
from prometheus_client.utils import floatToGoString
from prometheus_client.exposition import choose_encoder

from etcdadapter.errors import CODE_NAMES
from etcdadapter.services.rpc import UNARY, Interceptor


# grpc_server_handling_seconds buckets (upper bounds, seconds).
_BUCKETS = (.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10)


class _MethodMetrics(object):
    """One method's call counts, kept as plain numbers: every call updates them, and
    prometheus_client's metric objects take a lock per update and walk the histogram's
    buckets in Python (all updates happen on the reactor thread).  Read at scrape time
    by :class:`_CallCollector`."""

    def __init__(self, method):
        service, _, name = method.path[1:].rpartition("/")
        self.labels = (method.kind, service, name)
        self.started = 0
        self.by_code = {}                       # StatusCode -> calls handled
        self.open = 0                           # streaming calls open now
        self.buckets = [0] * (len(_BUCKETS) + 1)    # per bucket (not cumulative), +Inf
        self.seconds = 0.0

    def handled(self, code):
        self.by_code[code] = self.by_code.get(code, 0) + 1

    # -- unary calls (the registry's hooks) -------------------------------------------
    def start(self, _request, _context):
        self.started += 1

    def end(self, _request, _context, elapsed, code):
        by_code = self.by_code
        by_code[code] = by_code.get(code, 0) + 1
        self.buckets[bisect.bisect_left(_BUCKETS, elapsed)] += 1
        self.seconds += elapsed

    # -- streaming calls --------------------------------------------------------------
    def opened(self, _stream):
        self.started += 1
        self.open += 1
        return self.ended

    def ended(self, code):
        self.open -= 1
        self.handled(code)


class _CallCollector(Interceptor):
    """The grpc_server_* families (go-grpc-prometheus' names) and our open streams; as
    the registry's interceptor it counts and times every call."""

    def __init__(self):
        self.methods = []

    def unary(self, method):
        m = self._metrics(method)
        return m.start, m.end

    def stream(self, method):
        return self._metrics(method).opened

    def _metrics(self, method):
        m = _MethodMetrics(method)
        self.methods.append(m)
        return m

    def collect(self):
        labels = ("grpc_type", "grpc_service", "grpc_method")
        started = CounterMetricFamily("grpc_server_started_total",
                                      "RPCs started on the server (gRPC and JSON gateway).",
                                      labels=labels)
        handled = CounterMetricFamily("grpc_server_handled_total",
                                      "RPCs completed on the server, by status code.",
                                      labels=labels + ("grpc_code",))
        seconds = HistogramMetricFamily("grpc_server_handling_seconds",
                                        "Time to answer a unary RPC.", labels=labels)
        open_streams = GaugeMetricFamily("etcd_adapter_open_streams",
                                         "Streaming calls (Watch, LeaseKeepAlive) now open.",
                                         labels=("grpc_service", "grpc_method"))
        for m in self.methods:
            if not m.started:
                continue                        # as a labelled child made on first use
            started.add_metric(m.labels, m.started)
            for code, n in sorted(m.by_code.items()):
                handled.add_metric(m.labels + (CODE_NAMES.get(code, str(code)),), n)
            if m.labels[0] == UNARY:
                cumulative, buckets = 0, []
                for bound, n in zip(_BUCKETS + (float("inf"),), m.buckets):
                    cumulative += n
                    buckets.append((floatToGoString(bound), cumulative))
                seconds.add_metric(m.labels, buckets, m.seconds)
            else:
                open_streams.add_metric(m.labels[1:], m.open)
        return (started, handled, seconds, open_streams)

    def describe(self):
        return []


class AdapterMetrics(object):
    def __init__(self, store, watch_service=None):
        self.store = store
        self.watch_service = watch_service
        r = self.registry = CollectorRegistry(auto_describe=True)
        #: The method registry's interceptor counting calls (grpc_server_*).
        self.calls = _CallCollector()
        r.register(self.calls)
        Gauge("etcd_debugging_mvcc_current_revision", "The store's current revision.",
              registry=r).set_function(lambda: store.revision)
        Gauge("etcd_debugging_mvcc_compact_revision", "The revision compacted to.",
              registry=r).set_function(lambda: max(store.compact_revision, 0))
        Gauge("etcd_debugging_mvcc_watch_stream_total", "Open watch streams.",
              registry=r).set_function(self._watch_streams)
        Gauge("etcd_debugging_mvcc_watcher_total", "Watchers on open watch streams.",
              registry=r).set_function(self._watchers)
        # etcd's NoLeader alert: 0 while the store cannot be reached (requests then fail
        # with "etcdserver: no leader"); a store without the notion is always there.
        Gauge("etcd_server_has_leader", "1 while the store answers (no raft here: the "
              "store's availability is what a leader means to clients).",
              registry=r).set_function(lambda: 1 if getattr(store, "available", True)
                                       else 0)
        _version_gauges(r)
        ProcessCollector(registry=r)
        self.db_size = Gauge("etcd_mvcc_db_total_size_in_bytes",
                             "Store size as Maintenance.Status reports it.", registry=r)
        self.db_size_in_use = Gauge("etcd_mvcc_db_total_size_in_use_in_bytes",
                                    "Store size in use as Maintenance.Status reports it.",
                                    registry=r)

        if hasattr(store, "stats"):
            r.register(_StoreCollector(store))

    def watch_connections(self, factory):
        """Export the client port's connection counts (an EtcdFactory's)."""
        self.registry.register(_ConnectionCollector(factory))

    def watch_tls(self, tls):
        """Export the refused TLS handshakes of a ServerTLS."""
        self.registry.register(_TLSCollector(tls))

    def _watch_streams(self):
        return len(self.watch_service.streams) if self.watch_service else 0

    def _watchers(self):
        if not self.watch_service:
            return 0
        return sum(len(ws.watchers) for ws in self.watch_service.streams)

    # -- exposition ---------------------------------------------------------------------
    def install(self, router):
        def serve(exchange):
            def render(status):
                self.db_size.set(status.db_size)
                self.db_size_in_use.set(status.db_size_in_use)

            def respond(_):
                # The format the scraper asks for (Prometheus text or OpenMetrics).
                encoder, content_type = choose_encoder(exchange.headers.get("accept", ""))
                exchange.respond(200, [("Content-Type", content_type)],
                                 encoder(self.registry))
            d = self.store.status().addCallback(render)
            d.addErrback(lambda _f: None)      # metrics still render without the store
            d.addCallback(respond)
        router.add("/metrics", serve, methods=("GET",))


class _StoreCollector(object):
    """The store's own figures (a SQL store's replica and write batches), read at scrape
    time."""

    def __init__(self, store):
        self.store = store

    def collect(self):
        for name, kind, text, value in self.store.stats():
            family = GaugeMetricFamily if kind == "gauge" else CounterMetricFamily
            yield family(name, text, value=value)

    def describe(self):
        return []


class _ConnectionCollector(object):
    """``etcd_adapter_connections*``: read from the factory's counters at scrape time."""

    def __init__(self, factory):
        self.factory = factory

    def collect(self):
        f = self.factory
        stats = f.stats
        yield GaugeMetricFamily("etcd_adapter_connections",
                                "Client connections now open.", value=len(f.connections))
        yield GaugeMetricFamily("etcd_adapter_connections_limit",
                                "--max-connections (0: no limit).",
                                value=f.limits.max_connections)
        yield CounterMetricFamily("etcd_adapter_connections_accepted",
                                  "Client connections accepted.", value=stats.accepted)
        yield CounterMetricFamily("etcd_adapter_connections_refused",
                                  "Connections closed at once: --max-connections reached.",
                                  value=stats.refused)
        timed_out = CounterMetricFamily(
            "etcd_adapter_connections_timed_out",
            "Connections closed by a timeout: header (--header-timeout, also a stalled "
            "HTTP/1.1 body), idle (--idle-timeout).", labels=("phase",))
        for phase, n in sorted(stats.timed_out.items()):
            timed_out.add_metric((phase,), n)
        yield timed_out
        yield CounterMetricFamily(
            "etcd_adapter_output_paused",
            "Times a connection's unsent output went over its budget, so its new "
            "requests waited.", value=stats.paused)


def _version_gauges(registry):
    """etcd's ``etcd_server_version{server_version}`` (the etcd version our API follows)
    and ours, ``etcd_adapter_version{version}``: 1, the information is in the label."""
    from etcdadapter import __version__
    from etcdadapter.services.identity import SERVER_VERSION
    Gauge("etcd_server_version", "Which etcd version the API follows.",
          ("server_version",), registry=registry).labels(SERVER_VERSION).set(1)
    Gauge("etcd_adapter_version", "Which etcd-adapter version is running.", ("version",),
          registry=registry).labels(__version__).set(1)


class _TLSCollector(object):
    def __init__(self, tls):
        self.tls = tls

    def collect(self):
        yield CounterMetricFamily(
            "etcd_adapter_tls_handshakes_refused",
            "TLS handshakes that failed: no or untrusted client certificate, no common "
            "protocol or cipher, not TLS.", value=self.tls.handshakes_refused)

    def describe(self):
        return []
