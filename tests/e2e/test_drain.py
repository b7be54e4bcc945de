"""Graceful drain on SIGTERM, with two adapters A and B on one database (MariaDB,
PostgreSQL), as a load balancer would have them.

500 watches are open on A -- 480 gRPC Watch streams (grpc.aio, 4 channels) and 20
HTTP/JSON ``/v3/watch`` streams -- and a writer keeps writing through B.  A Put through A
is kept in flight (the test holds the database's revision-counter row lock) when A gets
SIGTERM.  Asserted:

* every watch stream on A ends cleanly within a few seconds, long before A's 30 s drain
  timeout and while the Put is still in flight: gRPC with status Unavailable
  "etcdserver: server stopped", HTTP with etcd's error line (grpc_code 14, http_code
  503) and the terminating chunk;
* each client then watches on B from (last revision seen + 1) and in the end every
  watcher has had every write exactly once, in revision order (the whole list compared);
* the Put in flight is answered (OK, with its revision, also seen by every watcher), A
  exits with status 0 once it is, and logs the drain (500 streams ended, none cut).
"""

import asyncio
import base64
import json
import socket
import threading
import time

import grpc
import pytest

from support import servers
from etcdadapter.pb.etcdserverpb import rpc_pb2 as rpc
from support.gateway_client import GatewayClient
from support.servers import wait_until
from support.logged import JsonLoggedAdapter
from support.stores import create_database

pytestmark = pytest.mark.adapter

PREFIX = b"/drain/"
PREFIX_END = b"/drain0"
GRPC_WATCHES = 480
CHANNELS = 4
HTTP_WATCHES = 20
DRAIN_TIMEOUT = 30
CLEAN_END = 3.0          # seconds after SIGTERM by which every stream must have ended
HOLD = 1.5               # seconds the Put on A stays in flight after SIGTERM
WATCH = "/etcdserverpb.Watch/Watch"
STOPPED = ("UNAVAILABLE", "etcdserver: server stopped")
HTTP_STOPPED = {"error": {"grpc_code": 14, "http_code": 503,
                          "message": "etcdserver: server stopped",
                          "http_status": "Service Unavailable"}}


class Record(object):
    """What one watch client saw: events (revision, key, value) and how each of its
    streams ended: (monotonic time, server label, how)."""

    def __init__(self, name):
        self.name = name
        self.events = []
        self.ends = []
        self.created = []          # server labels, one per created stream
        self.error = None

    def resume_from(self, start):
        return self.events[-1][0] + 1 if self.events else start


# -- gRPC watch clients (asyncio, one thread) ----------------------------------------------

class GrpcWatchers(threading.Thread):
    def __init__(self, a, b, count, start):
        threading.Thread.__init__(self, daemon=True, name="grpc-watchers")
        self.servers = {"A": a.endpoint, "B": b.endpoint}
        self.start_revision = start
        self.records = [Record("grpc-%d" % i) for i in range(count)]
        self.loop = asyncio.new_event_loop()
        self._stopping = None
        self.error = None

    def run(self):
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._main())
        except BaseException as e:    # reported by the test
            self.error = e

    def stop(self):
        self.loop.call_soon_threadsafe(self._stopping.set)
        self.join(15)

    async def _main(self):
        self._stopping = asyncio.Event()
        self.channels = {label: [grpc.aio.insecure_channel(ep) for _ in range(CHANNELS)]
                         for label, ep in self.servers.items()}
        tasks = [asyncio.ensure_future(self._watch(i, r))
                 for i, r in enumerate(self.records)]
        await self._stopping.wait()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for chans in self.channels.values():
            for ch in chans:
                await ch.close()

    async def _watch(self, i, record):
        start = self.start_revision
        for label in ("A", "B"):
            channel = self.channels[label][i % CHANNELS]
            call = channel.stream_stream(
                WATCH, request_serializer=rpc.WatchRequest.SerializeToString,
                response_deserializer=rpc.WatchResponse.FromString)()
            try:
                await call.write(rpc.WatchRequest(create_request=rpc.WatchCreateRequest(
                    key=PREFIX, range_end=PREFIX_END, start_revision=start)))
                while True:
                    r = await call.read()
                    if r is grpc.aio.EOF:
                        record.ends.append((time.monotonic(), label, (
                            (await call.code()).name, await call.details())))
                        break
                    if r.created:
                        record.created.append(label)
                    if r.canceled:
                        record.error = "canceled on %s: %s" % (label, r.cancel_reason)
                    for e in r.events:
                        record.events.append((e.kv.mod_revision, e.kv.key, e.kv.value))
            except grpc.aio.AioRpcError as e:
                record.ends.append((time.monotonic(), label, (e.code().name, e.details())))
            start = record.resume_from(self.start_revision)


# -- HTTP/JSON watch clients (a thread each, like APISIX's workers) --------------------------

def _b64(data):
    return base64.b64encode(data).decode()


class HttpWatcher(threading.Thread):
    def __init__(self, a, b, index, start):
        threading.Thread.__init__(self, daemon=True, name="http-watch-%d" % index)
        self.servers = (("A", a.endpoint), ("B", b.endpoint))
        self.start_revision = start
        self.record = Record("http-%d" % index)
        self.stopping = threading.Event()

    def run(self):
        record = self.record
        start = self.start_revision
        try:
            for label, endpoint in self.servers:
                body = {"create_request": {"key": _b64(PREFIX), "range_end": _b64(PREFIX_END),
                                           "start_revision": str(start)}}
                stream = GatewayClient(endpoint, timeout=30).stream("/v3/watch", body)
                try:
                    while not self.stopping.is_set():
                        try:
                            msg = stream.next(timeout=0.5)
                        except socket.timeout:
                            continue
                        if msg is None:
                            tail = stream.tail.decode()
                            record.ends.append((time.monotonic(), label, (
                                stream.closed_by_server, json.loads(tail) if tail else None)))
                            break
                        result = msg["result"]
                        if result.get("created"):
                            record.created.append(label)
                        for e in result.get("events", []):
                            kv = e["kv"]
                            record.events.append((int(kv["mod_revision"]),
                                                  base64.b64decode(kv["key"]),
                                                  base64.b64decode(kv.get("value", ""))))
                finally:
                    stream.close()
                start = record.resume_from(self.start_revision)
        except BaseException as e:    # reported by the test
            record.error = repr(e)


# -- writers --------------------------------------------------------------------------------

class Writer(threading.Thread):
    """Puts through one adapter until stopped; acked = [(revision, key, value)]."""

    def __init__(self, server):
        threading.Thread.__init__(self, daemon=True, name="writer")
        self.server = server
        self.acked = []
        self.failed = []
        self.stopping = threading.Event()

    def run(self):
        with servers.GrpcClient(self.server.endpoint, timeout=20) as c:
            i = 0
            while not self.stopping.is_set():
                key, value = PREFIX + b"k%05d" % i, b"v%d" % i
                r = c.call("/etcdserverpb.KV/Put", rpc.PutRequest(key=key, value=value),
                           rpc.PutResponse)
                if r.ok:
                    self.acked.append((r.response.header.revision, key, value))
                else:
                    self.failed.append(r.error())
                i += 1
                time.sleep(0.01)


class RevisionLock(object):
    """Holds the revision counter's row lock in a transaction of the test's own, so
    that a write through an adapter stays in flight until :meth:`release`."""

    def __init__(self, kind, url):
        from urllib.parse import urlsplit
        if kind == "mariadb":
            import pymysql
            u = urlsplit(url)
            self.conn = pymysql.connect(host=u.hostname, port=u.port, user=u.username,
                                        password=u.password or "",
                                        database=u.path.lstrip("/"), autocommit=False)
        else:
            import psycopg
            self.conn = psycopg.connect(url, autocommit=False)
        cur = self.conn.cursor()
        cur.execute("SELECT revision FROM etcd_meta WHERE id = 1 FOR UPDATE")
        cur.fetchall()

    def release(self):
        self.conn.rollback()
        self.conn.close()


@pytest.fixture(params=["mariadb", "postgresql"])
def two_adapters(request):
    """(kind, database URL, A (JSON logs, 30 s drain timeout), B) on one new database."""
    if servers.target_kind() != "adapter":
        pytest.skip("needs the adapter")
    kind = request.param
    url, drop = create_database(kind)
    request.addfinalizer(drop)
    a = JsonLoggedAdapter("drain-a", store=url,
                          extra_args=["--drain-timeout", str(DRAIN_TIMEOUT)])
    b = servers.AdapterServer("drain-b", store=url)
    started = [a, b]
    request.node._etcdadapter_servers = started

    def stop():
        for s in started:
            if s.alive():
                s.stop()
            s.cleanup()
    request.addfinalizer(stop)
    servers.start_all(started)
    return kind, url, a, b


def test_sigterm_with_500_watches(two_adapters):
    kind, url, a, b = two_adapters
    with servers.GrpcClient(b.endpoint) as c:
        base = c.call("/etcdserverpb.KV/Put", rpc.PutRequest(key=PREFIX + b"start",
                                                             value=b"0"),
                      rpc.PutResponse).response.header.revision
    first = (base, PREFIX + b"start", b"0")
    grpc_watchers = GrpcWatchers(a, b, GRPC_WATCHES, base)
    http_watchers = [HttpWatcher(a, b, i, base) for i in range(HTTP_WATCHES)]
    records = grpc_watchers.records + [w.record for w in http_watchers]
    writer = Writer(b)
    lock = inflight = None
    try:
        grpc_watchers.start()
        for w in http_watchers:
            w.start()
        wait_until(lambda: all(r.events[:1] == [first] for r in records), 60,
                   "every watcher to be created on A and replay the first write")
        assert all(r.created == ["A"] for r in records)
        writer.start()
        wait_until(lambda: all(len(r.events) >= 4 for r in records), 30,
                   "live events at every watcher")

        # A Put through A that stays in flight until the lock is released.
        lock = RevisionLock(kind, url)
        inflight_result = []

        def put_through_a():
            with servers.GrpcClient(a.endpoint, timeout=DRAIN_TIMEOUT) as ca:
                inflight_result.append(ca.call(
                    "/etcdserverpb.KV/Put", rpc.PutRequest(key=PREFIX + b"inflight",
                                                           value=b"A"), rpc.PutResponse))
        inflight = threading.Thread(target=put_through_a, daemon=True)
        inflight.start()
        time.sleep(0.3)

        term = time.monotonic()
        a.proc.send_signal(15)
        wait_until(lambda: all(r.ends for r in records), CLEAN_END + 5,
                   "every stream on A to end")
        ended = max(r.ends[0][0] for r in records) - term
        assert not inflight_result, "the Put was answered before the lock was released"
        time.sleep(max(0.0, term + HOLD - time.monotonic()))
        lock.release()
        lock = None
        inflight.join(DRAIN_TIMEOUT)
        put = inflight_result[0]
        assert put.ok, put
        a.proc.wait(DRAIN_TIMEOUT)
        exited = time.monotonic() - term
        assert a.proc.returncode == 0, a.log_tail()

        wait_until(lambda: all(r.created == ["A", "B"] for r in records), 30,
                   "every watcher to resume on B")
        time.sleep(0.5)
    finally:
        if lock is not None:
            lock.release()
        writer.stopping.set()
        writer.join(30)
    try:
        assert not writer.failed, writer.failed[:5]
        expected = sorted([first] + writer.acked + [(put.response.header.revision,
                                                     PREFIX + b"inflight", b"A")])
        last = expected[-1][0]
        assert [e[0] for e in expected] == list(range(base, last + 1))
        wait_until(lambda: all(r.events and r.events[-1][0] >= last for r in records), 30,
                   "every watcher to see revision %d" % last)
        time.sleep(0.3)                     # nothing more (no duplicate) may come
        for r in records:
            assert r.error is None, (r.name, r.error)
            assert r.events == expected, (r.name, len(r.events), len(expected))
            assert len(r.ends) == 1 and r.ends[0][1] == "A", (r.name, r.ends)
            how = r.ends[0][2]
            if r.name.startswith("grpc"):
                assert how == STOPPED, (r.name, how)
            else:
                assert how == (None, HTTP_STOPPED), (r.name, how)
        assert ended < CLEAN_END, "the last stream ended %.2fs after SIGTERM" % ended
        assert HOLD <= exited < DRAIN_TIMEOUT
        draining, = a.named("draining")
        assert draining["streams"] == GRPC_WATCHES + HTTP_WATCHES
        drained, = a.named("drained")
        assert drained["connections_cut"] == 0
        print("%s: %d watchers, every stream ended within %.2fs of SIGTERM, A exited "
              "after %.2fs (a Put held in flight %.1fs), %d writes seen exactly once by "
              "every watcher" % (kind, len(records), ended, exited, HOLD, len(expected)))
    finally:
        grpc_watchers.stop()
        for w in http_watchers:
            w.stopping.set()
        for w in http_watchers:
            w.join(5)
        assert grpc_watchers.error is None, grpc_watchers.error
