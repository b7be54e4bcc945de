"""The embedded in-memory store (the default backend).

Data structures:

* ``_keys``: a :class:`sortedcontainers.SortedDict` mapping each key to its history, a list
  of :class:`~etcdadapter.store.base.KV` ordered by mod_revision, tombstones included.  A
  point read at the latest revision is one dict lookup; a range walks only the keys in it.
* ``_dead``: the keys of ``_keys`` whose latest version is a tombstone, so that counting
  the live keys of a range at the latest revision is four bisections.
* ``_log``: every committed :class:`~etcdadapter.store.base.Change`, in revision order, for
  watch replay (:meth:`MemoryStore.history`).

Compaction really drops superseded versions, tombstones and log entries (only the keys
written since the previous compaction are visited).  Everything runs synchronously on the
calling (reactor) thread; the request methods return already-fired Deferreds.

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

from sortedcontainers import SortedDict, SortedList
from twisted.internet import threads
from twisted.internet.defer import fail, succeed
from twisted.logger import Logger

from etcdadapter import errors
from etcdadapter.errors import EtcdError
from etcdadapter.store import lease as lease_rules
from etcdadapter.store import mvcc
from etcdadapter.store.base import (ANY, Change, LeaseTTL, Purged, Store, StoreStatus,
                                    Subscribers)

log = Logger()

# Bytes an entry costs beyond its key and value bytes (CPython 3.11, 64-bit, measured with
# tracemalloc): a version (KV tuple, its ints, the value's bytes header, the history list
# slot); an Event in the log; a Change in the log; a key (its bytes header, SortedDict and
# SortedList slots, the history list).  The key's bytes are shared by all its versions.
VERSION_OVERHEAD = 260
EVENT_OVERHEAD = 72
CHANGE_OVERHEAD = 84
KEY_OVERHEAD = 80


# Rough footprint of an empty store's maps and lists (measured with tracemalloc).
_BASE_BYTES = 4096

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
    """One granted lease: granted TTL, expiry (seconds on the store's clock) and the set
    of attached keys (kept up to date by every commit)."""

    __slots__ = ("id", "ttl", "expiry", "keys")

    def __init__(self, lease_id, ttl, expiry):
        self.id = lease_id
        self.ttl = ttl
        self.expiry = expiry
        self.keys = set()


def _bisect_rev(seq, revision, index):
    """First position in ``seq`` (tuples ordered by field ``index``) whose field is >=
    ``revision``."""
    lo, hi = 0, len(seq)
    while lo < hi:
        mid = (lo + hi) // 2
        if seq[mid][index] < revision:
            lo = mid + 1
        else:
            hi = mid
    return lo


def _at(history, revision):
    """The live KV of a key's history at ``revision``, or None."""
    kv = history[-1]
    if kv.mod_revision > revision:
        lo, hi = 0, len(history) - 1                 # history[hi] is past revision
        while lo < hi:
            mid = (lo + hi) // 2
            if history[mid].mod_revision <= revision:
                lo = mid + 1
            else:
                hi = mid
        if lo == 0:
            return None
        kv = history[lo - 1]
    return kv if kv.version else None


class _View(mvcc.WriteView):
    """The mvcc view over a MemoryStore.  Always current: the store is single-threaded and
    mvcc functions run to completion before anything else touches it."""

    __slots__ = ("store",)

    def __init__(self, store):
        self.store = store

    @property
    def revision(self):
        return self.store.revision

    @property
    def compact_revision(self):
        return self.store.compact_revision

    def get(self, key, revision):
        h = self.store._keys.get(key)
        if h is None:
            return None
        return _at(h, revision)

    def _iter_keys(self, key, range_end):
        keys = self.store._keys
        if range_end == mvcc.ALL_KEYS:
            return keys.irange(key)
        if range_end <= key:
            return ()
        return keys.irange(key, range_end, inclusive=(True, False))

    def range(self, key, range_end, revision, limit=0):
        if not range_end:
            kv = self.get(key, revision)
            return [kv] if kv is not None else []
        keys = self.store._keys
        out = []
        for k in self._iter_keys(key, range_end):
            kv = _at(keys[k], revision)
            if kv is not None:
                out.append(kv)
                if len(out) == limit:
                    break
        return out

    def count(self, key, range_end, revision):
        if not range_end:
            return 1 if self.get(key, revision) is not None else 0
        s = self.store
        keys = s._keys
        if revision >= s.revision:
            # Latest: keys in range minus the deleted ones, two bisections each.
            dead = s._dead
            if range_end == mvcc.ALL_KEYS:
                return ((len(keys) - keys.bisect_left(key))
                        - (len(dead) - dead.bisect_left(key)))
            if range_end <= key:
                return 0
            return ((keys.bisect_left(range_end) - keys.bisect_left(key))
                    - (dead.bisect_left(range_end) - dead.bisect_left(key)))
        n = 0
        for k in self._iter_keys(key, range_end):
            if _at(keys[k], revision) is not None:
                n += 1
        return n

    def lease_exists(self, lease_id):
        return lease_id in self.store.leases

    def commit(self, revision, events):
        s = self.store
        if s._reserved is not None and revision > s._reserved:
            s._reserve(revision)                 # before anything can see ``revision``
        keys = s._keys
        leases = s.leases
        size = CHANGE_OVERHEAD
        for ev in events:
            kv = ev.kv
            h = keys.get(kv.key)
            # Lease attachment follows the key's latest version.
            if h is not None and h[-1].lease:
                old = leases.get(h[-1].lease)
                if old is not None:
                    old.keys.discard(kv.key)
            if kv.lease and kv.version:
                new = leases.get(kv.lease)
                if new is not None:
                    new.keys.add(kv.key)
            if h is None:
                keys[kv.key] = [kv]
                size += len(kv.key) + KEY_OVERHEAD
                if not kv.version:
                    s._dead.add(kv.key)
            else:
                if not h[-1].version:
                    if kv.version:
                        s._dead.remove(kv.key)
                elif not kv.version:
                    s._dead.add(kv.key)
                h.append(kv)
            size += len(kv.value) + VERSION_OVERHEAD + EVENT_OVERHEAD
        change = Change(revision, tuple(events))
        s._log.append(change)
        s._bytes += size
        s.revision = revision
        s._unnotified.append(change)

    def compact(self, revision):
        started = time.monotonic()
        s = self.store
        keys = s._keys
        logl = s._log
        j = _bisect_rev(logl, revision, 0)           # first change at >= revision
        end = j + 1 if j < len(logl) and logl[j].revision == revision else j
        touched = set()
        freed = 0
        versions = forgotten = 0
        dropped_subs = {}            # (key, revision) -> sub of a dropped change's event
        for i in range(end):
            change = logl[i]
            events = change.events
            if i < j:
                freed += CHANGE_OVERHEAD + EVENT_OVERHEAD * len(events)
                for sub in range(1, len(events)):
                    dropped_subs[(events[sub].kv.key, change.revision)] = sub
            for ev in events:
                touched.add(ev.kv.key)
        subs = s._subs
        for key in touched:
            h = keys.get(key)
            if h is None:
                continue
            kept = mvcc.compact_versions(h, revision)
            # HashKV needs the sub-revision of a version whose change leaves the log.
            first = kept[0] if kept else None
            if first is None or first.mod_revision >= revision:
                subs.pop(key, None)
            else:
                sub = dropped_subs.get((key, first.mod_revision))
                if sub is not None:
                    subs[key] = (first.mod_revision, sub)
                elif subs.get(key, (None,))[0] != first.mod_revision:
                    subs.pop(key, None)
            if kept is h:
                continue
            for kv in h[:len(h) - len(kept)]:
                freed += len(kv.value) + VERSION_OVERHEAD
            versions += len(h) - len(kept)
            if kept:
                keys[key] = kept
            else:
                del keys[key]
                s._dead.remove(key)
                freed += len(key) + KEY_OVERHEAD
                forgotten += 1
        del logl[:j]
        if logl and logl[0].revision == revision:
            # etcd reads a watch event's prev_kv at revision - 1: compacted now.
            change = logl[0]
            if any(ev.prev_kv is not None for ev in change.events):
                logl[0] = Change(revision, tuple(ev._replace(prev_kv=None)
                                                 for ev in change.events))
        s._bytes -= freed
        s.compact_revision = revision
        seconds = time.monotonic() - started
        s.last_purge = Purged(revision, versions, forgotten, seconds)
        if versions or forgotten:
            log.info("compaction to revision {revision}: removed {versions} old versions "
                     "and {keys} keys in {seconds:.3f}s", revision=revision,
                     versions=versions, keys=forgotten, seconds=seconds)


class _Frozen(mvcc.ReadView):
    """What HashKV reads of a MemoryStore, taken at once on the reactor thread (copies
    of the key map, the log and the sub-revisions; the history lists are shared: the
    store only appends to them, and compaction replaces them) and read in a thread."""

    def __init__(self, store):
        self.revision = store.revision
        self.compact_revision = store.compact_revision
        self.histories = dict.copy(store._keys)
        self.log = list(store._log)
        self.subs = dict(store._subs)

    def versions(self, after, upto):
        logl = self.log
        for i in range(_bisect_rev(logl, after + 1, 0), len(logl)):
            change = logl[i]
            if change.revision > upto:
                break
            for sub, ev in enumerate(change.events):
                yield sub, ev.kv

    def _sub(self, kv):
        logl = self.log
        i = _bisect_rev(logl, kv.mod_revision, 0)
        if i < len(logl) and logl[i].revision == kv.mod_revision:
            events = logl[i].events
            for sub in range(len(events) - 1, -1, -1):
                if events[sub].kv is kv:
                    return sub
        mod, sub = self.subs.get(kv.key, (None, 0))
        return sub if mod == kv.mod_revision else 0

    def live_versions(self, upto, at):
        out = []
        for h in self.histories.values():
            kv = _at(h, at)
            if kv is not None and kv.mod_revision <= upto:
                out.append((kv.mod_revision, self._sub(kv), kv))
        out.sort(key=lambda t: t[:2])
        return [(sub, kv) for _rev, sub, kv in out]

    def any_live(self, at):
        return any(_at(h, at) is not None for h in self.histories.values())


class MemoryStore(Store):
    """In-memory :class:`~etcdadapter.store.base.Store`."""

    def __init__(self, initial_revision=None, clock=None, run_in_thread=None,
                 floor_file=None, seed=clock_seed):
        """``floor_file``: see :class:`RevisionFloor` (read here: RevisionFloorError);
        ``seed``: where the first revision comes from when ``initial_revision`` is not
        given (tests pass a clock that went back)."""
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
        self.revision = initial_revision
        self.compact_revision = -1
        #: lease ID -> :class:`Lease` (``lease_id in leases`` tells whether it exists).
        self.leases = {}
        self._expiries = []              # heap of (expiry, lease_id); stale entries skipped
        self._keys = SortedDict()
        self._dead = SortedList()        # keys whose latest version is a tombstone
        self._log = []
        self._bytes = 0
        self._subscribers = Subscribers()
        self._unnotified = deque()
        self._notifying = False
        self._view = _View(self)
        self._auth_blob = None
        #: key -> (revision, sub) of its oldest version when that came from a write
        #: with several events whose log entry compaction dropped (HashKV needs subs).
        self._subs = {}
        self._run_in_thread = run_in_thread or threads.deferToThread

    # -- lifecycle ------------------------------------------------------------------------
    def start(self):
        if self.floor is not None:
            try:
                self._reserve(self.revision)
            except EtcdError as e:
                return fail(RevisionFloorError(e.message))
        return succeed(None)

    def stop(self):
        if self.floor is not None and self._reserved is not None:
            try:
                self.floor.write(self.revision)      # nothing above it was handed out
                self._reserved = self.revision
            except OSError as e:
                log.error("cannot record the revision floor in {path}: {error}",
                          path=self.floor.path, error=str(e))
        return succeed(None)

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
        size = self._bytes + _BASE_BYTES
        return succeed(StoreStatus(self.revision, self.compact_revision, size, size))

    def hash_kv(self, revision):
        # Hashing walks every version: in a thread, over a snapshot.
        return self._run_in_thread(mvcc.hash_kv, _Frozen(self), revision)

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
        # Negative start revisions (old etcd accepted them) fail only once something has
        # been compacted, as etcd did.
        if self.compact_revision >= 0 and start_revision < self.compact_revision:
            return fail(errors.ErrCompacted())
        logl = self._log
        i = _bisect_rev(logl, start_revision, 0)
        return succeed(mvcc.select_history(
            (logl[n] for n in range(i, len(logl))), key, range_end, limit_revisions))

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
            revision = lease_rules.revoke_events(self._view, lease.keys)
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
        return succeed(LeaseTTL(ttl, lease.ttl, tuple(sorted(lease.keys)) if keys else ()))

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
