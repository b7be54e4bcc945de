"""grpc_server_* call metrics, as the registry's metrics interceptor counts them (no
sockets)."""

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.exposition import generate_latest
from twisted.internet import defer

from etcdadapter.errors import EtcdError, StatusCode
from etcdadapter.metrics import AdapterMetrics
from etcdadapter.services.open_streams import OpenStreams
from etcdadapter.services.rpc import (BIDI_STREAM, UNARY, Method, MethodRegistry,
                                      ServerStream, call_unary, open_stream)
from etcdadapter.store.memory import MemoryStore


def samples(metrics):
    out = {}
    for family in text_string_to_metric_families(generate_latest(metrics.registry).decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


RANGE = (("grpc_method", "Range"), ("grpc_service", "etcdserverpb.KV"), ("grpc_type", "unary"))


def test_unary_calls_counted_by_outcome_and_timed():
    now = [100.0]
    metrics = AdapterMetrics(MemoryStore())
    registry = MethodRegistry(clock=lambda: now[0])
    registry.intercept(metrics.calls)
    later = defer.Deferred()

    def handler(request, context):
        if request == "raise":
            raise EtcdError(StatusCode.INVALID_ARGUMENT, "bad")
        if request == "fail":
            return defer.fail(EtcdError(StatusCode.NOT_FOUND, "gone"))
        if request == "later":
            return later
        if request == "fired":
            return defer.succeed("plain")
        return "plain"          # a handler may answer without a Deferred

    method = Method("/etcdserverpb.KV/Range", None, None, UNARY, handler, ())
    registry.add(method)

    def call(request):
        return call_unary(method, request, None)
    assert call("ok") == "plain"
    assert call("fired") == "plain"     # an already fired Deferred: its response
    try:
        call("raise")
        raise AssertionError("the handler's exception must propagate")
    except EtcdError as e:
        assert e.code == StatusCode.INVALID_ARGUMENT
    failed = []
    call("fail").addErrback(failed.append)
    assert failed[0].value.code == StatusCode.NOT_FOUND
    d = call("later")
    now[0] += 0.003                 # answered 3 ms later: le=0.005 bucket
    later.callback("done")
    assert d.result == "done"

    got = samples(metrics)
    assert got[("grpc_server_started_total", RANGE)] == 5
    for code, n in (("OK", 3), ("InvalidArgument", 1), ("NotFound", 1)):
        assert got[("grpc_server_handled_total",
                    tuple(sorted(RANGE + (("grpc_code", code),))))] == n
    bucket = lambda le: got[("grpc_server_handling_seconds_bucket",
                             tuple(sorted(RANGE + (("le", le),))))]
    assert bucket("0.0005") == 4 and bucket("0.0025") == 4
    assert bucket("0.005") == 5 and bucket("+Inf") == 5
    assert got[("grpc_server_handling_seconds_count", RANGE)] == 5
    assert abs(got[("grpc_server_handling_seconds_sum", RANGE)] - 0.003) < 1e-9


def test_streaming_calls_counted_while_open():
    metrics = AdapterMetrics(MemoryStore())
    registry = MethodRegistry()
    registry.intercept(metrics.calls)
    streams = []

    class Stream(ServerStream):
        def _finish(self, error):
            pass

    def handler(stream):
        streams.append(stream)
        stream.on_cancel = lambda: None     # set by the handler, as bind() does

    method = Method("/etcdserverpb.Watch/Watch", None, None, BIDI_STREAM, handler, ())
    registry.add(method)
    for _ in range(3):
        open_stream(method, Stream(None))
    labels = (("grpc_method", "Watch"), ("grpc_service", "etcdserverpb.Watch"))
    assert samples(metrics)[("etcd_adapter_open_streams", labels)] == 3
    streams[0].finish()
    streams[1].on_cancel()
    streams[1].finish()             # counted once
    got = samples(metrics)
    assert got[("etcd_adapter_open_streams", labels)] == 1
    full = tuple(sorted(labels + (("grpc_type", "bidi_stream"),)))
    assert got[("grpc_server_started_total", full)] == 3
    assert got[("grpc_server_handled_total",
                tuple(sorted(full + (("grpc_code", "OK"),))))] == 1
    assert got[("grpc_server_handled_total",
                tuple(sorted(full + (("grpc_code", "Canceled"),))))] == 1


def test_interceptors_apply_to_methods_registered_before_and_after():
    metrics = AdapterMetrics(MemoryStore())
    registry = MethodRegistry()
    first = Method("/etcdserverpb.KV/Range", None, None, UNARY, lambda r, c: "a", ())
    registry.add(first)
    registry.intercept(metrics.calls)
    assert call_unary(first, None, None) == "a"
    registry.intercept(OpenStreams())           # a second one: the first is not re-asked
    second = Method("/etcdserverpb.KV/Put", None, None, UNARY, lambda r, c: "b", ())
    registry.add(second)
    assert (call_unary(first, None, None), call_unary(second, None, None)) == ("a", "b")
    got = samples(metrics)
    for name, n in (("Range", 2), ("Put", 1)):
        labels = (("grpc_method", name), ("grpc_service", "etcdserverpb.KV"),
                  ("grpc_type", "unary"))
        assert got[("grpc_server_started_total", labels)] == n
