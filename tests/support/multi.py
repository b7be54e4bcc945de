"""Several adapter processes on one database: a database per test, the adapters started
together, a Watch stream collecting events on one of them, and concurrent
compare-and-swap incrementers of one counter key."""

import queue
import threading
import time

import grpc
import pytest

from etcdadapter.pb.etcdserverpb import rpc_pb2 as rpc

from support import servers
from support.stores import create_database


KV = "/etcdserverpb.KV/"
COUNTER = b"/multi/counter"
INCREMENTS = 30          # per instance
OWN_WRITES = 20          # puts of its own keys per instance
WAIT = 20.0


@pytest.fixture(params=["mariadb", "postgresql"])
def db_url(request):
    url, drop = create_database(request.param)
    yield url
    drop()


def start_adapters(url, n, request, extra_args=()):
    """``n`` adapters on ``url`` (or one on each URL of a list), started concurrently;
    stopped at teardown (their logs are attached to a failure's report)."""
    if servers.target_kind() != "adapter":
        pytest.skip("needs the adapter")
    urls = url if isinstance(url, list) else [url] * n
    started = [servers.AdapterServer("multi-%d" % i, store=u, extra_args=extra_args)
               for i, u in enumerate(urls)]
    request.node._etcdadapter_servers = started

    def stop():
        failures = []
        for s in reversed(started):
            try:
                s.stop()
            except AssertionError as e:
                failures.append(str(e))
        for s in started:
            s.cleanup()
        if failures:
            pytest.fail("\n\n".join(failures), pytrace=False)
    request.addfinalizer(stop)
    servers.start_all(started)
    return started


class Watcher(object):
    """One Watch stream on one server, its events collected by a thread:
    ``events`` holds (mod_revision, type, key, value)."""

    def __init__(self, server, **create):
        self.client = servers.GrpcClient(server.endpoint)
        self.requests = queue.Queue()
        self.events = []
        self.responses = []
        self.created = threading.Event()
        self.error = None
        call = self.client.channel.stream_stream(
            "/etcdserverpb.Watch/Watch",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=rpc.WatchResponse.FromString)
        self.requests.put(rpc.WatchRequest(create_request=rpc.WatchCreateRequest(**create)))
        self.call = call(iter(self.requests.get, None))
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        assert self.created.wait(10), "watch not created"

    def _read(self):
        try:
            for r in self.call:
                self.responses.append(r)
                if r.created:
                    self.created.set()
                for e in r.events:
                    self.events.append((e.kv.mod_revision, e.type, e.kv.key, e.kv.value))
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.CANCELLED:
                self.error = e

    def revisions(self):
        return [e[0] for e in self.events]

    def wait_for(self, revision, timeout=WAIT):
        deadline = time.monotonic() + timeout
        while not self.events or self.events[-1][0] < revision:
            assert self.error is None, self.error
            assert time.monotonic() < deadline, (
                "watcher stuck at %s, waiting for %d" % (
                    self.events[-1][0] if self.events else None, revision))
            time.sleep(0.02)

    def close(self):
        self.call.cancel()
        self.requests.put(None)
        self.client.close()


def ok(client, method, request, response_class):
    """The response of a KV call that must succeed."""
    r = client.call(KV + method, request, response_class)
    assert r.ok, r
    return r.response


def incrementer(server, index, acked, errors):
    """INCREMENTS compare-and-swap increments of COUNTER through ``server``, interleaved
    with OWN_WRITES puts of its own keys; every acknowledged write goes to ``acked`` as
    (revision, key, value)."""
    try:
        with servers.GrpcClient(server.endpoint) as c:
            done = own = 0
            while done < INCREMENTS:
                kv = ok(c, "Range", rpc.RangeRequest(key=COUNTER), rpc.RangeResponse).kvs[0]
                value = b"%d" % (int(kv.value) + 1)
                r = ok(c, "Txn", rpc.TxnRequest(
                    compare=[rpc.Compare(key=COUNTER, target=rpc.Compare.MOD,
                                         result=rpc.Compare.EQUAL,
                                         mod_revision=kv.mod_revision)],
                    success=[rpc.RequestOp(request_put=rpc.PutRequest(
                        key=COUNTER, value=value))]), rpc.TxnResponse)
                if r.succeeded:
                    done += 1
                    acked.append((r.header.revision, COUNTER, value))
                    if own < OWN_WRITES and done % 3 == index % 3:
                        key = b"/multi/own/%d/%d" % (index, own)
                        value = b"from %d" % index
                        p = ok(c, "Put", rpc.PutRequest(key=key, value=value),
                               rpc.PutResponse)
                        acked.append((p.header.revision, key, value))
                        own += 1
    except BaseException as e:       # reported by the test
        errors.append(e)


def run_incrementers(adapters):
    """One :func:`incrementer` per adapter, all at once: (acked writes, seconds taken);
    fails the test on any error."""
    acked, errors = [], []
    threads = [threading.Thread(target=incrementer, args=(a, i, acked, errors))
               for i, a in enumerate(adapters)]
    t = time.monotonic()
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    elapsed = time.monotonic() - t
    assert not errors, errors
    return acked, elapsed
