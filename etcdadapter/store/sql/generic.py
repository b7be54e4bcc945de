"""The SQL store: one implementation of the Store contract for every SQL engine.

Each request is one database transaction in a pool thread (:mod:`.runner`).  Reads and
writes have separate pools, each thread with its own connection: writes queue for the
revision-counter lock (behind other adapters' writes too), reads never queue behind them.


* reads (Range, read-only Txn, history, lease queries) run in a consistent snapshot
  through :class:`~etcdadapter.store.sql.views.SQLReadView`;
* writes (Put, DeleteRange, Txn, lease revoke/expiry) lock the revision counter
  row first, run the very same :mod:`etcdadapter.store.mvcc` function as the memory store
  over a :class:`~etcdadapter.store.sql.views.SQLWriteView`, append the new revision's log
  rows, bump the counter and commit -- so revisions are committed in order, one per write
  request, with nothing guessed;
* the change feed (:mod:`.feed`) hands every committed revision to the subscribers in
  order: this process's writes at once, other processes' writes when the poll loop sees
  them;
* Compact records the compact revision in one such write transaction, then deletes the
  rows it made garbage in small batches (:mod:`.purge`), in the background unless the
  request asked for ``physical``.

Leases are rows (ID, granted TTL, expiry in wall-clock ms); grant and keep-alive touch only
their row (no revision), revoke and expiry delete the attached keys through the normal
write path, after re-checking the lease under a row lock so that with several instances
each lease is revoked exactly once.

The store's Deferreds fire on the reactor thread; ``revision`` and ``compact_revision``
are updated there too.
"""

import time

from twisted.internet import defer
from twisted.logger import Logger

from etcdadapter import errors
from etcdadapter.errors import EtcdError
from etcdadapter.store import lease as lease_rules
from etcdadapter.store import mvcc
from etcdadapter.store.base import ANY, LeaseTTL, Store, StoreStatus
from etcdadapter.store.sql import schema
from etcdadapter.store.sql.dialect import DUPLICATE
from etcdadapter.store.sql.feed import ChangeFeed
from etcdadapter.store.sql.notify import Listener
from etcdadapter.store.sql.purge import BATCH, Purger
from etcdadapter.store.sql.runner import READ, Runner
from etcdadapter.store.sql.schema import AUTH, CURRENT, LEASE
from etcdadapter.store.sql.views import (SQLReadView, SQLWriteView, poll_changes,
                                         read_history, read_meta)

log = Logger()

DEFAULT_POLL_INTERVAL = 0.04      # seconds between polls for other instances' writes
DEFAULT_POOL_SIZE = 4             # read threads (= connections)
# Write threads (= connections).  Writes take the revision-counter lock one at a time, so
# more threads only wait at the lock; two keep the next write queued in the database.
DEFAULT_WRITE_POOL_SIZE = 2
POLL_BATCH = 500                  # log rows per poll


class _AuthSaveConflict(EtcdError):
    """Another adapter saved the first auth state at the same moment."""


class SQLStore(Store):
    def __init__(self, dialect, poll_interval=DEFAULT_POLL_INTERVAL,
                 pool_size=DEFAULT_POOL_SIZE, initial_revision=None, clock=None,
                 reactor=None, poll_batch=POLL_BATCH, compact_batch=BATCH,
                 write_pool_size=DEFAULT_WRITE_POOL_SIZE):
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
        self.runner = Runner(dialect, pool_size, reactor, write_pool_size)
        self.feed = ChangeFeed(reactor, self._poll, poll_interval, self._saw)
        self.purger = Purger(self.runner, dialect, compact_batch, on_done=self._purged)
        #: What the last purge pass of this process did (:class:`~etcdadapter.store.base.Purged`).
        self.last_purge = None
        self.listener = None
        if dialect.can_notify:
            self.listener = Listener(dialect, reactor, self.feed, poll_interval)
        self.revision = 0
        self.compact_revision = -1
        self._inflight = set()
        self._started = False

    def __repr__(self):
        return "<SQLStore %s>" % (self.dialect.describe(),)

    # -- lifecycle ------------------------------------------------------------------------
    @defer.inlineCallbacks
    def start(self):
        self.runner.start()
        initial = self.initial_revision
        if initial is None:
            initial = int(time.time() * 1000)
        try:
            yield self.runner.call(schema.migrate, self.dialect, initial)
            rev, compact = yield self.runner.call(
                lambda s: s.transaction("read", read_meta), pool=READ)
        except BaseException:
            self.runner.stop()
            raise
        self.revision = rev
        self.compact_revision = compact
        self.feed.start(rev)
        if self.listener is not None:
            self.listener.start()
        self._started = True
        log.info("SQL store {db}: revision {rev}, compacted to {c}",
                 db=self.dialect.describe(), rev=rev, c=compact)
        # Finish a purge that a crash or a stop interrupted (one short transaction if
        # there is none).
        self._purge().addErrback(lambda _: None)

    @defer.inlineCallbacks
    def stop(self):
        if not self._started:
            return
        self._started = False
        self.purger.stopping = True
        if self.listener is not None:
            self.listener.stop()
        yield self.drain()
        yield self.feed.stop()
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

    def _saw(self, revision, compact_revision):
        # What the feed (or a local commit) has seen committed; never goes down.
        if revision is not None and revision > self.revision:
            self.revision = revision
        if compact_revision is not None and compact_revision > self.compact_revision:
            self.compact_revision = compact_revision

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

    def _read(self, fn):
        """Run ``fn(view)`` over a read view.  The revision it read becomes this store's
        revision if higher (another instance wrote it), so that headers this process
        sends later never go below one a client has already seen."""
        d = self.dialect

        def body(tx):
            view = SQLReadView(tx, d)
            return fn(view), view.revision, view.compact_revision

        def done(result):
            out, revision, compact = result
            self._saw(revision, compact)
            return out
        return self._track(self._call("read", body).addCallback(done))

    def _write(self, fn):
        """Run ``fn(view)`` over a write view; the result fires once the revision it
        committed (if any) went through the change feed."""
        d = self.dialect

        def body(tx):
            view = SQLWriteView(tx, d)
            out = fn(view)
            return out, view.committed, view.revision
        return self._track(self._call("write", body).addCallback(self._after_write))

    def _after_write(self, result):
        out, committed, revision = result
        if committed is None:
            self._saw(revision, None)
            return out
        return self.feed.committed(*committed).addCallback(lambda _: out)

    def _now_ms(self):
        return int(round(self.clock.seconds() * 1000))

    # -- KV -------------------------------------------------------------------------------
    def range(self, request):
        return self._read(lambda view: mvcc.range_(view, request))

    def put(self, request):
        return self._write(lambda view: mvcc.put(view, request)[0])

    def delete_range(self, request):
        return self._write(lambda view: mvcc.delete_range(view, request)[0])

    def txn(self, request):
        if mvcc.txn_is_read_only(request):
            return self._read(lambda view: mvcc.txn(view, request)[0])
        return self._write(lambda view: mvcc.txn(view, request)[0])

    def replace_prefix(self, prefix, items):
        return self._write(lambda view: mvcc.replace_prefix(view, prefix, items))

    @defer.inlineCallbacks
    def compact(self, revision, physical=False):
        # Let this process's feed pass everything committed so far before old rows go:
        # the feed reads the log, and compaction deletes from it.
        yield self._catch_up()
        seen = []

        def compact_in(view):
            seen.append(view.compact_revision)
            return mvcc.compact(view, revision)
        try:
            current = yield self._write(compact_in)
        except EtcdError:
            # ErrCompacted: another instance compacted further than this one knew.
            self._saw(None, seen[-1] if seen else None)
            raise
        self._saw(None, revision)
        purged = self._purge()
        if physical:
            yield purged
        else:
            purged.addErrback(lambda _: None)        # logged by the purger
        return current

    def _purge(self):
        """Deferred[Purged] of a purge pass started after now."""
        if not self._started:
            return defer.fail(errors.ErrStopped)
        return self._track(self.purger.request())

    def _purged(self, purged):
        self.last_purge = purged

    def _catch_up(self):
        d = self._tx("read", lambda tx: read_meta(tx)[0])

        def wait(rev):
            self.feed.poll_now()
            return self.feed.wait(rev)
        return d.addCallback(wait)

    def status(self):
        d = self.dialect

        def body(tx):
            rev, compact = read_meta(tx)
            size, in_use = d.db_size(tx, schema.TABLES)
            return StoreStatus(rev, compact, size, in_use)
        return self._tx("read", body)

    def hash_kv(self, revision):
        # One read transaction in the pool, however big the log: never on the reactor.
        return self._read(lambda view: mvcc.hash_kv(view, revision))

    # -- change feed ----------------------------------------------------------------------
    def subscribe(self, callback, on_lost=None):
        """See :meth:`.feed.ChangeFeed.subscribe` (``on_lost``: revisions another
        instance compacted before this one's feed could read them)."""
        return self.feed.subscribe(callback, on_lost)

    def _poll(self, after):
        batch = self.poll_batch
        return self.runner.call(
            lambda s: s.transaction("read", lambda tx: poll_changes(tx, after, batch)),
            pool=READ)

    def history(self, start_revision, key, range_end, limit_revisions=1000):
        return self._tx("read", lambda tx: read_history(tx, start_revision, key, range_end,
                                                        limit_revisions))

    # -- auth state (opaque; no revision) ----------------------------------------------------
    def auth_load(self):
        def body(tx):
            row = tx.one("SELECT data FROM " + AUTH + " WHERE id = 1")
            return bytes(row[0]) if row is not None else None
        return self._tx("read", body)

    def auth_save(self, blob, expected=ANY):
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

    def _revoke_in(self, tx, lease_id, expired_at=None):
        """Revoke inside a write transaction: (revoked?, revision, view.committed).  With
        ``expired_at`` only if the lease is (still) expired then."""
        view = SQLWriteView(tx, self.dialect)
        row = tx.one("SELECT expiry FROM " + LEASE + " WHERE id = %s"
                     + self.dialect.for_update, (lease_id,))
        if row is None or (expired_at is not None and row[0] > expired_at):
            return False, view.revision, None
        keys = [bytes(r[0]) for r in tx.all(
            "SELECT name FROM " + CURRENT + " WHERE lease = %s AND version > 0",
            (lease_id,))]
        revision = lease_rules.revoke_events(view, keys)
        tx.run("DELETE FROM " + LEASE + " WHERE id = %s", (lease_id,))
        return True, revision, view.committed

    def lease_revoke(self, lease_id):
        def body(tx):
            found, revision, committed = self._revoke_in(tx, lease_id)
            if not found:
                raise errors.ErrLeaseNotFound
            return revision, committed, revision
        return self._track(self._call("write", body).addCallback(self._after_write))

    def lease_keepalive(self, lease_id):
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
            if row is None:
                return LeaseTTL(-1, 0, ())
            ttl = lease_rules.remaining_ttl((row[1] - now) / 1000.0, 0)
            names = ()
            if keys:
                names = tuple(bytes(r[0]) for r in tx.all(
                    "SELECT name FROM " + CURRENT + " WHERE lease = %s AND version > 0 "
                    "ORDER BY name", (lease_id,)))
            return LeaseTTL(ttl, row[0], names)
        return self._tx("read", body)

    def lease_list(self):
        return self._tx("read", lambda tx: [r[0] for r in tx.all(
            "SELECT id FROM " + LEASE + " ORDER BY id")])

    def lease_expire(self, limit=lease_rules.MAX_REVOKES_PER_PASS):
        now = self._now_ms()

        def work(session):
            due = session.transaction("read", lambda tx: [r[0] for r in tx.all(
                "SELECT id FROM " + LEASE + " WHERE expiry <= %s ORDER BY expiry, id "
                "LIMIT %s", (now, limit))])
            out = []
            for lease_id in due:
                # Each in its own transaction and revision; another instance may have
                # revoked it or a keep-alive renewed it since: checked under the lock.
                found, _rev, committed = session.transaction(
                    "write", lambda tx, i=lease_id: self._revoke_in(tx, i, now))
                if found:
                    out.append((lease_id, committed))
            return out

        def delivered(revoked):
            waits = [self.feed.committed(*c) for _i, c in revoked if c is not None]
            d = defer.gatherResults(waits) if waits else defer.succeed(None)
            return d.addCallback(lambda _: [i for i, _c in revoked])
        if not self._started:
            return defer.fail(errors.ErrStopped())
        return self._track(self.runner.call(work).addCallback(delivered))
