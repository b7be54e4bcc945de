"""Helpers for the embedding API's tests: an adapter embedded in the test process (on the
session's background reactor, tests/stores.py) on the test's store kind, a gRPC watch
stream read by a thread, and one tuple form of a watch event for both.

Import the fixture into a test module with ``from embedding import embedded  # noqa``.
"""

import queue
import threading
import time

import grpc
import pytest

from etcdadapter.embed import EmbeddedAdapter
from etcdadapter.pb.etcdserverpb import rpc_pb2 as rpc

import stores
from stores import call


@pytest.fixture
def embedded(make_store):
    """Factory: ``embedded(**options) -> EmbeddedAdapter``, started on a fresh store of
    the test's kind (revisions from 1), listening on a free loopback port; stopped at
    teardown.  Options are EmbeddedAdapter's (AdapterConfig's)."""
    started = []

    def factory(**options):
        options.setdefault("drain_timeout", 1.0)
        store = make_store(start=False)
        adapter = call(lambda: EmbeddedAdapter(
            store=store, listen=["tcp:0:interface=127.0.0.1"], reactor=stores.reactor(),
            **options))
        call(adapter.start)
        started.append(adapter)
        return adapter

    yield factory
    for adapter in reversed(started):
        call(adapter.stop)


def endpoint(adapter):
    host, port = adapter.addresses[0]
    return "%s:%d" % (host, port)


def kv_tuple(kv):
    """(key, value, create_revision, mod_revision, version, lease) of a KeyValue record
    or an mvccpb.KeyValue."""
    return (kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease)


def event_tuple(e):
    """One form for an embed Event and an mvccpb.Event: (type, kv tuple, prev tuple)."""
    if isinstance(e.type, str):
        prev = e.prev_kv
        return (e.type, kv_tuple(e.kv), kv_tuple(prev) if prev is not None else None)
    return ("DELETE" if e.type == 1 else "PUT", kv_tuple(e.kv),
            kv_tuple(e.prev_kv) if e.HasField("prev_kv") else None)


class GrpcWatch(object):
    """One Watch stream over grpcio, read by a thread into a queue."""

    def __init__(self, channel):
        self.requests = queue.Queue()
        self.responses = queue.Queue()
        method = channel.stream_stream(
            "/etcdserverpb.Watch/Watch", request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=rpc.WatchResponse.FromString)
        self.call = method(iter(self.requests.get, None))
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        try:
            for r in self.call:
                self.responses.put(r)
        except grpc.RpcError:
            pass

    def create(self, **kw):
        """Create a watcher; returns the created response."""
        self.requests.put(rpc.WatchRequest(create_request=rpc.WatchCreateRequest(**kw)))
        r = self.responses.get(timeout=10)
        assert r.created, r
        return r

    def events(self, n, timeout=20):
        """The next ``n`` events (mvccpb.Event), failing if they do not come."""
        out = []
        deadline = time.monotonic() + timeout
        while len(out) < n:
            r = self.responses.get(timeout=max(0.01, deadline - time.monotonic()))
            out.extend(r.events)
        assert len(out) == n, out
        return out

    def quiet(self, seconds):
        """True if nothing arrives within ``seconds``."""
        try:
            r = self.responses.get(timeout=seconds)
        except queue.Empty:
            return True
        self.responses.queue.appendleft(r)
        return False

    def close(self):
        self.call.cancel()


def wait_for(predicate, timeout=20.0, interval=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()
