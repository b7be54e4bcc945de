"""A write lock held by someone who does not let go: another adapter paused (SIGSTOP, a
VM pause) or dead in the middle of a write transaction.

Every write locks the revision counter row, so such a holder stops every writer on the
database.  What must hold:

* reads, the change feed and ``/health`` go on at full speed: they have their own
  thread pool and connections, never queued behind waiting writes;
* a write waits for the lock at most ``lock_timeout`` (counted from when it was queued),
  then answers Unavailable "etcdserver: request timed out" at once -- not after 5 retries
  of InnoDB's 50 s, nor never (PostgreSQL's default);
* the database ends a write transaction left idle longer than
  ``idle_transaction_timeout`` (the paused adapter's), so the others' writes go through
  again while it is still paused;
* the paused adapter, once resumed, answers its interrupted requests truthfully (OK only
  if committed) and both adapters agree on every revision.

Store level first (a lock held by the test's own connection), then two real adapter
processes, one of them paused with SIGSTOP for 20 s while it holds the lock.
"""

import os
import random
import signal
import sqlite3
import statistics
import threading
import time

import pytest
from twisted.internet import defer

from etcdadapter import errors
from etcdadapter.pb.etcdserverpb import rpc_pb2 as rpc

from support import servers
from support import stores
from support.fired import result
from support.multi import Watcher, ok, start_adapters
from support.stores import create_database, raw

pytestmark = pytest.mark.serial     # pauses adapters and times how others answer

KV = "/etcdserverpb.KV/"
TIMED_OUT = ("UNAVAILABLE", "etcdserver: request timed out")
FAST = 0.1               # seconds a get or /health may take while writes wait


# ---------------------------------------------------------------------------------------
# Store level: the test holds the lock

def _hold_lock(s):
    """A connection holding the store's write lock (the counter row, or SQLite's write
    lock), as another adapter's open write transaction would; close it to release."""
    d = raw(s).dialect
    if d.name == "sqlite":
        conn = sqlite3.connect(d.path, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        return conn
    conn = d.connect()
    cur = conn.cursor()
    cur.execute(d.begin_write[0])
    cur.execute("SELECT revision FROM etcd_meta WHERE id = 1" + d.for_update)
    cur.fetchall()
    return conn


@pytest.mark.parametrize("store_kind", stores.SQL_KINDS)
def test_writes_waiting_for_a_held_lock_fail_fast_and_reads_go_on(make_store):
    """8 puts at once while the lock is held (2 write threads): each answers
    ErrTimeout within about the 1 s bound from when it was sent -- the ones queued behind
    the first two do not wait another second each, nobody retries -- and a get meanwhile
    answers at once.  Then the lock is released and writes work."""
    bound = {"busy_timeout": "1"} if make_store.kind == "sqlite" else {"lock_timeout": "1s"}
    s = make_store(write_pool_size=2, **bound)
    rev = s.revision
    holder = _hold_lock(s)
    outcomes = []
    done = threading.Event()

    def fire():
        waits = []
        for i in range(8):
            t0 = time.monotonic()
            d = raw(s).put(rpc.PutRequest(key=b"w%d" % i, value=b"v"))
            d.addBoth(lambda r, t0=t0: outcomes.append((r, time.monotonic() - t0)))
            waits.append(d)
        defer.DeferredList(waits).addCallback(lambda _: done.set())
    try:
        stores.reactor().callFromThread(fire)
        time.sleep(0.3)
        for _ in range(5):
            t = time.monotonic()
            assert result(s.range(rpc.RangeRequest(key=b"\0", range_end=b"\0"))).count == 0
            assert time.monotonic() - t < FAST
        assert done.wait(15), "the writes did not answer"
    finally:
        holder.close()
    assert len(outcomes) == 8
    for r, seconds in outcomes:
        assert getattr(r, "value", r) == errors.ErrTimeout, r
        assert r.value.code == errors.StatusCode.UNAVAILABLE
        assert 0.9 < seconds < 1.0 + 0.7, seconds
    assert s.revision == rev
    assert result(s.put(rpc.PutRequest(key=b"after", value=b"x"))).header.revision == rev + 1


# ---------------------------------------------------------------------------------------
# Two adapter processes; one paused while it holds the lock

PAUSE = 20.0             # with the defaults (the case)
PAUSE_LOCK = 8.0         # with the holder unbounded: every put fails alike, 8 s show it


def _lock_is_held(dialect):
    """Whether some transaction holds the counter row lock (a NOWAIT probe)."""
    conn = dialect.connect()
    try:
        cur = conn.cursor()
        cur.execute(dialect.begin_write[0])
        try:
            cur.execute("SELECT revision FROM etcd_meta WHERE id = 1 FOR UPDATE NOWAIT")
            cur.fetchall()
            return False
        except Exception as e:
            # PostgreSQL: lock_not_available; MariaDB: lock wait timeout
            if getattr(e, "sqlstate", None) == "55P03" or e.args[:1] == (1205,):
                return True
            raise
        finally:
            try:
                cur.execute(dialect.rollback)
            except Exception:
                pass
    finally:
        conn.close()


class Putter(threading.Thread):
    """Puts of its own keys through one adapter until stopped: (start, end, outcome,
    revision, key, value) each, outcome "OK" or (code, details)."""

    def __init__(self, server, tag, pace=0.0, lease=0):
        threading.Thread.__init__(self, daemon=True)
        self.server, self.tag, self.pace, self.lease = server, tag, pace, lease
        self.results = []
        self.stopping = threading.Event()
        self.error = None

    def run(self):
        try:
            with servers.GrpcClient(self.server.endpoint, timeout=60) as c:
                i = 0
                while not self.stopping.is_set():
                    key, value = b"/stall/%s/%05d" % (self.tag, i), b"v%d" % i
                    t0 = time.monotonic()
                    r = c.call(KV + "Put", rpc.PutRequest(key=key, value=value,
                                                          lease=self.lease),
                               rpc.PutResponse)
                    self.results.append((t0, time.monotonic(), "OK" if r.ok else r.error(),
                                         r.response.header.revision if r.ok else None,
                                         key, value))
                    i += 1
                    time.sleep(self.pace if r.ok else 0.02)
        except BaseException as e:
            self.error = e


# A get and a /health every 50 ms, in a process of its own (the test process's threads
# must not add their GIL waits to the latencies); prints JSON lines [what, seconds, ok].
_READER = r"""
import http.client, json, sys, time
import grpc
from etcdadapter.pb.etcdserverpb import rpc_pb2 as rpc
host, port, key, seconds = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode(), float(sys.argv[4])
channel = grpc.insecure_channel("%s:%d" % (host, port))
get = channel.unary_unary("/etcdserverpb.KV/Range",
                          request_serializer=lambda m: m.SerializeToString(),
                          response_deserializer=rpc.RangeResponse.FromString)
conn = http.client.HTTPConnection(host, port, timeout=10)
get(rpc.RangeRequest(key=key), timeout=10)          # connected before measuring
conn.request("GET", "/health")
conn.getresponse().read()
print("ready", flush=True)
began = time.monotonic()
end = began + seconds
while time.monotonic() < end:
    t = time.monotonic()
    try:
        ok = get(rpc.RangeRequest(key=key), timeout=10).kvs[0].value.decode()
    except grpc.RpcError as e:
        ok = "%s %s" % (e.code().name, e.details())
    print(json.dumps(["get", time.monotonic() - t, ok, t - began]), flush=True)
    t = time.monotonic()
    conn.request("GET", "/health")
    resp = conn.getresponse()
    body = json.loads(resp.read())
    print(json.dumps(["health", time.monotonic() - t, [resp.status, body], t - began]),
          flush=True)
    time.sleep(0.05)
"""


def start_reader(server, key, seconds):
    """The reader process on ``server`` for ``seconds`` (wait() then read_results())."""
    import subprocess
    import sys
    env = dict(os.environ, PYTHONPATH=servers.REPO_ROOT)
    proc = subprocess.Popen([sys.executable, "-c", _READER, "127.0.0.1", str(server.port),
                             key.decode(), str(seconds)], stdout=subprocess.PIPE,
                            env=env, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def read_results(proc):
    import json
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, proc.returncode
    return [json.loads(line) for line in out.splitlines()]


def _pause_holding_the_lock(a, dialect, attempts=40):
    """SIGSTOP ``a`` at a moment it holds the counter lock (it is taking writes);
    returns the monotonic time it was stopped."""
    rng = random.Random(7)
    for _ in range(attempts):
        time.sleep(rng.uniform(0.02, 0.08))
        os.kill(a.proc.pid, signal.SIGSTOP)
        stopped = time.monotonic()
        if _lock_is_held(dialect):
            return stopped
        os.kill(a.proc.pid, signal.SIGCONT)
    raise AssertionError("never caught the adapter holding the lock")


@pytest.fixture(params=["mariadb", "postgresql"])
def db(request):
    url, drop = create_database(request.param)
    yield request.param, url
    drop()


def _with(url, **params):
    return url + ("&" if "?" in url else "?") + "&".join(
        "%s=%s" % kv for kv in sorted(params.items()))


@pytest.mark.parametrize("bound", ["idle", "lock"])
def test_paused_adapter_holding_the_lock(db, request, bound):
    """A takes a burst of writes and is paused (SIGSTOP) for 20 s (8 s in the "lock"
    case) while it holds the counter lock.  B's gets and /health answer within 100 ms throughout.  B's puts:

    * "idle" (the defaults: idle_transaction_timeout 1 s, lock_timeout 3 s): the
      database ends A's idle transaction, and B's puts go through while A is still
      paused; none takes longer than the lock_timeout;
    * "lock" (A not bounded, idle_transaction_timeout=0; B lock_timeout=1s): A keeps the
      lock for the whole pause; every put through B answers Unavailable "request timed
      out" within the bound.

    After SIGCONT both adapters work and agree: one revision sequence without gap or
    duplicate, seen identically by watchers on both; every acknowledged write there."""
    from etcdadapter.store.urls import open_store
    kind, url = db
    if bound == "idle":
        urls, limit, pause = [url, url], 3.0, PAUSE
    else:
        urls, limit, pause = [_with(url, idle_transaction_timeout="0"),
                              _with(url, lock_timeout="1s")], 1.0, PAUSE_LOCK
    a, b = start_adapters(urls, None, request)
    probe = open_store(url).dialect
    with servers.GrpcClient(b.endpoint) as c:
        base = ok(c, "Put", rpc.PutRequest(key=b"/stall/read", value=b"r"),
                  rpc.PutResponse).header.revision
    watchers = [Watcher(s, key=b"/stall/", range_end=b"/stall0", start_revision=base)
                for s in (a, b)]
    # A's puts carry a lease: a batch that needs lease rows locks the counter, reads
    # them, evaluates, then writes -- it holds the lock across a round trip to the
    # adapter, so a pause can catch it holding it.  (A batch of puts without leases is
    # one round trip, run by the database alone: a paused adapter cannot hold the lock.)
    with servers.GrpcClient(a.endpoint) as c:
        granted = c.call("/etcdserverpb.Lease/LeaseGrant", rpc.LeaseGrantRequest(TTL=3600),
                         rpc.LeaseGrantResponse)
        assert granted.ok, granted
        lease = granted.response.ID
    a_putters = [Putter(a, b"a%d" % i, lease=lease) for i in range(4)]
    # B's puts at a modest pace: they probe the write path; the reads are what is timed.
    b_putters = [Putter(b, b"b%d" % i, pace=0.01) for i in range(4)]
    reader = None
    stopped = resumed = None
    try:
        for p in a_putters:
            p.start()
        time.sleep(0.3)
        stopped = _pause_holding_the_lock(a, probe)
        reader = start_reader(b, b"/stall/read", pause - 1.0)
        for p in b_putters:
            p.start()
        time.sleep(max(0.0, stopped + pause - time.monotonic()))
        reads = read_results(reader)
        # Requests still in flight at the end of the pause are judged after it.
        os.kill(a.proc.pid, signal.SIGCONT)
        resumed = time.monotonic()
        time.sleep(2.0)                      # both take writes again
    finally:
        if stopped is not None and resumed is None:
            os.kill(a.proc.pid, signal.SIGCONT)
        for p in a_putters + b_putters:
            p.stopping.set()
        for p in a_putters + b_putters:
            p.join(70)
        if reader is not None and reader.poll() is None:
            reader.kill()
    try:
        for p in a_putters + b_putters:
            assert p.error is None, p.error

        # B's reads and health: every one answered, fast, while A was paused.
        gets = [r for r in reads if r[0] == "get"]
        health = [r for r in reads if r[0] == "health"]
        assert len(gets) > 100 and len(health) > 100
        assert all(r[2] == "r" for r in gets), [r for r in gets if r[2] != "r"][:3]
        assert all(r[2] == [200, {"health": "true", "reason": ""}] for r in health), \
            [r for r in health if r[2][0] != 200][:3]
        slowest = max(r[1] for r in reads)
        assert slowest < FAST, sorted(reads, key=lambda r: -r[1])[:5]

        # B's puts sent during the pause: OK, or Unavailable within the bound.
        during = [r for p in b_putters for r in p.results if r[0] < resumed]
        assert during
        for t0, t1, outcome, _rev, key, _v in during:
            assert outcome == "OK" or outcome == TIMED_OUT, (key, outcome)
            assert t1 - t0 < limit + 1.0, (key, outcome, t1 - t0)
        ok_during = [r for r in during if r[2] == "OK" and r[1] < resumed]
        failed = [r for r in during if r[2] != "OK"]
        if bound == "idle":
            # The database ended A's transaction: B's writes resumed, A still paused.
            assert len(ok_during) > 50, len(ok_during)
            first_ok = min(r[1] for r in ok_during) - stopped
            assert first_ok < 2 * 1.0 + 1.0, first_ok
        else:
            assert not ok_during, ok_during[:3]
            assert len(failed) > 20
            first_ok = None
        # The timeouts are logged, at most every 10 s (not once per write).
        logged = b.log_text().count("not done within lock_timeout")
        assert (logged >= 1) if failed else True
        assert logged <= pause / 10 + 2, logged

        # After SIGCONT: both adapters take writes again ...
        for s in (a, b):
            with servers.GrpcClient(s.endpoint) as c:
                assert any(r[2] == "OK" and r[0] > resumed
                           for p in (a_putters if s is a else b_putters)
                           for r in p.results), s.label
        # ... and agree on every revision: none lost, none twice.
        acked = sorted((r[3], r[4], r[5]) for p in a_putters + b_putters
                       for r in p.results if r[2] == "OK")
        assert len({r for r, _k, _v in acked}) == len(acked)
        last = acked[-1][0]
        for w in watchers:
            w.wait_for(last)
        time.sleep(0.3)
        for w in watchers:
            assert w.error is None, w.error
        assert watchers[0].events == watchers[1].events
        events = watchers[0].events
        assert [e[0] for e in events] == list(range(base, events[-1][0] + 1))
        by_rev = {e[0]: e for e in events}
        for rev, key, value in acked:
            assert by_rev[rev] == (rev, 0, key, value)
        # Events of writes not acknowledged: only writes answered "request timed out"
        # (outcome unknown to the client) may have committed.
        unacked = {(e[2], e[3]) for e in events[1:]} - {(k, v) for _r, k, v in acked}
        assert unacked <= {(r[4], r[5]) for p in a_putters + b_putters
                           for r in p.results if r[2] == TIMED_OUT}
        with servers.GrpcClient(a.endpoint) as ca, servers.GrpcClient(b.endpoint) as cb:
            ra, rb = [ok(c, "Range", rpc.RangeRequest(key=b"/stall/", range_end=b"/stall0"),
                         rpc.RangeResponse) for c in (ca, cb)]
            assert ra.header.revision == rb.header.revision == events[-1][0]
            assert [(kv.key, kv.value, kv.mod_revision) for kv in ra.kvs] == \
                [(kv.key, kv.value, kv.mod_revision) for kv in rb.kvs]
        a_during = [r for p in a_putters for r in p.results if r[0] < resumed <= r[1]]
        # The figures of docs/deployment.md, "When an adapter stalls" (run with -s).
        print("%s/%s: paused %.0f s; B: %d gets (median %.1f ms) + %d health checks "
              "(median %.1f ms), slowest %.1f ms; %d puts during the pause: %d OK (first "
              "%s s into the pause), %d timed out (slowest answer %.2f s); A's %d "
              "interrupted puts after SIGCONT: %s" % (
                  kind, bound, pause,
                  len(gets), statistics.median(r[1] for r in gets) * 1000,
                  len(health), statistics.median(r[1] for r in health) * 1000,
                  slowest * 1000, len(during), len([r for r in during if r[2] == "OK"]),
                  "%.2f" % first_ok if first_ok is not None else "-", len(failed),
                  max(r[1] - r[0] for r in during), len(a_during),
                  sorted({str(r[2]) for r in a_during})))
    finally:
        for w in watchers:
            w.close()
