"""The embedded in-memory store (the default backend).

Its data is a :class:`~etcdadapter.store.keyspace.Keyspace` (every key's versions, the
change log, the lease index; the same structures a SQL adapter's replica keeps), written
through :mod:`etcdadapter.store.mvcc` on the calling (reactor) thread; the request methods
return already-fired Deferreds.  Leases (granted TTL, expiry) live here too.

Revisions survive restarts only in the sense that they must never go down (APISIX ignores
"older" revisions).  The first revision is seeded from the wall clock in microseconds
(about 1.8e15: below 2**53 until the year 2255, so exact in the doubles of APISIX's Lua
and of JavaScript), unless ``initial_revision`` is given (tests comparing with etcd pass
1): a restart hands out higher revisions unless the store averaged more than one write
per microsecond since its start, or the clock was set back.  Against the clock, a
*floor file* (``floor_file``) makes it a guarantee: :class:`RevisionFloor`.
"""

import heapq
import os
import time
from collections import deque

from twisted.internet import threads
from twisted.internet.defer import fail, succeed
from twisted.logger import Logger

from etcdadapter import errors
from etcdadapter.errors import EtcdError
from etcdadapter.store import lease as lease_rules
from etcdadapter.store import mvcc
from etcdadapter.store.base import ANY, LeaseTTL, Store, StoreStatus, Subscribers
from etcdadapter.store.keyspace import Keyspace, KeyspaceView

log = Logger()

#: Revisions reserved in the floor file at a time: one file write per this many writes.
FLOOR_RESERVE = 100000


def clock_seed():
    """The first revision of a fresh memory store: the wall clock in microseconds."""
    return time.time_ns() // 1000


class RevisionFloorError(Exception):
    """The floor file forbids the start (or cannot be read)."""


class RevisionFloor(object):
    """A file holding a revision at or above every revision the store has handed out:
    before the store goes past the recorded value it records a higher one (``reserve``
    revisions ahead, written to a temporary file, fsynced and renamed over the old one),
    and at a clean stop it records the last revision.  At start the store begins above
    it, whatever the clock says -- also after a crash -- and refuses to start at a pinned
    ``initial_revision`` at or below it."""

    def __init__(self, path, reserve=FLOOR_RESERVE):
        self.path = path
        self.reserve = reserve

    def read(self):
        """The recorded revision, or None when there is no file yet."""
        try:
            with open(self.path, "rb") as f:
                text = f.read().decode("ascii", "replace").strip()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise RevisionFloorError("cannot read the revision floor file %s: %s"
                                     % (self.path, e))
        try:
            value = int(text)
        except ValueError:
            value = -1
        if value < 0:
            raise RevisionFloorError("the revision floor file %s does not hold a revision "
                                     "(%r): fix or remove it" % (self.path, text[:40]))
        return value

    def write(self, revision):
        tmp = self.path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(b"%d\n" % revision)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        try:
            fd = os.open(os.path.dirname(os.path.abspath(self.path)), os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)


class Lease(object):
    """One granted lease: granted TTL and expiry (seconds on the store's clock); its
    attached keys are in the keyspace's lease index."""

    __slots__ = ("id", "ttl", "expiry")

    def __init__(self, lease_id, ttl, expiry):
        self.id = lease_id
        self.ttl = ttl
        self.expiry = expiry


def _stopped():
    return fail(errors.ErrStopped())


class MemoryStore(Store):
    """In-memory :class:`~etcdadapter.store.base.Store`."""

    def __init__(self, initial_revision=None, clock=None, run_in_thread=None,
                 floor_file=None, seed=clock_seed, snapshot_file=None):
        """``floor_file``: see :class:`RevisionFloor` (read here: RevisionFloorError);
        ``seed``: where the first revision comes from when ``initial_revision`` is not
        given (tests pass a clock that went back); ``snapshot_file``: an etcd snapshot
        the store starts from (restored at start)."""
        self.snapshot_file = snapshot_file
        self.floor = RevisionFloor(floor_file) if floor_file else None
        self._reserved = None
        floor = self.floor.read() if self.floor is not None else None
        if initial_revision is not None:
            if floor is not None and initial_revision <= floor:
                raise RevisionFloorError(
                    "initial_revision %d is not above the revision floor %d recorded in "
                    "%s: clients may have seen revisions up to %d"
                    % (initial_revision, floor, floor_file, floor))
        else:
            initial_revision = seed()
            if floor is not None and initial_revision <= floor:
                log.warn("the clock seeds revision {seed}, not above the floor {floor} "
                         "recorded in {path}: starting at {start}", seed=initial_revision,
                         floor=floor, path=floor_file, start=floor + 1)
                initial_revision = floor + 1
        if clock is None:
            from twisted.internet import reactor as clock
        self.clock = clock
        #: lease ID -> :class:`Lease` (``lease_id in leases`` tells whether it exists).
        self.leases = {}
        self._expiries = []              # heap of (expiry, lease_id); stale entries skipped
        self._subscribers = Subscribers()
        self._unnotified = deque()
        self._notifying = False
        self.keyspace = Keyspace(initial_revision, lease_exists=self.leases.__contains__,
                                 on_commit=self._unnotified.append)
        if self.floor is not None:       # the hook only ever acts with a floor file
            self.keyspace.before_commit = self._before_commit
        self._view = self.keyspace.view
        self._auth_blob = None
        self._run_in_thread = run_in_thread or threads.deferToThread
        #: Between stop() and the next start(): requests fail with Unavailable "etcdserver:
        #: server stopped", etcd's answer once it is stopping (the SQL stores' too).  A
        #: new store serves before start() (tests and embedders use it directly).
        self._stopped = False

    @property
    def revision(self):
        return self.keyspace.revision

    @property
    def compact_revision(self):
        return self.keyspace.compact_revision

    @property
    def last_purge(self):
        return self.keyspace.last_purge

    # -- lifecycle ------------------------------------------------------------------------
    def start(self):
        self._stopped = False
        if self.snapshot_file is not None:
            from etcdadapter.snapshot.restore import imported, open_snapshot
            try:
                f, snapshot = open_snapshot(self.snapshot_file)
            except Exception as e:
                return fail(e)
            try:
                d = self.import_history(imported(snapshot))   # reads the file at once
            finally:
                f.close()

            def restored(_):
                log.info("memory store restored from the etcd snapshot {path}: revision "
                         "{rev}, compact revision {compact}", path=self.snapshot_file,
                         rev=self.revision, compact=self.compact_revision)
            return d.addCallback(restored)
        if self.floor is not None:
            try:
                self._reserve(self.revision)
            except EtcdError as e:
                return fail(RevisionFloorError(e.message))
        return succeed(None)

    def stop(self):
        self._stopped = True
        if self.floor is not None and self._reserved is not None:
            try:
                self.floor.write(self.revision)      # nothing above it was handed out
                self._reserved = self.revision
            except OSError as e:
                log.error("cannot record the revision floor in {path}: {error}",
                          path=self.floor.path, error=str(e))
        return succeed(None)

    def _before_commit(self, revision):
        if self._reserved is not None and revision > self._reserved:
            self._reserve(revision)              # before anything can see ``revision``

    def _reserve(self, revision):
        """Record in the floor file that revisions up to ``revision`` plus the reserve
        may be handed out."""
        upto = revision + self.floor.reserve
        try:
            self.floor.write(upto)
        except OSError as e:
            raise EtcdError(errors.StatusCode.UNAVAILABLE,
                            "etcd-adapter: cannot record the revision floor in %s: %s"
                            % (self.floor.path, e))
        self._reserved = upto

    # -- auth state (opaque to the store) -------------------------------------------------
    def auth_load(self):
        if self._stopped:
            return _stopped()
        return succeed(self._auth_blob)

    def auth_save(self, blob, expected=ANY):
        if self._stopped:
            return _stopped()
        if expected is not ANY and expected != self._auth_blob:
            return succeed(False)
        self._auth_blob = bytes(blob)
        return succeed(True)

    # -- KV -------------------------------------------------------------------------------
    def range(self, request):
        if self._stopped:
            return _stopped()
        try:
            return succeed(mvcc.range_(self._view, request))
        except EtcdError as e:
            return fail(e)

    def _write(self, apply, request):
        if self._stopped:
            return _stopped()
        try:
            resp, _ = apply(self._view, request)
        except EtcdError as e:
            return fail(e)
        self._notify()
        return succeed(resp)

    def put(self, request):
        return self._write(mvcc.put, request)

    def delete_range(self, request):
        return self._write(mvcc.delete_range, request)

    def txn(self, request):
        return self._write(mvcc.txn, request)

    def replace_prefix(self, prefix, items):
        return self._write(lambda view, args: (mvcc.replace_prefix(view, *args), None),
                           (prefix, items))

    def compact(self, revision, physical=False):
        if self._stopped:
            return _stopped()
        try:
            return succeed(mvcc.compact(self._view, revision))
        except EtcdError as e:
            return fail(e)

    def status(self):
        if self._stopped:
            return _stopped()
        # The empty structures themselves take memory too; etcd never reports a zero
        # size either (an empty bbolt file is 32-36 KiB), and etcdctl hides zero fields.
        size = self.keyspace.size()
        return succeed(StoreStatus(self.revision, self.compact_revision, size, size))

    def hash_kv(self, revision):
        if self._stopped:
            return _stopped()
        # Hashing walks every version: in a thread, over a snapshot.
        return self._run_in_thread(mvcc.hash_kv, self.keyspace.frozen(), revision)

    # -- change feed ----------------------------------------------------------------------
    def subscribe(self, callback, on_lost=None):
        return self._subscribers.add(callback, on_lost)

    def _notify(self):
        # Re-entrant writes (a subscriber writing) are queued behind the change being
        # delivered, so every subscriber sees changes in revision order.
        if self._notifying:
            return
        self._notifying = True
        try:
            queue = self._unnotified
            while queue:
                self._subscribers.deliver(queue.popleft())
        finally:
            self._notifying = False

    def history(self, start_revision, key, range_end, limit_revisions=1000):
        if self._stopped:
            return _stopped()
        try:
            return succeed(self.keyspace.history(start_revision, key, range_end,
                                                 limit_revisions))
        except EtcdError as e:
            return fail(e)

    # -- leases ---------------------------------------------------------------------------
    def lease_grant(self, lease_id, ttl):
        if self._stopped:
            return _stopped()
        try:
            ttl = lease_rules.granted_ttl(ttl)
        except EtcdError as e:
            return fail(e)
        if lease_id == 0:
            lease_id = lease_rules.new_lease_id(self.leases.__contains__)
        elif lease_id in self.leases:
            return fail(errors.ErrLeaseExist())
        lease = Lease(lease_id, ttl, self.clock.seconds() + ttl)
        self.leases[lease_id] = lease
        heapq.heappush(self._expiries, (lease.expiry, lease_id))
        return succeed((lease_id, ttl))

    def _revoke(self, lease):
        try:
            revision = lease_rules.revoke_events(
                self._view, self.keyspace.lease_keys.get(lease.id, ()))
        finally:
            del self.leases[lease.id]
        self._notify()
        return revision

    def lease_revoke(self, lease_id):
        if self._stopped:
            return _stopped()
        lease = self.leases.get(lease_id)
        if lease is None:
            return fail(errors.ErrLeaseNotFound())
        return succeed(self._revoke(lease))

    def lease_keepalive(self, lease_id):
        if self._stopped:
            return _stopped()
        lease = self.leases.get(lease_id)
        now = self.clock.seconds()
        if lease is None or lease.expiry <= now:
            return succeed(0)
        lease.expiry = now + lease.ttl
        heapq.heappush(self._expiries, (lease.expiry, lease_id))
        return succeed(lease.ttl)

    def lease_time_to_live(self, lease_id, keys=False):
        if self._stopped:
            return _stopped()
        lease = self.leases.get(lease_id)
        if lease is None:
            return succeed(LeaseTTL(-1, 0, ()))
        ttl = lease_rules.remaining_ttl(lease.expiry, self.clock.seconds())
        attached = self.keyspace.lease_keys.get(lease_id, ()) if keys else ()
        return succeed(LeaseTTL(ttl, lease.ttl, tuple(sorted(attached))))

    def lease_list(self):
        if self._stopped:
            return _stopped()
        return succeed(sorted(self.leases))

    def lease_expire(self, limit=lease_rules.MAX_REVOKES_PER_PASS):
        if self._stopped:
            return _stopped()
        now = self.clock.seconds()
        heap = self._expiries
        revoked = []
        while heap and heap[0][0] <= now and len(revoked) < limit:
            expiry, lease_id = heapq.heappop(heap)
            lease = self.leases.get(lease_id)
            if lease is None or lease.expiry != expiry:
                continue                     # revoked already, or kept alive since
            self._revoke(lease)
            revoked.append(lease_id)
        return succeed(revoked)

    # -- etcd snapshots ---------------------------------------------------------------------
    def snapshot_view(self):
        if self._stopped:
            return _stopped()
        return succeed(self.keyspace.frozen())

    def import_history(self, history):
        from etcdadapter.store import importing
        ks = self.keyspace
        what = ("keys or history" if ks.keys or ks.log else "leases" if self.leases
                else "auth state" if self._auth_blob is not None else None)
        if what is not None:
            return fail(importing.StoreNotEmpty(what))
        if self.floor is not None:
            return fail(importing.HistoryError(
                "a restore sets the store's revisions: not with a revision floor file"))
        try:
            ks = importing.build_keyspace(history)
        except Exception as e:
            return fail(e)
        ks.on_commit = self._unnotified.append
        ks.view = KeyspaceView(ks, self.leases.__contains__)
        self.keyspace = ks
        self._view = ks.view
        now = self.clock.seconds()
        for lease_id, ttl in history.leases:
            lease = Lease(lease_id, ttl, now + ttl)
            self.leases[lease_id] = lease
            heapq.heappush(self._expiries, (lease.expiry, lease_id))
        self._auth_blob = history.auth_blob
        return succeed(None)
