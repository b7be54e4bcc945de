"""The SQL store: one implementation of the Store contract for every SQL engine.

Every adapter is an etcd-like member of the database: the database's log is the
replicated log, and each adapter keeps a replica of it in memory -- the same
:class:`~etcdadapter.store.keyspace.Keyspace` the memory store uses -- kept current by the
change feed (:mod:`.feed`).

* Reads (Range, read-only Txn, lease key lists) first pass the read barrier
  (:mod:`.barrier`): the database's current revision, read by one cheap query shared by
  every read that arrived while the previous one was in flight; once the replica has
  applied that revision the read is answered from memory with
  :mod:`etcdadapter.store.mvcc`.  So a read sees every write acknowledged before it
  arrived, by any adapter.  ``serializable`` Ranges skip the barrier (etcd's
  member-local reads).  Watch history is the replica's log.
* Writes (Put, DeleteRange, Txn, lease revoke and expiry, Compact) are group-committed
  (:mod:`.group_commit`): the requests that arrive while a write transaction is in flight
  go together into the next one, which locks the revision counter row once, evaluates
  each request with the very same mvcc code against the replica, writes all their rows
  with multi-row statements and commits; only then do they reach the replica and the
  watchers.  Revisions are committed in order, one per write request, with nothing
  guessed.
* Compact records the compact revision in such a transaction (every adapter's reads below
  it fail with ErrCompacted from then on), then deletes the rows it made garbage in small
  batches (:mod:`.purge`), in the background unless the request asked for ``physical``.

Leases are rows (ID, granted TTL, expiry in wall-clock ms); grant and keep-alive touch only
their row (no revision); revoke and expiry delete the attached keys (the replica's lease
index) in a write batch, after re-reading the lease under a row lock so that with several
adapters each lease is revoked exactly once.

The store's Deferreds fire on the reactor thread; the replica lives there too.
"""

import time

from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python.failure import Failure

from etcdadapter import errors
from etcdadapter.errors import EtcdError
from etcdadapter.store import lease as lease_rules
from etcdadapter.store import mvcc
from etcdadapter.store.base import ANY, LeaseTTL, Store, StoreStatus
from etcdadapter.store.sql import replica, schema
from etcdadapter.store.sql.barrier import ReadBarrier
from etcdadapter.store.sql.dialect import DUPLICATE
from etcdadapter.store.sql.feed import ChangeFeed
from etcdadapter.store.sql.following import (ErrMigrationInProgress, MigrationMark,
                                             read_mark)
from etcdadapter.store.sql.group_commit import MAX_BYTES, MAX_ITEMS, GroupCommitter, Item
from etcdadapter.store.sql.notify import Listener
from etcdadapter.store.sql.purge import BATCH, Purger
from etcdadapter.store.sql.runner import READ, Runner
from etcdadapter.store.sql.schema import AUTH, LEASE

log = Logger()

DEFAULT_POLL_INTERVAL = 0.04      # seconds between polls for other instances' writes
DEFAULT_POOL_SIZE = 4             # read threads (= connections)
# Write threads (= connections): the write batches (one at a time, on a connection of
# their own), lease grants and keep-alives, auth saves, the purge.
DEFAULT_WRITE_POOL_SIZE = 2
POLL_BATCH = 500                  # log rows per poll
# Seconds a write batch's statement may go unanswered on the reactor's connection (beyond
# the lock timeout) before the database counts as hung: the connection is dropped.
WRITE_TIMEOUT = 30.0


class _AuthSaveConflict(Exception):
    """Another adapter saved the first auth state at the same moment: internal control
    flow, never a client's error (the runner rolls the transaction back and passes it on;
    auth_save answers False)."""


def _txn_leases(request, out):
    for ops in (request.success, request.failure):
        for op in ops:
            which = op.WhichOneof("request")
            if which == "request_put":
                if op.request_put.lease:
                    out.add(op.request_put.lease)
            elif which == "request_txn":
                _txn_leases(op.request_txn, out)
    return out


class SQLStore(Store):
    def __init__(self, dialect, poll_interval=DEFAULT_POLL_INTERVAL,
                 pool_size=DEFAULT_POOL_SIZE, initial_revision=None, clock=None,
                 reactor=None, poll_batch=POLL_BATCH, compact_batch=BATCH,
                 write_pool_size=DEFAULT_WRITE_POOL_SIZE, max_batch=MAX_ITEMS,
                 max_batch_bytes=MAX_BYTES):
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.clock = clock if clock is not None else reactor
        self.dialect = dialect
        #: The first revision of a database this store creates (not used otherwise):
        #: the wall clock in milliseconds by default, so that a recreated database
        #: starts above what clients saw before (unless the old one averaged more than
        #: a write per millisecond; restarts keep the revision in the database).
        self.initial_revision = initial_revision
        self.poll_batch = poll_batch
        #: Two pools: reads (polls, the barrier when it needs a thread, lease queries)
        #: never queue behind writes waiting for the revision counter's lock.
        self.runner = Runner(dialect, pool_size, reactor, write_pool_size)
        self._revision_reader = dialect.revision_reader(reactor)
        self.feed = ChangeFeed(reactor, self._poll, poll_interval, self._load,
                               probe=self._probe if self._revision_reader else None)
        self.barrier = ReadBarrier(self._database_revision, reactor, self._barrier_passed,
                                   self._barrier_failed)
        #: The write batches' connection when the reactor can drive it (no thread);
        #: None: the committer uses its pool thread.
        self.write_connection = dialect.reactor_connection(
            reactor, (dialect.lock_timeout or 0) + WRITE_TIMEOUT)
        self.committer = GroupCommitter(self.runner, dialect, self.feed, self.clock,
                                        max_batch, max_batch_bytes,
                                        connection=self.write_connection,
                                        catch_up=self._linearized)
        self.purger = Purger(self.committer, dialect, compact_batch, on_done=self._purged)
        #: What the last purge pass of this process did (:class:`~etcdadapter.store.base.Purged`).
        self.last_purge = None
        self.listener = None
        if dialect.can_notify:
            self.listener = Listener(dialect, reactor, self.feed, poll_interval)
        self._inflight = set()
        self._started = False
        #: ``etcd-adapter migrate`` following etcd into this database: writes refused.
        self.migration = MigrationMark(lambda: self.runner.call(
            lambda s: s.transaction("ddl", read_mark), pool=READ), reactor)

    def __repr__(self):
        return "<SQLStore %s>" % (self.dialect.describe(),)

    @property
    def keyspace(self):
        """The replica (None before start)."""
        return self.feed.keyspace

    @property
    def revision(self):
        ks = self.feed.keyspace
        return ks.revision if ks is not None else 0

    @property
    def compact_revision(self):
        ks = self.feed.keyspace
        return ks.compact_revision if ks is not None else -1

    @property
    def available(self):
        """False while the database cannot be reached or refuses writes (between the
        store-unavailable and store-available events); /metrics'
        etcd_server_has_leader follows it."""
        return self.runner.down_since is None

    # -- lifecycle ------------------------------------------------------------------------
    @defer.inlineCallbacks
    def start(self):
        self.runner.start()
        initial = self.initial_revision
        if initial is None:
            initial = int(time.time() * 1000)
        started = time.monotonic()
        try:
            yield self.runner.call(schema.migrate, self.dialect, initial)
            keyspace = yield self._load()
        except BaseException:
            self.runner.stop()
            raise
        try:
            yield self.migration.start()
        except BaseException:
            self.runner.stop()
            raise
        self.feed.start(keyspace)
        if self.listener is not None:
            self.listener.start()
        self._started = True
        log.info("SQL store {db}: revision {rev}, compacted to {c}; replica of {keys} keys "
                 "({size} bytes) loaded in {s:.3f}s", db=self.dialect.describe(),
                 rev=keyspace.revision, c=keyspace.compact_revision,
                 keys=len(keyspace.keys), size=keyspace.size(),
                 s=round(time.monotonic() - started, 3))
        # Finish a purge that a crash or a stop interrupted (one short transaction if
        # there is none).
        self._purge().addErrback(lambda _: None)

    @defer.inlineCallbacks
    def stop(self):
        if not self._started:
            return
        self._started = False
        self.purger.stopping = True
        self.migration.stop()
        if self.listener is not None:
            self.listener.stop()
        yield self.drain()
        yield self.committer.stop()
        yield self.feed.stop()
        if self._revision_reader is not None:
            self._revision_reader.close()
        if self.write_connection is not None:
            self.write_connection.close()
        self.runner.stop()

    def drain(self):
        """Deferred firing once every operation started so far has finished (tests use it
        to wait for background work such as a lease expiry pass)."""
        if not self._inflight:
            return defer.succeed(None)
        d = defer.DeferredList(list(self._inflight))
        d.addCallback(lambda _: self.drain())
        return d

    def _track(self, d):
        """Count ``d`` as in flight until it fires (without touching its result)."""
        signal = defer.Deferred()
        self._inflight.add(signal)

        def done(result):
            self._inflight.discard(signal)
            signal.callback(None)
            return result
        d.addBoth(done)
        return d

    def _load(self):
        """Deferred[Keyspace]: the database, read in one snapshot (a pool thread)."""
        return self.runner.call(lambda s: s.transaction("read", replica.load), pool=READ)

    # -- plumbing -------------------------------------------------------------------------
    def _call(self, mode, fn):
        if not self._started:
            return defer.fail(errors.ErrStopped())
        if mode == "read":
            return self.runner.call(lambda s: s.transaction(mode, fn), pool=READ)
        return self.runner.call(lambda s: s.transaction(mode, fn))

    def _tx(self, mode, fn):
        """Deferred[fn(tx)] in one transaction of the given mode."""
        return self._track(self._call(mode, fn))

    def _database_revision(self):
        # One statement, no transaction: it sees every commit made before it.  On the
        # reactor thread where the dialect can (no trip through the pool), else a pool
        # thread.
        reader = self._revision_reader
        if reader is not None:
            return reader.read().addCallbacks(self._answered,
                                              lambda _f: self._pool_revision())
        return self._pool_revision()

    def _answered(self, result):
        # The database serves again (after a node without quorum answered "not ready",
        # say): the runner logs that once.
        self.runner.available()
        return result

    def _pool_revision(self):
        return self.runner.call(lambda s: s.transaction("ddl", replica.read_meta),
                                pool=READ)

    def _linearized(self):
        """Deferred firing once the replica holds every revision committed (by any
        adapter) before this call."""
        return self._read(None)

    def _read(self, fn, serializable=False):
        """Deferred[fn(replica view)] once the replica is current (at once if
        ``serializable``); ``fn`` None: Deferred[None]."""
        if not self._started:
            return defer.fail(errors.ErrStopped())
        if serializable:
            try:
                return defer.succeed(fn(self.feed.keyspace.view))
            except EtcdError as e:
                return defer.fail(e)
        d = defer.Deferred()
        self.barrier.wait((fn, d))
        return d

    def _barrier_passed(self, result, waiters):
        revision, compact = result
        feed = self.feed
        feed.learn(revision, compact)
        if revision <= feed.delivered:
            self._answer(waiters)
        else:
            # One wait (and at most one poll) for all of them.
            feed.wait(revision).addCallbacks(
                lambda _: self._answer(waiters), self._barrier_failed,
                errbackArgs=(waiters,))

    def _answer(self, waiters):
        """Answer the reads of one barrier from the replica, in one pass."""
        feed = self.feed
        for fn, d in waiters:
            if fn is None:
                d.callback(None)
                continue
            try:
                answer = fn(feed.keyspace.view)
            except Exception:
                d.errback(Failure())
            else:
                d.callback(answer)

    @staticmethod
    def _barrier_failed(failure, waiters):
        for _fn, d in waiters:
            d.errback(failure)

    def _write(self, evaluate, size=0, leases=()):
        """Deferred[evaluate(view, batch)] once its batch committed."""
        if not self._started:
            return defer.fail(errors.ErrStopped())
        if self.migration.active:
            return defer.fail(ErrMigrationInProgress())
        return self._track(self.committer.submit(Item(evaluate, size, leases)))

    def _now_ms(self):
        return int(round(self.clock.seconds() * 1000))

    # -- KV -------------------------------------------------------------------------------
    def range(self, request):
        return self._read(lambda view: mvcc.range_(view, request), request.serializable)

    def put(self, request):
        return self._write(lambda view, batch: mvcc.put(view, request)[0],
                           len(request.key) + len(request.value),
                           (request.lease,) if request.lease else ())

    def delete_range(self, request):
        return self._write(lambda view, batch: mvcc.delete_range(view, request)[0],
                           len(request.key) + len(request.range_end))

    def txn(self, request):
        if mvcc.txn_is_read_only(request):
            return self._read(lambda view: mvcc.txn(view, request)[0])
        return self._write(lambda view, batch: mvcc.txn(view, request)[0],
                           request.ByteSize(), sorted(_txn_leases(request, set())))

    def replace_prefix(self, prefix, items):
        size = sum(len(k) + len(v) for k, v in items.items())
        return self._write(lambda view, batch: mvcc.replace_prefix(view, prefix, items),
                           size)

    @defer.inlineCallbacks
    def compact(self, revision, physical=False):
        def evaluate(view, batch):
            if batch.compact is not None and revision <= batch.compact:
                raise errors.ErrCompacted()
            mvcc.check_compact(view, revision)
            batch.compact = revision
            return view.revision
        current = yield self._write(evaluate)
        purged = self._purge()
        if physical:
            yield purged
        else:
            purged.addErrback(lambda _: None)        # logged by the purger
        return current

    def _purge(self):
        """Deferred[Purged] of a purge pass started after now."""
        if not self._started:
            return defer.fail(errors.ErrStopped())
        return self._track(self.purger.request())

    def _purged(self, purged):
        self.last_purge = purged

    def status(self):
        d = self.dialect

        def body(tx):
            rev, compact = replica.read_meta(tx)
            size, in_use = d.db_size(tx, schema.TABLES)
            return StoreStatus(rev, compact, size, in_use)
        return self._tx("read", body)

    def hash_kv(self, revision):
        # Hashing walks every version of the replica: in a thread, over a snapshot taken
        # once the replica is current.
        return self._linearized().addCallback(
            lambda _: threads.deferToThread(mvcc.hash_kv, self.feed.keyspace.frozen(),
                                            revision))

    def stats(self):
        """Figures for /metrics: (name, kind, help, value) tuples."""
        ks = self.feed.keyspace
        c = self.committer
        return [
            ("etcd_adapter_replica_revision", "gauge",
             "The revision this adapter's replica has applied.", ks.revision if ks else 0),
            ("etcd_adapter_replica_lag_revisions", "gauge",
             "Revisions the database was seen at that the replica has not applied yet.",
             max(self.feed.seen - ks.revision, 0) if ks else 0),
            ("etcd_adapter_replica_keys", "gauge",
             "Keys in the replica (deleted ones kept for history included).",
             len(ks.keys) if ks else 0),
            ("etcd_adapter_replica_bytes", "gauge",
             "Memory the replica takes, as its size accounting estimates.",
             ks.size() if ks else 0),
            ("etcd_adapter_replica_reloads", "counter",
             "Times the replica was loaded afresh after falling behind a purge.",
             self.feed.reloads),
            ("etcd_adapter_write_batches", "counter",
             "Write transactions committed (group commit).", c.batches),
            ("etcd_adapter_write_batch_requests", "counter",
             "Write requests in those transactions.", c.items),
            ("etcd_adapter_write_batch_last_size", "gauge",
             "Write requests in the last committed transaction.", c.last_batch),
            ("etcd_adapter_write_conflict_retries", "counter",
             "Write transactions run again after the database rolled them back for a "
             "conflict (deadlock, Galera or Group Replication certification, TiDB write "
             "conflict).", c.conflict_retries + self.runner.conflict_retries),
            ("etcd_adapter_write_guard_retries", "counter",
             "Optimistic write batches run again because another adapter wrote first.",
             c.guard_retries),
            ("etcd_adapter_read_barrier_queries", "counter",
             "Revision queries of the read barrier.", self.barrier.queries),
            ("etcd_adapter_read_barrier_reads", "counter",
             "Reads served by those queries.", self.barrier.reads),
            ("etcd_adapter_sql_statements", "counter",
             "SQL statements sent to the database.",
             self.runner.statements()
             + (self.write_connection.statements if self.write_connection else 0)
             + (self._revision_reader.queries if self._revision_reader else 0)),
        ]

    # -- change feed ----------------------------------------------------------------------
    def subscribe(self, callback, on_lost=None):
        """See :meth:`.feed.ChangeFeed.subscribe` (``on_lost``: revisions another
        instance compacted before this one's feed could read them)."""
        return self.feed.subscribe(callback, on_lost)

    def _probe(self):
        """(revision, compact revision) read on the reactor's connection, or None while
        it is busy or down: a timed poll then runs as usual (and finds out)."""
        reader = self._revision_reader
        if not reader.connected and self.runner.down_since is not None:
            # The database is away: no connect attempt every tick (read() starts one);
            # the poll's transaction tells when it is back.
            return defer.succeed(None)
        return reader.read().addCallbacks(self._answered, lambda _f: None)

    def _poll(self, after):
        batch = self.poll_batch
        return self.runner.call(
            lambda s: s.transaction("read", lambda tx: replica.poll(tx, after, batch)),
            pool=READ)

    def history(self, start_revision, key, range_end, limit_revisions=1000):
        if not self._started:
            return defer.fail(errors.ErrStopped())
        try:
            return defer.succeed(self.feed.keyspace.history(
                start_revision, key, range_end, limit_revisions))
        except EtcdError as e:
            return defer.fail(e)

    # -- auth state (opaque; no revision) ----------------------------------------------------
    def auth_load(self):
        def body(tx):
            row = tx.one("SELECT data FROM " + AUTH + " WHERE id = 1")
            return bytes(row[0]) if row is not None else None
        return self._tx("read", body)

    def auth_save(self, blob, expected=ANY):
        if self.migration.active:
            return defer.fail(ErrMigrationInProgress())
        d = self.dialect
        blob = bytes(blob)

        def body(tx):
            if expected is ANY:
                tx.run(d.upsert(AUTH, ["id", "data"], "id"), (1, blob))
                return True
            row = tx.one("SELECT data FROM " + AUTH + " WHERE id = 1" + d.for_update)
            if (bytes(row[0]) if row is not None else None) != expected:
                return False
            if row is not None:
                tx.run("UPDATE " + AUTH + " SET data = %s WHERE id = 1", (blob,))
                return True
            try:
                # No row to lock: of two first saves, the second INSERT fails.
                tx.run("INSERT INTO " + AUTH + " (id, data) VALUES (1, %s)", (blob,))
            except Exception as e:
                if d.classify(e) == DUPLICATE:
                    raise _AuthSaveConflict()        # rolls back; answered False below
                raise
            return True

        def conflict(failure):
            failure.trap(_AuthSaveConflict)
            return False
        return self._tx("write", body).addErrback(conflict)

    # -- leases ---------------------------------------------------------------------------
    def lease_grant(self, lease_id, ttl):
        try:
            ttl = lease_rules.granted_ttl(ttl)
        except EtcdError as e:
            return defer.fail(e)
        if self.migration.active:
            return defer.fail(ErrMigrationInProgress())
        expiry = self._now_ms() + ttl * 1000
        d = self.dialect

        def body(tx):
            lid = lease_id
            if lid == 0:
                lid = lease_rules.new_lease_id(lambda i: tx.one(
                    "SELECT 1 FROM " + LEASE + " WHERE id = %s", (i,)) is not None)
            try:
                tx.run("INSERT INTO " + LEASE + " (id, ttl, expiry) VALUES (%s, %s, %s)",
                       (lid, ttl, expiry))
            except Exception as e:
                if d.classify(e) == DUPLICATE:
                    raise errors.ErrLeaseExist
                raise
            return lid, ttl
        return self._tx("write", body)

    @staticmethod
    def _revoke(view, batch, lease_id):
        """Delete the keys attached to ``lease_id`` and the lease (in a write batch)."""
        revision = lease_rules.revoke_events(view, view.lease_keys(lease_id))
        batch.revoked.add(lease_id)
        return revision

    def lease_revoke(self, lease_id):
        def evaluate(view, batch):
            if not batch.lease_exists(lease_id):
                raise errors.ErrLeaseNotFound
            return self._revoke(view, batch, lease_id)
        return self._write(evaluate, leases=(lease_id,))

    def lease_keepalive(self, lease_id):
        if self.migration.active:
            return defer.fail(ErrMigrationInProgress())
        now = self._now_ms()

        def body(tx):
            n = tx.run("UPDATE " + LEASE + " SET expiry = %s + ttl * 1000 "
                       "WHERE id = %s AND expiry > %s", (now, lease_id, now))
            if not n:
                return 0
            return tx.one("SELECT ttl FROM " + LEASE + " WHERE id = %s", (lease_id,))[0]
        return self._tx("write", body)

    def lease_time_to_live(self, lease_id, keys=False):
        now = self._now_ms()

        def body(tx):
            row = tx.one("SELECT ttl, expiry FROM " + LEASE + " WHERE id = %s", (lease_id,))
            revision = replica.read_meta(tx)[0] if keys and row is not None else None
            return row, revision

        def answer(result):
            row, revision = result
            if row is None:
                return LeaseTTL(-1, 0, ())
            ttl = lease_rules.remaining_ttl((row[1] - now) / 1000.0, 0)
            if revision is None:
                return LeaseTTL(ttl, row[0], ())
            # The attached keys as of that snapshot or later: the replica's lease index.
            d = self.feed.wait(revision)
            d.addCallback(lambda _: LeaseTTL(ttl, row[0], tuple(sorted(
                self.feed.keyspace.lease_keys.get(lease_id, ())))))
            return d
        return self._tx("read", body).addCallback(answer)

    def lease_list(self):
        return self._tx("read", lambda tx: [r[0] for r in tx.all(
            "SELECT id FROM " + LEASE + " ORDER BY id")])

    @defer.inlineCallbacks
    def lease_expire(self, limit=lease_rules.MAX_REVOKES_PER_PASS):
        if self.migration.active:
            return []            # etcd expires them; the follower copies the deletions
        now = self._now_ms()
        due = yield self._tx("read", lambda tx: [r[0] for r in tx.all(
            "SELECT id FROM " + LEASE + " WHERE expiry <= %s ORDER BY expiry, id "
            "LIMIT %s", (now, limit))])

        def expire(lease_id):
            # Another adapter may have revoked it, or a keep-alive renewed it, since
            # the query: re-checked under the lease row's lock.
            def evaluate(view, batch):
                expiry = batch.leases.get(lease_id)
                if expiry is None or lease_id in batch.revoked or expiry > now:
                    return None
                self._revoke(view, batch, lease_id)
                return lease_id
            return self._write(evaluate, leases=(lease_id,))
        results = yield defer.gatherResults([expire(i) for i in due], consumeErrors=True)
        return [i for i in results if i is not None]

    # -- etcd snapshots -------------------------------------------------------------------
    def snapshot_view(self):
        return self._linearized().addCallback(lambda _: self.feed.keyspace.frozen())

    @defer.inlineCallbacks
    def import_history(self, history):
        # Before start: the replica is loaded from what this writes.  Its own short-lived
        # connection (one thread), so the store's pools start fresh afterwards.
        from etcdadapter.store.sql import importing
        if self._started:
            raise errors.EtcdError(errors.StatusCode.FAILED_PRECONDITION,
                                   "etcd-adapter: import into a store already started")
        runner = Runner(self.dialect, 1, self.reactor, 1)
        runner.start()
        try:
            initial = self.initial_revision
            if initial is None:
                initial = int(time.time() * 1000)
            yield runner.call(schema.migrate, self.dialect, initial)
            now = self._now_ms()
            yield runner.call(lambda s: s.transaction(
                "write", lambda tx: importing.write(tx, self.dialect, history, now)))
        finally:
            runner.stop()
