"""The SQL stores' replica and group commit (etcdadapter/store/sql/feed.py, barrier.py,
group_commit.py), on real databases:

* a put acknowledged by one adapter process is seen at once by a get on another (the
  read barrier), 2,000 times in a row, on MariaDB and PostgreSQL;
* one write batch holding a txn whose compare fails and requests that are refused gives
  every request exactly the answer it gets alone (the memory store, one request at a
  time, is the reference), with consecutive revisions;
* a database connection cut in the middle of a batch answers no request as committed
  unless the database has it, and the replica never shows a revision the database does
  not have;
* an adapter started on a database with history, garbage and a compaction answers every
  historical read and history query like the adapter that wrote it all, and like the
  memory store that ran the same requests.
"""

import random
import threading
import time

import grpc
import pytest

from etcdadapter import errors
from etcdadapter.pb.etcdserverpb import rpc_pb2 as rpc
from etcdadapter.store import mvcc
from etcdadapter.store.memory import MemoryStore
from etcdadapter.store.sql.group_commit import Item
from support.db_proxy import DatabaseProxy
from support.fired import error_of, result
from support.multi import db_url, start_adapters  # noqa: F401  (fixture)
from support.stores import MYSQL_URL, POSTGRES_URL, call, raw

from support import servers

KV = "/etcdserverpb.KV/"
ALL = dict(key=b"\0", range_end=b"\0")


def put_req(key, value=b"v", **kw):
    return rpc.PutRequest(key=key, value=value, **kw)


def snapshot(s, revision=0):
    """Every key (with its KV fields) at ``revision`` (0: latest)."""
    r = result(s.range(rpc.RangeRequest(revision=revision, **ALL)))
    return r.header.revision, [(kv.key, kv.create_revision, kv.mod_revision, kv.version,
                                kv.value, kv.lease) for kv in r.kvs]


# ---------------------------------------------------------------------------------------
# (a) read-after-write across adapters

@pytest.mark.adapter
def test_a_put_on_one_adapter_is_seen_at_once_by_a_get_on_another(db_url, request):
    a, b = start_adapters(db_url, 2, request)
    clients = [servers.GrpcClient(a.endpoint), servers.GrpcClient(b.endpoint)]
    try:
        stale = []
        for i in range(2000):
            writer, reader = (clients[0], clients[1]) if i % 2 == 0 else \
                (clients[1], clients[0])
            value = b"%d" % i
            w = writer.call(KV + "Put", put_req(b"/raw/key", value), rpc.PutResponse)
            assert w.ok, w
            r = reader.call(KV + "Range", rpc.RangeRequest(key=b"/raw/key"),
                            rpc.RangeResponse)
            assert r.ok, r
            got = r.response
            if not got.kvs or got.kvs[0].value != value or \
                    got.header.revision < w.response.header.revision:
                stale.append((i, w.response.header.revision, got))
        assert stale == []
    finally:
        for c in clients:
            c.close()


# ---------------------------------------------------------------------------------------
# (b) one batch, every request answered as if alone

class Gate(object):
    """An exclusive job holding the committer (its write thread) until opened, so that
    the requests submitted meanwhile form one batch."""

    def __init__(self, store):
        self.opened = threading.Event()
        self.entered = threading.Event()

        def hold(tx):
            self.entered.set()
            self.opened.wait(30)
        self.done = call(lambda: raw(store).committer.exclusive(hold).addErrback(
            lambda f: None) and None)
        assert self.entered.wait(10)

    def open(self):
        self.opened.set()


def _requests():
    """Requests of one batch: plain writes, a txn whose compare fails, refused ones (a
    missing lease, ignore_value on a missing key, a read of a future revision inside a
    txn), writes depending on earlier ones of the batch."""
    T = rpc.TxnRequest
    C = rpc.Compare
    Op = rpc.RequestOp
    return [
        ("put", put_req(b"a", b"1")),
        ("txn", T(compare=[C(key=b"a", target=C.VALUE, result=C.EQUAL, value=b"nope")],
                  success=[Op(request_put=put_req(b"b", b"yes"))],
                  failure=[Op(request_put=put_req(b"b", b"no", prev_kv=True)),
                           Op(request_range=rpc.RangeRequest(key=b"a"))])),
        ("put", put_req(b"c", b"x", lease=0x1234)),                       # no such lease
        ("txn", T(success=[Op(request_put=put_req(b"zz", ignore_value=True))])),
        ("put", put_req(b"a", b"2", prev_kv=True)),
        ("txn", T(success=[Op(request_range=rpc.RangeRequest(key=b"a", revision=10 ** 9)),
                           Op(request_put=put_req(b"e"))])),
        ("delete", rpc.DeleteRangeRequest(key=b"a", range_end=b"c", prev_kv=True)),
        ("txn", T(compare=[C(key=b"a", target=C.VERSION, result=C.EQUAL, version=0)],
                  success=[Op(request_put=put_req(b"a", b"3")),
                           Op(request_range=rpc.RangeRequest(key=b"\0", range_end=b"\0"))])),
        ("put", put_req(b"d", b"4")),
    ]


def _apply(s, kind, req):
    return {"put": s.put, "txn": s.txn, "delete": s.delete_range}[kind](req)


def _outcome_of(value):
    """A response or an EtcdError (or its Failure) as a comparable tuple."""
    e = getattr(value, "value", value)
    if isinstance(e, errors.EtcdError):
        return ("error", e.code, e.message)
    if isinstance(e, BaseException):
        raise e
    return ("ok", value.SerializeToString(deterministic=True))


def _outcome(d):
    """The outcome of an already-fired Deferred."""
    out = []
    d.addBoth(out.append)
    return _outcome_of(out[0])


def wait_all(pending, timeout=30):
    """The outcomes of Deferreds (made on the reactor thread), once all have fired."""
    out = [None] * len(pending)
    done = threading.Event()
    left = [len(pending)]

    def fired(value, i):
        out[i] = value
        left[0] -= 1
        if not left[0]:
            done.set()

    def watch():
        for i, d in enumerate(pending):
            d.addBoth(fired, i)
    call(watch)
    assert done.wait(timeout), out
    return out


@pytest.mark.parametrize("store_kind", ["sqlite", "mariadb", "postgresql"])
def test_one_batch_answers_each_request_as_if_alone(make_store):
    s = make_store()
    ref = MemoryStore(initial_revision=1)
    reqs = _requests()
    gate = Gate(s)
    pending = call(lambda: [_apply(raw(s), kind, req) for kind, req in reqs])
    gate.open()
    got = [_outcome_of(v) for v in wait_all(pending)]
    assert raw(s).committer.last_batch == len(reqs)
    want = [_outcome(_apply(ref, kind, req)) for kind, req in reqs]
    assert got == want
    # Refused: the lease, ignore_value, the future revision; the others wrote one
    # revision each, consecutive.
    assert [g[0] for g in got] == ["ok", "ok", "error", "error", "ok", "error", "ok", "ok",
                                  "ok"]
    assert got[2][2] == errors.ErrLeaseNotFound().message
    assert s.revision == ref.revision == 7
    assert snapshot(s) == snapshot(ref)
    # The database holds exactly that: a fresh adapter loads the same.
    fresh = make_store(url=make_store.url)
    for rev in range(1, 8):
        assert snapshot(fresh, rev) == snapshot(ref, rev)
    assert result(fresh.history(1, **ALL)) == result(ref.history(1, **ALL))


# ---------------------------------------------------------------------------------------
# (c) the connection cut in the middle of a batch

def _proxy_for(kind):
    if kind == "mariadb":
        return DatabaseProxy(int(MYSQL_URL.rsplit(":", 1)[1]))
    return DatabaseProxy(int(POSTGRES_URL.rsplit(":", 1)[1]))


def _cutting_item(proxy, how, kind):
    """A write whose evaluation (between the batch's BEGIN and its writes) breaks the
    database connection: ``cut`` now, or ``after-commit`` (the COMMIT reaches the
    database, its answer never comes back)."""
    req = put_req(b"cut", b"x")

    def evaluate(view, batch):
        if how == "cut":
            proxy.cut()
        elif kind == "postgresql":
            # psycopg prepares a statement it runs often (the COMMIT is then a Bind of
            # "_pg3_n"): watch for the server's CommandComplete "COMMIT" instead.
            proxy.cut_after(b"COMMIT\0", answer=True)
        else:
            proxy.cut_after(b"COMMIT")
        return mvcc.put(view, req)[0]
    return Item(evaluate, 1)


@pytest.mark.parametrize("store_kind", ["mariadb", "postgresql"])
@pytest.mark.parametrize("how", ["cut", "after-commit"])
def test_connection_lost_in_a_batch(make_store, how):
    s0 = make_store()                       # creates the database; stays direct
    proxy = _proxy_for(make_store.kind)
    try:
        params = {"notify": "false"} if make_store.kind == "postgresql" else {}
        s = make_store(url=proxy.url_for(make_store.url), poll_interval=3600, **params)
        for i in range(3):
            result(s.put(put_req(b"k%d" % i)))                         # 2, 3, 4
        gate = Gate(s)
        pending = call(lambda: [raw(s).committer.submit(_cutting_item(proxy, how, make_store.kind))] +
                       [raw(s).put(put_req(b"k%d" % i, b"batch")) for i in range(5)])
        gate.open()
        outcomes = [_outcome_of(v) for v in wait_all(pending)]
        # None is answered as committed; the replica shows nothing the batch wrote.
        # After the COMMIT went out the outcome is unknown: "request timed out"; a cut
        # before it may look the same from this side of the socket (or be "no leader"
        # when the adapter could tell), never OK.
        timed_out = ("error", grpc.StatusCode.UNAVAILABLE.value[0],
                     "etcdserver: request timed out")
        no_leader = ("error", grpc.StatusCode.UNAVAILABLE.value[0], "etcdserver: no leader")
        if how == "after-commit":
            assert outcomes == [timed_out] * 6
        else:
            assert len(outcomes) == 6 and set(outcomes) <= {timed_out, no_leader}
        assert s.revision == 4
        proxy.restore()
        head = result(s0.range(rpc.RangeRequest(key=b"k0"))).header.revision
        # "cut": nothing reached the database; "after-commit": all six did.
        assert head == (4 if how == "cut" else 10)
        # The adapter recovers by itself and agrees with the database.
        deadline = time.monotonic() + 20
        while True:
            try:
                after = result(s.put(put_req(b"after")))
                break
            except Exception:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        assert after.header.revision == head + 1
        assert snapshot(s) == snapshot(s0)
    finally:
        proxy.close()


# ---------------------------------------------------------------------------------------
# (d) an adapter started on a database with history

def _random_ops(rnd, n):
    keys = [b"/h/%d" % i for i in range(12)]
    ops = []
    for _ in range(n):
        k = rnd.choice(keys)
        x = rnd.random()
        if x < 0.55:
            ops.append(("put", put_req(k, b"v%d" % rnd.randrange(1000))))
        elif x < 0.75:
            ops.append(("delete", rpc.DeleteRangeRequest(
                key=k, range_end=rnd.choice([b"", mvcc.prefix_end(k[:-1])]))))
        else:
            j = rnd.choice(keys)
            ops.append(("txn", rpc.TxnRequest(
                compare=[rpc.Compare(key=k, target=rpc.Compare.VERSION,
                                     result=rpc.Compare.GREATER, version=1)],
                success=[rpc.RequestOp(request_put=put_req(j, b"t")),
                         rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=k))],
                failure=[rpc.RequestOp(request_put=put_req(k, b"f"))])))
    return ops


@pytest.mark.parametrize("store_kind", ["sqlite", "mariadb", "postgresql"])
@pytest.mark.parametrize("purged", [False, True])
def test_a_new_adapter_answers_history_like_the_one_that_wrote_it(make_store, purged):
    a = make_store()
    ref = MemoryStore(initial_revision=1)
    rnd = random.Random(7)
    ops = _random_ops(rnd, 120)
    for kind, req in ops[:80]:
        assert _outcome(_apply(a, kind, req)) == _outcome(_apply(ref, kind, req))
    compact = ref.revision - 20
    if not purged:
        raw(a).purger.stopping = True            # the compaction leaves its garbage
    result(a.compact(compact, physical=purged))
    result(ref.compact(compact))
    for kind, req in ops[80:]:
        assert _outcome(_apply(a, kind, req)) == _outcome(_apply(ref, kind, req))
    b = make_store(url=make_store.url)
    head = ref.revision
    assert a.revision == b.revision == head
    assert b.compact_revision == compact
    for rev in range(compact, head + 1):
        assert snapshot(b, rev) == snapshot(ref, rev) == snapshot(a, rev)
    for rev in (1, compact - 1):
        assert error_of(b.range(rpc.RangeRequest(revision=rev, **ALL))) == \
            errors.ErrCompacted()
    for start in (compact, compact + 1, head):
        assert result(b.history(start, **ALL)) == \
            result(ref.history(start, **ALL)) == \
            result(a.history(start, **ALL))
    assert error_of(b.history(compact - 1, **ALL)) == errors.ErrCompacted()


@pytest.mark.parametrize("store_kind", ["sqlite", "mariadb", "postgresql"])
def test_writes_after_another_adapter_compacted(make_store):
    """B's replica has not seen A's compaction (B polls every hour): B's next write goes
    through at once (its batch finds the compact revision moved, catches up, runs again),
    and B's own compaction to below A's answers ErrCompacted -- neither waits for a
    revision that never comes."""
    params = {"notify": "false"} if make_store.kind == "postgresql" else {}
    a = make_store()
    b = make_store(url=make_store.url, poll_interval=3600, **params)
    for i in range(10):
        result(a.put(put_req(b"k%d" % i)))                              # 2..11
    assert result(b.range(rpc.RangeRequest(key=b"k0"))).header.revision == 11
    result(a.compact(8))
    assert b.compact_revision == -1                                     # not seen yet
    t = time.monotonic()
    assert result(b.put(put_req(b"after"))).header.revision == 12
    assert error_of(b.compact(5)) == errors.ErrCompacted()
    assert time.monotonic() - t < 5
    assert b.compact_revision == 8


@pytest.mark.parametrize("store_kind", ["mariadb"])
def test_an_idle_feed_does_not_reconnect_every_tick_while_the_database_is_away(make_store):
    # A timed poll first reads the revision on the reactor's connection; while the
    # database is away that connection is not tried again every tick (the poll's own
    # transaction finds out when it is back).
    make_store()                            # creates the database; stays direct
    proxy = _proxy_for(make_store.kind)
    try:
        s = make_store(url=proxy.url_for(make_store.url), poll_interval=0.05)
        reader = raw(s)._revision_reader.connection
        connects = []
        real_connect = reader._connect
        reader._connect = lambda: connects.append(1) or real_connect()
        proxy.cut()
        servers.wait_until(lambda: raw(s).runner.down_since is not None, timeout=10,
                           what="the outage noticed")
        before = len(connects)
        time.sleep(2.0)                     # polls while failing: every 0.5 s
        assert len(connects) - before <= 1, len(connects) - before
        proxy.restore()
        servers.wait_until(lambda: raw(s).runner.down_since is None and reader.connected,
                           timeout=10, what="the reader back")
    finally:
        proxy.close()


@pytest.mark.parametrize("store_kind", ["sqlite", "mariadb", "postgresql"])
def test_the_reads_of_one_barrier_query_are_answered_each_as_if_alone(make_store):
    # The reads of one reactor turn share one barrier query and are answered in one
    # pass: each gets what it gets alone, errors included.  Here the replica lags the
    # database (another adapter wrote, and no poll would bring it), so the pass first
    # waits for the feed, once for all of them.
    params = {"notify": "false"} if make_store.kind == "postgresql" else {}
    a = make_store()
    b = make_store(url=make_store.url, poll_interval=3600, **params)
    for i in range(5):
        result(a.put(put_req(b"k%d" % i, b"v%d" % i)))                  # 2..6
    result(a.compact(3))
    store = raw(b)
    assert store.revision == 1
    reads = [
        ("range", rpc.RangeRequest(key=b"k1")),
        ("range", rpc.RangeRequest(key=b"k0", revision=2)),             # compacted
        ("range", rpc.RangeRequest(key=b"k", range_end=b"l")),
        ("range", rpc.RangeRequest(key=b"k", range_end=b"l", revision=99)),   # future
        ("txn", rpc.TxnRequest(success=[rpc.RequestOp(
            request_range=rpc.RangeRequest(key=b"k4"))])),
    ]
    queries = store.barrier.queries
    pending = call(lambda: [getattr(store, kind)(req) for kind, req in reads])
    together = [_outcome_of(v) for v in wait_all(pending)]
    assert store.barrier.queries == queries + 1
    assert together == [_outcome(getattr(b, kind)(req)) for kind, req in reads]
    one = rpc.RangeResponse.FromString(together[0][1])
    assert (one.header.revision, [(kv.key, kv.value, kv.mod_revision) for kv in one.kvs]) \
        == (6, [(b"k1", b"v1", 3)])
    assert together[1] == _outcome_of(errors.ErrCompacted())
    assert rpc.RangeResponse.FromString(together[2][1]).count == 5
    assert together[3] == _outcome_of(errors.ErrFutureRev())
    txn = rpc.TxnResponse.FromString(together[4][1])
    assert txn.succeeded and txn.responses[0].response_range.kvs[0].value == b"v4"


@pytest.mark.parametrize("store_kind", ["mariadb", "postgresql"])
def test_a_script_unanswered_for_its_timeout_fails_after_many_answered_ones(make_store):
    # A reactor connection keeps one deadline timer, not one per script: a script sent
    # after the first timer was due still gets its whole timeout, then fails as a lost
    # connection (and the connection is dropped).
    from etcdadapter.store.sql.dialect import DISCONNECT
    from etcdadapter.store.urls import open_store
    timeout = 0.5
    reactor = raw(make_store()).reactor     # (make_store creates the database)
    proxy = _proxy_for(make_store.kind)
    conn = None
    try:
        dialect = open_store(proxy.url_for(make_store.url), reactor=reactor).dialect
        conn = dialect.reactor_connection(reactor, timeout)
        call(conn.connect)
        started = time.monotonic()
        answered = 0
        while time.monotonic() - started < 3 * timeout:
            assert call(conn.script, [("SELECT 1", None)]) == [[(1,)]]
            answered += 1
        assert answered > 1
        proxy.freeze()
        sent = time.monotonic()
        with pytest.raises(Exception) as failed:
            call(conn.script, [("SELECT 1", None)])
        assert time.monotonic() - sent >= timeout
        assert dialect.classify(failed.value) == DISCONNECT
        assert "no answer in" in str(failed.value)
        assert not conn.connected
    finally:
        if conn is not None:
            call(conn.close)
        proxy.close()


@pytest.mark.parametrize("store_kind", ["mariadb"])
def test_an_answer_larger_than_one_read_of_the_socket_arrives_whole(make_store):
    # The reactor's MySQL connection reads the socket 256 KiB at a time.
    s = make_store()
    c = raw(s).write_connection
    call(c.connect)
    assert call(c.script, [("SELECT REPEAT('ab', 400000), 7", None), ("SELECT 8", None)]) \
        == [[(b"ab" * 400000, 7)], [(8,)]]
