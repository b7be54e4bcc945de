"""Automatic compaction (etcdadapter/store/compactor.py) and the SQL stores' compaction in
small batches (etcdadapter/store/sql/purge.py).

* The compactor on a ``twisted.internet.task.Clock`` over a real memory store: etcd 3.4's
  periodic sampling (the revisions its own tests expect for 2h and 5m retentions),
  revision mode, retention 0 = off, a compaction by someone else counting as this
  period's (two compactors sharing one store compact once per period between them),
  ErrCompacted from a SQL instance that had not yet seen another's compaction, failures
  retried, and the retention parser.
* The purge on every store where it applies: random histories compacted with a batch of
  a few rows give exactly the reads they gave before at and after the compact revision,
  and (SQL) exactly the log and etcd_current rows that compaction keeps; a purge
  interrupted midway is finished by a restart or by the next compaction; two instances
  purging at once delete each row once; writers commit between the batches.
"""

import contextlib
import random
import threading

import pytest
from twisted.internet import defer, task
from twisted.logger import globalLogPublisher

from etcdadapter import errors
from etcdadapter.pb.etcdserverpb import rpc_pb2 as rpc
from etcdadapter.store import compactor, mvcc
from etcdadapter.store.compactor import PERIODIC, REVISION, Compactor, parse_retention
from etcdadapter.store.memory import MemoryStore
from etcdadapter.store.sql import purge
from support.fired import error_of, result
from support.stores import SQL_KINDS, call, is_memory, raw, settle

HOUR = 3600.0


@contextlib.contextmanager
def events_of(namespace):
    """The log events of one module while the block runs."""
    out = []

    def observe(event):
        if event.get("log_namespace") == namespace:
            out.append(event)
    globalLogPublisher.addObserver(observe)
    try:
        yield out
    finally:
        globalLogPublisher.removeObserver(observe)


def compactor_events():
    return events_of(compactor.__name__)


def put(s, key, value=b"v", **kw):
    return result(s.put(rpc.PutRequest(key=key, value=value, **kw)))


def get(s, key, **kw):
    return result(s.range(rpc.RangeRequest(key=key, **kw)))


def memory(clock):
    return MemoryStore(initial_revision=1, clock=clock)


# ---------------------------------------------------------------------------------------
# The compactor's schedule (clock-driven, memory store)

def run_intervals(store, clock, c, n, targets):
    """``n`` check intervals, one put before each (so the revision noted at the i-th check
    is 1 + i); the revision of every compaction made goes to ``targets``."""
    for _ in range(n):
        put(store, b"k")
        before = store.compact_revision
        clock.advance(c.check_interval)
        if store.compact_revision != before:
            targets.append(store.compact_revision)


@pytest.mark.parametrize("retention,first,then", [
    # etcd's TestPeriodicHourly: 2h retention, 6 min checks, compacts hourly after 2h.
    (2 * HOUR, 20, 10),
    # etcd's TestPeriodicMinutes: 5m retention, 30 s checks, compacts every 5m.
    (300.0, 10, 10),
])
def test_periodic_samples_like_etcd(retention, first, then):
    clock = task.Clock()
    s = memory(clock)
    c = Compactor(s, PERIODIC, retention, clock=clock)
    assert c.check_interval == min(retention, HOUR) / 10
    c.start()
    targets = []
    with compactor_events() as events:
        # Nothing until one retention has passed; then the revision noted at the start.
        run_intervals(s, clock, c, first - 1, targets)
        assert targets == []
        run_intervals(s, clock, c, 1, targets)
        assert targets == [1]
        # Then every interval, to the revision noted a retention (+ one check) before:
        # 10, 20, 30 as etcd's tests expect.
        for i in range(3):
            run_intervals(s, clock, c, then, targets)
            assert targets == [1] + [10 * (j + 1) for j in range(i + 1)]
    c.stop()
    assert not clock.getDelayedCalls()
    done = [e for e in events if "compacted to revision" in e["log_format"]]
    assert {e["event"] for e in done} == {"compaction"}     # structured-log name
    assert [(e["mode"], e["revision"]) for e in done] == [
        ("periodic", 1), ("periodic", 10), ("periodic", 20), ("periodic", 30)]
    # The event says what went: "k" was written at revisions 2, 3, ...: compacting to 10
    # dropped its versions 2..9, to 20 the next ten.
    assert [e["removed"] for e in done] == [0, 8, 10, 10]
    assert all(e["duration"] >= 0 for e in done)


def test_revision_mode_like_etcd():
    clock = task.Clock()
    s = memory(clock)
    c = Compactor(s, REVISION, 10, clock=clock)
    assert c.check_interval == 300.0
    c.start()
    with compactor_events() as events:
        clock.advance(300)                       # revision 1 - 10 <= 0: nothing
        assert s.compact_revision == -1
        for _ in range(99):
            put(s, b"k")                         # -> revision 100
        clock.advance(299)
        assert s.compact_revision == -1
        clock.advance(1)
        assert s.compact_revision == 90
        clock.advance(300)                       # the same target: skipped
        for _ in range(100):
            put(s, b"k")                         # -> 200
        clock.advance(300)
        assert s.compact_revision == 190
    assert [e["revision"] for e in events if "compacted to" in e["log_format"]] == \
        [90, 190]


def test_retention_zero_is_off():
    clock = task.Clock()
    s = memory(clock)
    for mode in (PERIODIC, REVISION):
        c = Compactor(s, mode, 0, clock=clock)
        with compactor_events() as events:
            c.start()
        assert not c.enabled and not clock.getDelayedCalls()
        assert [e["log_format"] for e in events] == ["auto compaction off"]
    for _ in range(50):
        put(s, b"k")
        clock.advance(600)
    assert s.compact_revision == -1


def test_a_compaction_by_someone_else_counts_as_this_periods():
    clock = task.Clock()
    s = memory(clock)
    c = Compactor(s, PERIODIC, HOUR, clock=clock)
    c.start()
    targets = []
    run_intervals(s, clock, c, 8, targets)           # 48 min
    result(s.compact(5))                             # a Compact call
    run_intervals(s, clock, c, 2, targets)           # 60 min: would have been due
    assert targets == [] and s.compact_revision == 5
    # The period restarts at the check that saw it (54 min): next due at 114 min, to
    # the revision noted an hour (+ one check) before, at 48 min.
    run_intervals(s, clock, c, 8, targets)           # 108 min
    assert targets == []
    run_intervals(s, clock, c, 1, targets)           # 114 min
    assert targets == [9]


def test_two_compactors_on_one_store_compact_once_per_period():
    """Two adapters on one database share its compact revision: the one that checks
    second sees the first one's compaction and skips its own."""
    clock = task.Clock()
    s = memory(clock)
    a = Compactor(s, REVISION, 5, clock=clock, check_interval=10)
    b = Compactor(s, REVISION, 5, clock=clock, check_interval=10)
    with compactor_events() as events:
        a.start()
        clock.advance(3)
        b.start()
        for _ in range(100):
            put(s, b"k")
            clock.advance(1)
    done = [e for e in events if "compacted to revision" in e["log_format"]]
    assert len(done) == 10                    # once per 10 s between them, not twice
    assert [e["revision"] for e in done] == sorted(e["revision"] for e in done)
    a.stop()
    b.stop()


@pytest.mark.parametrize("store_kind", ["sqlite"])
def test_err_compacted_from_an_instance_that_had_not_seen_it(make_store):
    """Instance B has not yet polled A's compaction: its own attempt gets ErrCompacted,
    which counts as done (logged, not retried)."""
    a = make_store()
    b = make_store(url=make_store.url, poll_interval="1000")
    for _ in range(30):
        put(a, b"k")                               # -> 31
    clock = task.Clock()
    c = Compactor(raw(b), REVISION, 10, clock=clock, check_interval=1)
    call(c.start)
    assert get(b, b"k").header.revision == 31      # B's replica is current ...
    result(a.compact(25))
    assert b.compact_revision == -1 and b.revision == 31  # ... but has not seen that
    with compactor_events() as events:
        call(clock.advance, 1)
        call(lambda: c._running)
    assert [e["revision"] for e in events] == [21]
    assert "is compacted already" in events[0]["log_format"]
    assert events[0]["compact_revision"] == 25     # what the attempt taught B
    assert c._last_target == 21
    with compactor_events() as events:
        call(clock.advance, 1)                     # the same target: not retried
    assert events == []
    call(c.stop)


@pytest.mark.parametrize("store_kind", ["sqlite"])
def test_failed_compaction_is_retried_at_the_next_check(make_store):
    s = make_store()
    for _ in range(20):
        put(s, b"k")
    clock = task.Clock()
    c = Compactor(raw(s), PERIODIC, 10.0, clock=clock)
    call(c.start)
    call(raw(s).stop)                              # every request fails now
    with compactor_events() as events:
        for _ in range(12):
            call(clock.advance, 1)
            call(lambda: c._running)
    failed = [e for e in events if "failed" in e["log_format"]]
    assert len(failed) == 3                        # due at 10 s, then every check
    assert all(e["revision"] == 21 and e["error"] == errors.ErrStopped.message
               for e in failed)
    call(c.stop)


@pytest.mark.parametrize("mode,text,value", [
    (PERIODIC, "1h", HOUR), (PERIODIC, "30m", 1800.0), (PERIODIC, "5s", 5.0),
    (PERIODIC, "1h30m", 5400.0), (PERIODIC, "2", 2 * HOUR), (PERIODIC, "0", 0),
    (PERIODIC, "500ms", 0.5), (REVISION, "1000", 1000), (REVISION, "0", 0),
])
def test_parse_retention(mode, text, value):
    assert parse_retention(mode, text) == value


@pytest.mark.parametrize("mode,text", [
    (PERIODIC, "-1"), (PERIODIC, "1.5"), (PERIODIC, "10x"), (PERIODIC, ""),
    (REVISION, "10m"), (REVISION, "-5"), (REVISION, "1.5"), ("hourly", "1"),
])
def test_parse_retention_refuses(mode, text):
    with pytest.raises(ValueError):
        parse_retention(mode, text)


# ---------------------------------------------------------------------------------------
# Compaction in batches (every store; rows on the SQL stores)

LOG_ROWS = "SELECT revision, sub, name, version FROM etcd_log ORDER BY revision, sub"
CURRENT_ROWS = "SELECT name, revision, sub, version FROM etcd_current ORDER BY name"


def rows(s, sql):
    def read(session):
        return session.transaction("read", lambda tx: [
            tuple(bytes(x) if isinstance(x, (bytearray, memoryview)) else x for x in r)
            for r in tx.all(sql)])
    return call(raw(s).runner.call, read)


def kept_rows(log_rows, current_rows, compact):
    """What compaction to ``compact`` keeps: every row at or above it; below it, the
    newest row at or below it of each key unless that is a tombstone; etcd_current
    without the tombstones below it."""
    newest = {}
    for r in log_rows:
        if r[0] <= compact:
            newest[r[2]] = r
    log_kept = [r for r in log_rows if r[0] >= compact or (newest[r[2]] is r and r[3])]
    current_kept = [r for r in current_rows if r[3] or r[1] >= compact]
    return log_kept, current_kept


def random_history(s, rnd, n, lease_id):
    """``n`` random writes over a few keys: puts, deletes, range deletes, txns that
    delete and put one key in one revision (etcd lets a range ending in "\\0" through),
    and a lease whose keys a revoke deletes."""
    names = [b"a", b"b", b"c", b"d", b"e"]
    result(s.lease_grant(lease_id, 3600))
    for i in range(n):
        r = rnd.random()
        k = rnd.choice(names)
        if r < 0.5:
            put(s, k, b"%d" % i, lease=lease_id if rnd.random() < 0.1 else 0)
        elif r < 0.65:
            result(s.delete_range(rpc.DeleteRangeRequest(key=k)))
        elif r < 0.72:
            result(s.delete_range(rpc.DeleteRangeRequest(key=k, range_end=b"\0")))
        elif r < 0.86:
            # put then delete, or delete then put, of one key in one revision
            p = rpc.RequestOp(request_put=rpc.PutRequest(key=k, value=b"t%d" % i))
            d = rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(
                key=k, range_end=b"\0" if k == names[-1] else k + b"\0"))
            ops = [p, d] if rnd.random() < 0.5 else [d, p]
            if k != names[-1]:
                # range k..k\0 covers only k
                result(s.txn(rpc.TxnRequest(success=ops)))
            else:
                put(s, k, b"%d" % i)
        else:
            put(s, rnd.choice(names) + b"/x", b"%d" % i)
    result(s.lease_revoke(lease_id))


def reads(s, first, last):
    """Every key at every revision first..last, and the watch history after first."""
    out = {}
    for rev in range(first, last + 1):
        r = result(s.range(rpc.RangeRequest(key=b"\0", range_end=b"\0", revision=rev)))
        out[rev] = ([mvcc.kv_from_pb(kv) for kv in r.kvs], r.count)
    history = result(s.history(first + 1, b"\0", b"\0"))
    return out, history


@pytest.mark.parametrize("seed", [1, 2])
def test_compaction_in_tiny_batches_keeps_reads_and_rows(make_store, seed):
    """Three compactions of a random history with batches of 3 log rows: reads at and
    after each compact revision are what they were, and the SQL tables hold exactly
    what compaction keeps."""
    s = make_store(store_kw=None if make_store.kind == "memory" else {"compact_batch": 3})
    rnd = random.Random(seed)
    sql = not is_memory(s)
    for step in range(3):
        random_history(s, rnd, 60, 100 + step)
        compact = rnd.randint(max(s.compact_revision + 1, s.revision - 40), s.revision - 5)
        before = reads(s, compact, s.revision)
        if sql:
            want = kept_rows(rows(s, LOG_ROWS), rows(s, CURRENT_ROWS), compact)
        assert result(s.compact(compact, True)) == s.revision
        assert s.compact_revision == compact
        assert reads(s, compact, s.revision) == before
        assert error_of(s.range(rpc.RangeRequest(key=b"a", revision=compact - 1))) == \
            errors.ErrCompacted
        if sql:
            got = rows(s, LOG_ROWS), rows(s, CURRENT_ROWS)
            assert got == want
            assert len(got[0]) < len(before[0]) + 200        # something went
            assert s.last_purge.revision == compact
            assert rows(s, "SELECT purged_revision, purge_cursor FROM etcd_compaction") \
                == [(compact, compact)]


@pytest.mark.parametrize("store_kind", SQL_KINDS)
def test_interrupted_purge_is_finished_by_a_restart_or_the_next_compaction(make_store):
    s = make_store(store_kw={"compact_batch": 4})
    random_history(s, random.Random(3), 80, 7)
    compact = s.revision - 10
    log_before, current_before = rows(s, LOG_ROWS), rows(s, CURRENT_ROWS)
    want = kept_rows(log_before, current_before, compact)
    before = reads(s, compact, s.revision)

    # The compact revision is recorded, then the purge stops after two batches (as if
    # the process died there).
    raw(s).purger.stopping = True
    result(s.compact(compact))
    settle(s)

    def two_batches(session):
        d = raw(s).dialect
        return [session.transaction("write", lambda tx: purge.purge_batch(tx, d, 4))
                for _ in range(2)]
    batches = call(raw(s).runner.call, two_batches)
    assert not any(b.done for b in batches)
    state = rows(s, "SELECT purged_revision, purge_cursor FROM etcd_compaction")
    assert state[0][0] == -1 and 1 < state[0][1] < compact
    half = rows(s, LOG_ROWS)
    assert len(want[0]) < len(half) < len(log_before)
    assert reads(s, compact, s.revision) == before         # garbage does not show
    call(raw(s).stop)

    # A restart finishes it.
    s2 = make_store(url=make_store.url, store_kw={"compact_batch": 4})
    settle(s2)
    assert (rows(s2, LOG_ROWS), rows(s2, CURRENT_ROWS)) == want
    assert reads(s2, compact, s2.revision) == before

    # So does the next compaction (after another interruption).
    random_history(s2, random.Random(4), 40, 8)
    raw(s2).purger.stopping = True
    compact2 = s2.revision - 3
    want2 = kept_rows(rows(s2, LOG_ROWS), rows(s2, CURRENT_ROWS), compact2)
    result(s2.compact(compact2))
    settle(s2)
    call(raw(s2).runner.call, lambda session: session.transaction(
        "write", lambda tx: purge.purge_batch(tx, raw(s2).dialect, 4)))
    raw(s2).purger.stopping = False
    compact3 = s2.revision - 2
    want3 = kept_rows(*want2, compact3)
    result(s2.compact(compact3, True))
    assert (rows(s2, LOG_ROWS), rows(s2, CURRENT_ROWS)) == want3


@pytest.mark.parametrize("store_kind", ["mariadb", "postgresql"])
def test_two_instances_purging_at_once_delete_each_row_once(make_store):
    a = make_store(store_kw={"compact_batch": 5})
    b = make_store(url=make_store.url, store_kw={"compact_batch": 5})
    random_history(a, random.Random(5), 150, 9)
    compact = a.revision - 5
    log_before = rows(a, LOG_ROWS)
    want = kept_rows(log_before, rows(a, CURRENT_ROWS), compact)
    raw(a).purger.stopping = True                  # record only
    result(a.compact(compact))
    settle(a)
    raw(a).purger.stopping = False
    both = call(lambda: defer.gatherResults([raw(a)._purge(), raw(b)._purge()]))
    assert (rows(a, LOG_ROWS), rows(a, CURRENT_ROWS)) == want
    assert sum(p.versions for p in both) == len(log_before) - len(want[0])
    assert all(p.revision == compact for p in both)


@pytest.mark.parametrize("store_kind", SQL_KINDS)
def test_writers_commit_between_batches(make_store):
    """While a compaction deletes (batches of 2 rows), puts are acknowledged between its
    batches: a put is bracketed by two reads that both see the purge under way (its
    cursor moved, not finished) -- impossible if it were one transaction."""
    s = make_store(store_kw={"compact_batch": 2})
    for i in range(60):
        result(s.txn(rpc.TxnRequest(success=[
            rpc.RequestOp(request_put=rpc.PutRequest(key=b"k%d" % j, value=b"%d" % i))
            for j in range(5)])))
    compact = s.revision
    done = threading.Event()
    errors_seen = []

    def compaction():
        try:
            result(s.compact(compact, True))
        except Exception as e:                     # reported below
            errors_seen.append(e)
        done.set()

    def under_way():
        purged, cursor = rows(s, "SELECT purged_revision, purge_cursor "
                                 "FROM etcd_compaction")[0]
        return purged < compact and cursor > -1

    t = threading.Thread(target=compaction)
    t.start()
    interleaved = []
    while not done.is_set():
        if under_way():
            revision = put(s, b"writer").header.revision
            if under_way():
                interleaved.append(revision)
    t.join()
    assert not errors_seen, errors_seen
    assert interleaved, "no put was acknowledged between two batches"
    assert len(rows(s, LOG_ROWS)) == 5 + (s.revision - compact)


@pytest.mark.parametrize("store_kind", SQL_KINDS)
def test_version_1_database_is_migrated_and_purged(make_store, monkeypatch):
    """A database made by a version-1 adapter (no etcd_compaction) gets the table at
    start; its first purge walks the whole log once and keeps exactly what it should."""
    from etcdadapter.store.sql import schema
    with monkeypatch.context() as m:
        m.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:1])
        m.setattr(schema, "LATEST", 1)
        old = make_store()
        random_history(old, random.Random(6), 50, 11)
        assert rows(old, "SELECT version FROM etcd_schema_version") == [(1,)]
        call(raw(old).stop)
    s = make_store(url=make_store.url, store_kw={"compact_batch": 7})
    assert rows(s, "SELECT version FROM etcd_schema_version") == [(2,)]
    assert rows(s, "SELECT purged_revision, purge_cursor FROM etcd_compaction") == \
        [(-1, -1)]
    compact = s.revision - 4
    want = kept_rows(rows(s, LOG_ROWS), rows(s, CURRENT_ROWS), compact)
    before = reads(s, compact, s.revision)
    result(s.compact(compact, True))
    assert (rows(s, LOG_ROWS), rows(s, CURRENT_ROWS)) == want
    assert reads(s, compact, s.revision) == before
