"""Group commit: the write requests that arrive while a write transaction is in flight
are committed together in the next one.

Every write of a SQL store -- Put, DeleteRange, Txn, the embedding API's replace, lease
revokes and expiries, Compact -- is an :class:`Item` queued here.  One batch at a time
runs, on a connection of its own:

1. in a pool thread: BEGIN, lock the revision counter row (so nothing else commits until
   this transaction ends), read the revisions other adapters committed since the
   replica's revision (usually none), and the lease rows the batch's requests name;
2. on the reactor thread: apply those revisions to the replica, then evaluate each
   request in order with :mod:`etcdadapter.store.mvcc` over a
   :class:`~etcdadapter.store.keyspace.PendingView` of the replica -- each request gets its
   own revision, events and result; one that fails (a missing lease, a too-long key) gets
   its error and leaves nothing behind, the others go on;
3. in the pool thread again: write every new revision's log rows and the keys' latest
   rows with multi-row statements, move the counter, COMMIT;
4. on the reactor thread: apply the new revisions to the replica (and so to the
   watchers), answer each request.

If the transaction fails, nothing of it reaches the replica: a deadlock, serialization
failure or certification conflict (Galera, Group Replication; TiDB write conflicts) reruns
the whole batch after a jittered back-off until the store's ``lock_timeout`` after its
oldest request was queued is used up (then Unavailable "request timed out"); a server that
cannot serve now (a Galera node without quorum, a read-only member) answers Unavailable
"no leader" at once; a connection
lost before COMMIT (the database rolled the transaction back: the session was ended, as
``idle_transaction_timeout`` does to a transaction left idle too long) until a new
connection cannot be made ("no leader"); waiting for the counter lock longer than the
store's ``lock_timeout``, counted from when the oldest request of the batch was queued,
answers "request timed out" at once; a connection lost during COMMIT answers "request
timed out" too (the outcome is unknown; if it did commit, the change feed brings the
revisions in like any other adapter's).  A batch is bounded by count and bytes, so it
never holds the counter lock for long.  Requests that need the lock for something else
(the purge's batches) run as :meth:`GroupCommitter.exclusive` jobs between batches.
"""

import time
from collections import deque

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from etcdadapter import errors
from etcdadapter.errors import EtcdError
from etcdadapter.store.keyspace import PendingView
from etcdadapter.store.sql.dialect import DISCONNECT, LOCK_TIMEOUT, NOT_READY, RETRY
from etcdadapter.store.sql.replica import META_LOCK, purged_through, read_revisions
from etcdadapter.store.sql.reactor_conn import NotConnected
from etcdadapter.store.sql.runner import (COMMIT, CONNECT_BACKOFF, DEFAULT_RETRY_TIMEOUT,
                                          MAX_ATTEMPTS, WRITE, Session, Tx, backoff,
                                          error_text)
from etcdadapter.store.sql.schema import CURRENT, LEASE, LOG, META

log = Logger()

MAX_ITEMS = 256                  # requests per batch
MAX_BYTES = 4 * 1024 * 1024      # request bytes per batch (one larger request goes alone)
CATCH_UP_ROWS = 2000             # more rows than this behind: let the feed catch up first
ROWS_PER_STATEMENT = 500         # rows of one multi-row INSERT
MAX_AGAIN = 10000                # attempts of one batch at most (conflicts, catching
                                 # up); the deadline ends them first
CONFLICT_LOG_INTERVAL = 10.0     # seconds between "gave up on conflicts" warnings

_LOG_COLUMNS = ["revision", "sub", "name", "create_revision", "version", "value", "lease",
                "prev_revision", "prev_sub"]
_CURRENT_COLUMNS = ["name", "revision", "sub", "version", "lease"]


class Item(object):
    """One queued write: ``evaluate(view, batch)`` runs it over the batch's view (writing
    through ``view.commit``) and returns its result; ``size`` bounds the batch; ``leases``:
    the lease IDs it may need to know about."""

    __slots__ = ("evaluate", "size", "leases", "deferred", "queued_at")

    def __init__(self, evaluate, size=0, leases=()):
        self.evaluate = evaluate
        self.size = size
        self.leases = leases
        self.deferred = defer.Deferred()
        self.queued_at = time.monotonic()


class Batch(object):
    """What a batch's items share while they are evaluated: the lease rows read under
    the lock (``leases``: id -> expiry in ms), the leases revoked so far, a compaction."""

    __slots__ = ("leases", "revoked", "compact")

    def __init__(self, leases):
        self.leases = leases
        self.revoked = set()
        self.compact = None

    def lease_exists(self, lease_id):
        return lease_id in self.leases and lease_id not in self.revoked


class _Again(Exception):
    """Run the batch again from the start (after ``wait`` fires, if set); ``error`` is
    the answer when the attempts are used up (default: request timed out)."""

    def __init__(self, wait=None, pause=0.0, error=None):
        Exception.__init__(self)
        self.wait = wait
        self.pause = pause
        self.error = error


class _Exclusive(object):
    __slots__ = ("fn", "deferred", "queued_at")

    def __init__(self, fn):
        self.fn = fn
        self.deferred = defer.Deferred()
        self.queued_at = time.monotonic()


class GroupCommitter(object):
    def __init__(self, runner, dialect, feed, clock, max_items=MAX_ITEMS,
                 max_bytes=MAX_BYTES, connection=None, catch_up=None):
        """``runner``: the pool the batches' database work runs in (on a connection of
        the committer's own), unless a ``connection`` (:class:`.reactor_conn.
        ReactorConnection`) lets the reactor do it; ``feed``: the change feed holding
        the replica; ``catch_up()``: Deferred firing once the replica holds what the
        database holds now (revision and compaction: the store's read barrier)."""
        self.connection = connection
        self.catch_up = catch_up
        self.runner = runner
        self.dialect = dialect
        self.feed = feed
        self.clock = clock
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.session = Session(runner, WRITE)
        self._queue = deque()
        self._busy = None            # the Deferred of the batch or job in flight
        self._stopping = False
        #: Counters for /metrics: batches committed, requests in them, the last size;
        #: batches run again after a conflict (deadlock, certification failure, write
        #: conflict) and after the optimistic guard found another adapter's write.
        self.batches = 0
        self.items = 0
        self.last_batch = 0
        self.conflict_retries = 0
        self.guard_retries = 0
        self._gave_up = 0
        self._gave_up_logged_at = None

    # -- queueing --------------------------------------------------------------------------
    def submit(self, item):
        """Deferred[item's result]."""
        if self._stopping:
            return defer.fail(errors.ErrStopped())
        self._queue.append(item)
        if self._busy is None:
            self._next()
        return item.deferred

    def exclusive(self, fn):
        """Deferred[fn(tx)], run alone in a write transaction (retried like any) on the
        committer's connection, between batches."""
        if self._stopping:
            return defer.fail(errors.ErrStopped())
        job = _Exclusive(fn)
        self._queue.append(job)
        if self._busy is None:
            self._next()
        return job.deferred

    def stop(self):
        """Fail what is queued; Deferred firing when the batch in flight is done."""
        self._stopping = True
        queue, self._queue = self._queue, deque()
        for item in queue:
            item.deferred.errback(errors.ErrStopped())
        if self._busy is None:
            return defer.succeed(None)
        done = defer.Deferred()
        self._busy.addBoth(lambda r: done.callback(None) or r)
        return done

    def _next(self):
        if self._busy is not None or not self._queue:
            return
        if isinstance(self._queue[0], _Exclusive):
            job = self._queue.popleft()
            d = self.runner.call(lambda _s: self._exclusive(job), pool=COMMIT)
            d.addBoth(self._fire, job)
        else:
            items = [self._queue.popleft()]
            size = items[0].size
            queue = self._queue
            while (queue and len(items) < self.max_items
                   and not isinstance(queue[0], _Exclusive)
                   and size + queue[0].size <= self.max_bytes):
                item = queue.popleft()
                size += item.size
                items.append(item)
            d = self._run(items)
        self._busy = d
        d.addBoth(self._done)

    def _exclusive(self, job):
        s = self.session
        s.queued_at = job.queued_at          # the lock-wait bound counts from there
        return s.transaction("write", job.fn)

    @staticmethod
    def _fire(result, job):
        if isinstance(result, Failure):
            job.deferred.errback(result)
        else:
            job.deferred.callback(result)

    def _done(self, _):
        self._busy = None
        if self._queue:
            self._next()

    # -- one batch -----------------------------------------------------------------------
    def _deadline(self, since):
        """Until when (monotonic) a batch whose oldest request was queued at ``since``
        is run again after conflicts: the write's lock_timeout, the bound of how long
        a write may take waiting for others."""
        return since + (self.dialect.lock_timeout or DEFAULT_RETRY_TIMEOUT)

    @defer.inlineCallbacks
    def _run(self, items):
        attempt = 0
        deadline = self._deadline(min(item.queued_at for item in items))
        while True:
            try:
                yield self._attempt(items, attempt)
                return
            except _Again as again:
                attempt += 1
                if attempt >= MAX_AGAIN or time.monotonic() >= deadline:
                    log.warn("database {db}: a write batch could not run after {n} "
                             "attempts", db=self.dialect.describe(), n=attempt)
                    _fail_all(items, again.error or errors.ErrTimeout())
                    return
                if again.wait is not None:
                    try:
                        yield again.wait
                    except Exception:
                        pass
                if again.pause:
                    yield _sleep(self.clock, again.pause)
                if self._stopping:
                    _fail_all(items, errors.ErrStopped())
                    return
            except EtcdError:
                _fail_all(items, _as_error(Failure()))
                return
            except Exception:
                f = Failure()
                log.failure("write batch failed", f)
                _fail_all(items, _as_error(f))
                return

    @defer.inlineCallbacks
    def _attempt(self, items, attempt):
        lease_ids = set()
        for item in items:
            lease_ids.update(item.leases)
        known = self.feed.delivered
        since = min(item.queued_at for item in items)
        if self.connection is not None and not lease_ids:
            yield self._optimistic(items, attempt, since)
            return
        try:
            if self.connection is not None:
                begun = yield self._begin_on_reactor(known, sorted(lease_ids), attempt,
                                                     since)
            else:
                begun = yield self.runner.call(
                    lambda _s: self._begin(known, sorted(lease_ids), attempt, since),
                    pool=COMMIT)
        except _Behind:
            raise _Again(wait=self.feed.reload())
        except _FarBehind as e:
            raise _Again(wait=self.feed.wait(e.revision))
        except _Retry as e:
            raise _Again(pause=e.pause)
        tx, revision, compact, revisions, lease_rows = begun
        try:
            feed = self.feed
            feed.caught_up(revisions)
            feed.learn(revision, compact)
            if feed.delivered != revision:
                raise AssertionError("replica at %d after catching up to %d"
                                     % (feed.delivered, revision))
            batch, view, results = self._evaluate(items, lease_rows)
            statements = self._statements(view, batch)
        except BaseException:
            if self.connection is not None:
                yield self._rollback_on_reactor()
            else:
                yield self.runner.call(lambda _s: self._abort(tx), pool=COMMIT)
            raise
        try:
            if self.connection is not None:
                yield self._finish_on_reactor(statements, attempt, since)
            else:
                yield self.runner.call(
                    lambda _s: self._finish(tx, statements, attempt, since), pool=COMMIT)
        except _Retry as e:
            raise _Again(pause=e.pause)
        self._committed(items, batch, view, results)

    def _check_keys(self, events):
        d = self.dialect
        limit = d.max_key_bytes
        if limit is not None:
            for ev in events:
                if len(ev.kv.key) > limit:
                    raise d.key_too_long(len(ev.kv.key))

    def _evaluate(self, items, lease_rows):
        """Each item over one PendingView of the replica: (batch, view, [(ok, result or
        error)])."""
        batch = Batch(lease_rows)
        view = PendingView(self.feed.keyspace, batch.lease_exists, self._check_keys)
        results = []
        for item in items:
            try:
                results.append((True, item.evaluate(view, batch)))
            except EtcdError as e:
                results.append((False, e))
            except Exception:
                f = Failure()
                log.failure("write request failed", f)
                results.append((False, _as_error(f)))
        return batch, view, results

    def _committed(self, items, batch, view, results):
        self.runner.available(writes=True)
        self.batches += 1
        self.items += len(items)
        self.last_batch = len(items)
        self.feed.committed(view.changes)
        if batch.compact is not None:
            self.feed.learn(self.feed.delivered, batch.compact)
        for item, (ok, value) in zip(items, results):
            if ok:
                item.deferred.callback(value)
            else:
                item.deferred.errback(value)

    # -- one round trip: evaluated first, committed if nothing else was (no leases) -------
    @defer.inlineCallbacks
    def _optimistic(self, items, attempt, since):
        """The batch evaluated against the replica as it is, then sent in one script:
        BEGIN, a guarded move of the counter -- it fails (the column is NOT NULL) unless
        the counter still holds the replica's revision and compact revision, which also
        takes the counter lock --, the rows, COMMIT.  When another adapter committed
        meanwhile, the guard fails, nothing is written, and the batch runs again once
        the change feed has brought those revisions in.  Batches that need lease rows
        (leases are not in the replica) take the locking path."""
        d = self.dialect
        c = self.connection
        feed = self.feed
        revision = feed.delivered
        compact = feed.keyspace.compact_revision
        batch, view, results = self._evaluate(items, {})
        wait = yield self._connected_bounded(since)
        statements = [(stmt, None) for stmt in d.begin_write_bounded(wait, c.settings)]
        if view.changes or batch.compact is not None:
            top = view.changes[-1].revision if view.changes else revision
            statements.append(
                ("UPDATE " + META + " SET revision = CASE WHEN revision = %s AND "
                 "compact_revision = %s THEN %s END WHERE id = 1",
                 (revision, compact, top)))
            statements.extend((stmt, None) for stmt in d.after_counter_lock)
            statements.extend(self._statements(view, batch, counter=False))
        statements.append((d.commit, None))
        try:
            yield c.script(statements)
        except NotConnected:
            # Nothing was sent (the server had closed the connection): connect again.
            raise _Again(pause=0.05, error=errors.ErrNoLeader())
        except Exception as e:
            if d.guard_failed(e):
                # Another adapter moved the counter (or compacted): nothing was written.
                self.guard_retries += 1
                yield self._rollback_on_reactor()
                raise _Again(wait=self.catch_up())
            if self._kind(e) == DISCONNECT and not getattr(e, "answered", False):
                # No answer: the COMMIT may have been run, its outcome is unknown.
                c.close_connection()
                log.warn("database {db}: connection lost during a write: {err}",
                         db=d.describe(), err=error_text(e))
                self.runner.unavailable("connection lost during a write", e)
                raise errors.ErrTimeout()
            try:
                yield self._failed_on_reactor(e, attempt, since)
            except _Retry as r:
                raise _Again(pause=r.pause)
        self._committed(items, batch, view, results)

    def _lock_wait(self, since):
        """Seconds a batch whose oldest request was queued at ``since`` may still wait
        for locks (None: no bound); answers "request timed out" once there are none."""
        limit = self.dialect.lock_timeout
        if not limit:
            return None
        wait = since + limit - time.monotonic()
        if wait <= 0:
            raise self.runner.lock_timed_out(since)
        return wait

    @defer.inlineCallbacks
    def _connected_bounded(self, since):
        """Connect if needed; the lock-wait bound left (None: none)."""
        c = self.connection
        wait = self._lock_wait(since)
        if not c.connected:
            runner = self.runner
            if time.monotonic() < runner.connect_blocked_until:
                raise errors.ErrNoLeader()
            try:
                yield c.connect()
            except Exception as e:
                runner.connect_blocked_until = time.monotonic() + CONNECT_BACKOFF
                runner.unavailable("cannot connect", e)
                raise errors.ErrNoLeader()
            runner.connect_blocked_until = 0.0
        return wait

    # -- database work on the reactor (MySQL, PostgreSQL: .reactor_conn) -------------------
    @defer.inlineCallbacks
    def _begin_on_reactor(self, known, lease_ids, attempt, since):
        """:meth:`_begin` on the reactor's own connection.  Revisions other adapters
        committed since ``known`` are not read here: the change feed brings them in, and
        the batch runs again."""
        d = self.dialect
        c = self.connection
        wait = yield self._connected_bounded(since)
        try:
            results = yield c.script(
                [(stmt, None) for stmt in d.begin_write_bounded(wait, c.settings)]
                + [(META_LOCK + d.counter_lock, None)])
            revision, compact = [r for r in results if r is not None][-1][0]
            if revision > known:
                yield self._rollback_on_reactor()
                raise _FarBehind(revision)
            leases = {}
            if lease_ids:
                rows = (yield c.script([("SELECT id, expiry FROM " + LEASE
                                         + " WHERE id IN (%s)"
                                         % ", ".join(["%s"] * len(lease_ids))
                                         + d.for_update, lease_ids)]))[0]
                leases = {r[0]: r[1] for r in rows}
        except (_FarBehind, EtcdError):
            raise
        except Exception as e:
            yield self._failed_on_reactor(e, attempt, since)
        return None, revision, compact, [], leases

    @defer.inlineCallbacks
    def _finish_on_reactor(self, statements, attempt, since):
        d = self.dialect
        c = self.connection
        try:
            if statements:
                yield c.script(statements)
        except Exception as e:
            yield self._failed_on_reactor(e, attempt, since)
        try:
            yield c.script([(d.commit, None)])
        except Exception as e:
            kind = self._kind(e)
            if kind == DISCONNECT:
                log.warn("database {db}: connection lost during COMMIT: {err}",
                         db=d.describe(), err=error_text(e))
                self.runner.unavailable("connection lost during COMMIT", e)
                raise errors.ErrTimeout()
            if kind == NOT_READY:
                # Refused at COMMIT: the outcome may be unknown (a TiKV timeout).
                yield self._rollback_on_reactor()
                self.runner.unavailable("not ready at COMMIT", e, writes=True)
                raise errors.ErrTimeout()
            yield self._failed_on_reactor(e, attempt, since)

    @defer.inlineCallbacks
    def _failed_on_reactor(self, e, attempt, since):
        """As :meth:`_failed`, for the reactor's connection (always raises)."""
        kind = self._kind(e)
        if kind == DISCONNECT:
            self.connection.close_connection()
            if attempt + 1 < MAX_ATTEMPTS:
                raise _Retry(0.0)
            self.runner.unavailable("connection lost", e)
            raise errors.ErrNoLeader()
        yield self._rollback_on_reactor()
        self._not_retried(e, kind, attempt, since)

    @defer.inlineCallbacks
    def _rollback_on_reactor(self):
        c = self.connection
        if not c.connected:
            return
        try:
            yield c.script([(self.dialect.rollback, None)])
        except Exception:
            c.close_connection()

    def _kind(self, e):
        if isinstance(e, NotConnected):
            return DISCONNECT
        return self.dialect.classify(e)

    # -- database work (pool thread) --------------------------------------------------------
    def _begin(self, known, lease_ids, attempt, since):
        """BEGIN, lock the counter, read what the replica misses and the lease rows.
        Returns (tx, revision, compact, revisions, lease rows); the transaction stays
        open (and SQLite's process write lock held) for :meth:`_finish`/:meth:`_abort`.
        Lock waits end ``lock_timeout`` after ``since`` (when the batch's oldest request
        was queued)."""
        d = self.dialect
        s = self.session
        wait = self._lock_wait(since)
        lock = d.write_lock
        if lock is not None and not lock.acquire(timeout=-1 if wait is None else wait):
            raise self.runner.lock_timed_out(since)
        reused = s.conn is not None
        try:
            conn = s._connection()
            tx = Tx(conn, d, s)
            try:
                # BEGIN (and the session's bounds) and the counter lock: one round trip.
                results = tx.script([(stmt, None) for stmt in
                                     d.begin_write_bounded(wait, s.settings)]
                                    + [(META_LOCK + d.counter_lock, None)])
                revision, compact = [r for r in results if r is not None][-1][0]
                revisions = []
                if revision > known:
                    if compact > known and purged_through(tx) > known:
                        raise _Behind()
                    revisions, more = read_revisions(tx, known, revision, CATCH_UP_ROWS)
                    if more:
                        raise _FarBehind(revision)
                leases = {}
                if lease_ids:
                    rows = tx.all("SELECT id, expiry FROM " + LEASE + " WHERE id IN (%s)"
                                  % ", ".join(["%s"] * len(lease_ids)) + d.for_update,
                                  lease_ids)
                    leases = {r[0]: r[1] for r in rows}
            except (_Behind, _FarBehind):
                s._rollback(conn)
                raise
            except Exception as e:
                self._failed(conn, e, reused, attempt, since)
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        return tx, revision, compact, revisions, leases

    def _failed(self, conn, e, reused, attempt, since):
        """A statement failed (pool thread): roll back and raise what the batch does."""
        d = self.dialect
        s = self.session
        kind = d.classify(e)
        if kind == DISCONNECT:
            # Before COMMIT: the database rolled the transaction back.  A stale pooled
            # connection, or a session the database ended: run the batch again (it
            # connects anew, and fails fast with "no leader" if it cannot).
            s.drop()
            if attempt + 1 < MAX_ATTEMPTS:
                raise _Retry(0.0)
            self.runner.unavailable("connection lost", e)
            raise errors.ErrNoLeader()
        s._rollback(conn)
        self._not_retried(e, kind, attempt, since)

    def _not_retried(self, e, kind, attempt, since):
        """After a failed statement (rolled back): raise _Retry (a conflict, with time
        left), or what the batch answers."""
        if kind == LOCK_TIMEOUT:
            # Another transaction holds the lock: waiting again would take as long again.
            raise self.runner.lock_timed_out(since)
        if kind == NOT_READY:
            # The node answers but cannot serve (no quorum, read-only): Unavailable now;
            # the client tries another adapter.  Logged once (store-unavailable).
            self.runner.unavailable("not ready", e, writes=True)
            raise errors.ErrNoLeader()
        if kind == RETRY:
            # Rolled back by a conflict (a deadlock, Galera's certification, a TiDB
            # write conflict): run again after a jittered back-off, until the deadline.
            pause = backoff(attempt)
            if time.monotonic() + pause < self._deadline(since):
                self.conflict_retries += 1
                raise _Retry(pause)
            self._log_gave_up(attempt + 1, e)
            raise errors.ErrTimeout()
        raise e

    def _log_gave_up(self, attempts, e):
        now = time.monotonic()
        self._gave_up += 1
        if (self._gave_up_logged_at is not None
                and now - self._gave_up_logged_at < CONFLICT_LOG_INTERVAL):
            return
        self._gave_up_logged_at = now
        count, self._gave_up = self._gave_up, 0
        log.warn("database {db}: {count} write batch(es) still conflicting at their "
                 "deadline (this one after {n} attempts: {err}): answered 'request timed "
                 "out'", db=self.dialect.describe(), count=count, n=attempts,
                 err=error_text(e))

    def _finish(self, tx, statements, attempt, since):
        d = self.dialect
        s = self.session
        conn = s.conn
        try:
            try:
                tx.script(statements)
            except Exception as e:
                self._failed(conn, e, False, attempt, since)
            try:
                tx.run(d.commit)
            except Exception as e:
                if d.classify(e) == DISCONNECT:
                    s.drop()
                    log.warn("database {db}: connection lost during COMMIT: {err}",
                             db=d.describe(), err=error_text(e))
                    self.runner.unavailable("connection lost during COMMIT", e)
                    raise errors.ErrTimeout()
                self._failed(conn, e, False, attempt, since)
        finally:
            if d.write_lock is not None:
                d.write_lock.release()

    def _abort(self, tx):
        d = self.dialect
        try:
            if self.session.conn is not None:
                self.session._rollback(self.session.conn)
        finally:
            if d.write_lock is not None:
                d.write_lock.release()

    # -- statements ------------------------------------------------------------------------
    def _statements(self, view, batch, counter=True):
        """The statements writing a batch's revisions (log rows, the keys' latest rows,
        the counter unless ``counter`` is false), the leases it revoked and a
        compaction."""
        out = []
        changes = view.changes
        if changes:
            latest_sub = view.base.ks.latest_sub
            written = {}              # key -> (revision, sub) of its latest row so far
            log_rows = []
            current = {}
            for change in changes:
                rev = change.revision
                mine = {}
                for sub, ev in enumerate(change.events):
                    kv = ev.kv
                    key = kv.key
                    prev = ev.prev_kv
                    if prev is None:
                        prev_rev = prev_sub = 0
                    else:
                        # prev_kv is the key at rev - 1: its latest row before this
                        # revision, written by this batch or already in the replica.
                        prev_rev = prev.mod_revision
                        w = written.get(key)
                        if w is not None and w[0] == prev_rev:
                            prev_sub = w[1]
                        else:
                            prev_sub = latest_sub.get(key, 0)
                    log_rows.append((rev, sub, key, kv.create_revision, kv.version,
                                     kv.value, kv.lease, prev_rev, prev_sub))
                    mine[key] = sub
                    current[key] = (key, rev, sub, kv.version, kv.lease)
                for key, sub in mine.items():
                    written[key] = (rev, sub)
            d = self.dialect
            out.extend(_multi_row(
                "INSERT INTO %s (%s) VALUES %%s" % (LOG, ", ".join(_LOG_COLUMNS)),
                len(_LOG_COLUMNS), log_rows))
            upsert = d.upsert(CURRENT, _CURRENT_COLUMNS, "name")
            out.extend(_multi_row(_values_slot(upsert, len(_CURRENT_COLUMNS)),
                                  len(_CURRENT_COLUMNS), list(current.values())))
            if counter:
                out.append(("UPDATE " + META + " SET revision = %s WHERE id = 1",
                            (changes[-1].revision,)))
        if batch.revoked:
            ids = sorted(batch.revoked)
            out.append(("DELETE FROM " + LEASE + " WHERE id IN (%s)"
                        % ", ".join(["%s"] * len(ids)), ids))
        if batch.compact is not None:
            out.append(("UPDATE " + META + " SET compact_revision = %s WHERE id = 1",
                        (batch.compact,)))
        return out


class _Behind(Exception):
    """The purge walked past the replica: it must be loaded afresh."""


class _FarBehind(Exception):
    """Many revisions behind: the feed catches up before the batch takes the lock."""

    def __init__(self, revision):
        Exception.__init__(self, revision)
        self.revision = revision


class _Retry(Exception):
    def __init__(self, pause):
        Exception.__init__(self, pause)
        self.pause = pause


def _values_slot(sql, ncols):
    """``sql`` (a one-row INSERT) with its VALUES group replaced by ``%s``."""
    group = "(" + ", ".join(["%s"] * ncols) + ")"
    i = sql.index("VALUES " + group)
    return sql[:i] + "VALUES %s" + sql[i + len("VALUES " + group):].replace("%", "%%")


def _multi_row(template, ncols, rows):
    """(SQL, parameters) statements inserting ``rows`` through ``template``, whose
    ``%s`` (the only %-slot left; others are %%-escaped) takes the VALUES groups."""
    group = "(" + ", ".join(["%s"] * ncols) + ")"
    out = []
    for i in range(0, len(rows), ROWS_PER_STATEMENT):
        chunk = rows[i:i + ROWS_PER_STATEMENT]
        params = []
        for row in chunk:
            params.extend(row)
        out.append((template % ", ".join([group] * len(chunk)), params))
    return out


def _fail_all(items, error):
    for item in items:
        if not item.deferred.called:
            item.deferred.errback(error)


def _as_error(failure):
    # Anything but an etcd error: the outcome may be unknown (the batch may have been
    # sent): "request timed out", etcd's answer for exactly that.
    e = failure.value
    if isinstance(e, EtcdError):
        return e
    return errors.ErrTimeout()


def _sleep(clock, seconds):
    d = defer.Deferred()
    clock.callLater(seconds, d.callback, None)
    return d
