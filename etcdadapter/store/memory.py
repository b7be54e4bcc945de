"""The embedded in-memory store (the default backend).

Its data is a :class:`~etcdadapter.store.keyspace.Keyspace` (every key's versions, the
change log, the lease index; the same structures a SQL adapter's replica keeps), written
through :mod:`etcdadapter.store.mvcc` on the calling (reactor) thread; the request methods
return already-fired Deferreds.  Leases (granted TTL, expiry) live here too.

Revisions survive restarts only in the sense that they never go down: the first revision
is seeded from the wall clock in milliseconds (APISIX ignores "older" revisions), unless
``initial_revision`` is given (tests comparing with etcd pass 1).
"""

import heapq
import time
from collections import deque

from twisted.internet.defer import fail, succeed
from twisted.logger import Logger

from etcdadapter import errors
from etcdadapter.errors import EtcdError
from etcdadapter.store import lease as lease_rules
from etcdadapter.store import mvcc
from etcdadapter.store.base import ANY, LeaseTTL, Store, StoreStatus, Subscribers
from etcdadapter.store.keyspace import Keyspace

log = Logger()


class Lease(object):
    """One granted lease: granted TTL and expiry (seconds on the store's clock); its
    attached keys are in the keyspace's lease index."""

    __slots__ = ("id", "ttl", "expiry")

    def __init__(self, lease_id, ttl, expiry):
        self.id = lease_id
        self.ttl = ttl
        self.expiry = expiry


class MemoryStore(Store):
    """In-memory :class:`~etcdadapter.store.base.Store`."""

    def __init__(self, initial_revision=None, clock=None):
        if initial_revision is None:
            initial_revision = int(time.time() * 1000)
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
        self._view = self.keyspace.view
        self._auth_blob = None

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
        return succeed(None)

    def stop(self):
        return succeed(None)

    # -- auth state (opaque to the store) -------------------------------------------------
    def auth_load(self):
        return succeed(self._auth_blob)

    def auth_save(self, blob, expected=ANY):
        if expected is not ANY and expected != self._auth_blob:
            return succeed(False)
        self._auth_blob = bytes(blob)
        return succeed(True)

    # -- KV -------------------------------------------------------------------------------
    def range(self, request):
        try:
            return succeed(mvcc.range_(self._view, request))
        except EtcdError as e:
            return fail(e)

    def _write(self, apply, request):
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
        try:
            return succeed(mvcc.compact(self._view, revision))
        except EtcdError as e:
            return fail(e)

    def status(self):
        # The empty structures themselves take memory too; etcd never reports a zero
        # size either (an empty bbolt file is 32-36 KiB), and etcdctl hides zero fields.
        size = self.keyspace.size()
        return succeed(StoreStatus(self.revision, self.compact_revision, size, size))

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
        try:
            return succeed(self.keyspace.history(start_revision, key, range_end,
                                                 limit_revisions))
        except EtcdError as e:
            return fail(e)

    # -- leases ---------------------------------------------------------------------------
    def lease_grant(self, lease_id, ttl):
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
        lease = self.leases.get(lease_id)
        if lease is None:
            return fail(errors.ErrLeaseNotFound())
        return succeed(self._revoke(lease))

    def lease_keepalive(self, lease_id):
        lease = self.leases.get(lease_id)
        now = self.clock.seconds()
        if lease is None or lease.expiry <= now:
            return succeed(0)
        lease.expiry = now + lease.ttl
        heapq.heappush(self._expiries, (lease.expiry, lease_id))
        return succeed(lease.ttl)

    def lease_time_to_live(self, lease_id, keys=False):
        lease = self.leases.get(lease_id)
        if lease is None:
            return succeed(LeaseTTL(-1, 0, ()))
        ttl = lease_rules.remaining_ttl(lease.expiry, self.clock.seconds())
        attached = self.keyspace.lease_keys.get(lease_id, ()) if keys else ()
        return succeed(LeaseTTL(ttl, lease.ttl, tuple(sorted(attached))))

    def lease_list(self):
        return succeed(sorted(self.leases))

    def lease_expire(self, limit=lease_rules.MAX_REVOKES_PER_PASS):
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
