"""The in-memory MVCC keyspace: every key's versions, the change log and the lease index.

It is the memory store's data, and the replica every SQL-store adapter keeps of its
database (:mod:`etcdadapter.store.sql.replica`): one state machine, fed by
:mod:`etcdadapter.store.mvcc` (the memory store's writes) or by the database's log (a
replica's), so both answer reads with the same code.

Data structures:

* ``keys``: a :class:`sortedcontainers.SortedDict` mapping each key to its history, a list
  of :class:`~etcdadapter.store.base.KV` ordered by mod_revision, tombstones included.  A
  point read at the latest revision is one dict lookup; a range walks only the keys in it.
* ``dead``: the keys of ``keys`` whose latest version is a tombstone, so that counting
  the live keys of a range at the latest revision is four bisections.
* ``log``: every committed :class:`~etcdadapter.store.base.Change`, in revision order, for
  watch replay (:meth:`Keyspace.history`).
* ``lease_keys``: lease ID -> the keys whose latest version is attached to it.
* ``latest_sub``: key -> the position among its revision's events of the key's latest
  version, for the keys where it is not 0 (a SQL store's log rows point at the row they
  supersede by (revision, sub)).
* ``compacted_subs``: key -> (revision, sub) of its oldest version when that came from a
  write with several events whose log entry compaction dropped (HashKV hashes subs).

Compaction really drops superseded versions, tombstones and log entries (only the keys
written since the previous compaction are visited).  Everything runs synchronously on the
calling (reactor) thread.

:class:`PendingView` layers uncommitted revisions over a keyspace: a SQL adapter evaluates
a batch of writes against it while the database transaction is still open, and applies
them to the keyspace only once the database committed them.
"""

import time

from sortedcontainers import SortedDict, SortedList
from twisted.logger import Logger

from etcdadapter import errors
from etcdadapter.store import mvcc
from etcdadapter.store.base import DELETE, KV, PUT, Change, Event, Purged

log = Logger()

# Bytes an entry costs beyond its key and value bytes (CPython 3.11, 64-bit, measured with
# tracemalloc): a version (KV tuple, its ints, the value's bytes header, the history list
# slot); an Event in the log; a Change in the log; a key (its bytes header, SortedDict and
# SortedList slots, the history list).  The key's bytes are shared by all its versions.
VERSION_OVERHEAD = 260
EVENT_OVERHEAD = 72
CHANGE_OVERHEAD = 84
KEY_OVERHEAD = 80

# Rough footprint of an empty keyspace's maps and lists (measured with tracemalloc).
BASE_BYTES = 4096


def bisect_revision(seq, revision, index):
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


def version_at(history, revision):
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


class Keyspace(object):
    """``revision``: the last revision applied; ``lease_exists(id)``: whether a lease is
    granted (the owner keeps leases: the memory store in memory, a SQL store in its
    database); ``on_commit(change)``: told of every change the view commits."""

    def __init__(self, revision, lease_exists=None, on_commit=None):
        self.revision = revision
        self.compact_revision = -1
        self.keys = SortedDict()
        self.dead = SortedList()
        self.log = []
        self.lease_keys = {}
        self.latest_sub = {}
        self.compacted_subs = {}
        self.bytes = 0
        #: :class:`Purged`: what the last compaction removed (None: none yet).
        self.last_purge = None
        self.on_commit = on_commit
        #: Called with a revision before the view commits it (may refuse by raising).
        self.before_commit = None
        self.view = KeyspaceView(self, lease_exists)

    @classmethod
    def restored(cls, compact_revision, latest, at_compact):
        """A keyspace compacted to ``compact_revision`` (and at that revision), built in
        one go: ``latest`` maps each key to (KV, sub) of its latest version at or below
        the compact revision (tombstones included: those keys are forgotten, as
        compaction forgets them); ``at_compact`` is the :class:`Change` of the compact
        revision itself (its events without prev_kv), or None.  The same state as
        applying every revision and compacting, without building what compaction
        drops."""
        ks = cls(compact_revision)
        ks.compact_revision = compact_revision
        live = sorted((k, v) for k, v in latest.items() if v[0].version)
        size = 0
        lease_keys = ks.lease_keys
        latest_sub = ks.latest_sub
        histories = []
        for key, (kv, sub) in live:
            histories.append([kv])
            size += len(key) + KEY_OVERHEAD + len(kv.value) + VERSION_OVERHEAD \
                + EVENT_OVERHEAD
            if kv.lease:
                attached = lease_keys.get(kv.lease)
                if attached is None:
                    attached = lease_keys[kv.lease] = set()
                attached.add(key)
            if sub:
                latest_sub[key] = sub
                if kv.mod_revision < compact_revision:
                    ks.compacted_subs[key] = (kv.mod_revision, sub)
        ks.keys = SortedDict(zip([k for k, _v in live], histories))
        if at_compact is not None:
            ks.log.append(at_compact)
            size += CHANGE_OVERHEAD
        ks.bytes = size
        return ks

    # -- applying changes ---------------------------------------------------------------
    def apply(self, change, subs=None):
        """Append one committed :class:`Change` (its revision is the next one; events in
        execution order, prev_kv filled in).  ``subs``: each event's position in its
        revision when not simply 0, 1, 2, ... (rows the purge left of an old revision)."""
        keys = self.keys
        lease_keys = self.lease_keys
        latest_sub = self.latest_sub
        dead = self.dead
        size = CHANGE_OVERHEAD
        for i, ev in enumerate(change.events):
            kv = ev.kv
            key = kv.key
            sub = i if subs is None else subs[i]
            if sub:
                latest_sub[key] = sub
            elif latest_sub:
                latest_sub.pop(key, None)
            h = keys.get(key)
            # Lease attachment follows the key's latest version.
            if h is not None and h[-1].lease:
                attached = lease_keys.get(h[-1].lease)
                if attached is not None:
                    attached.discard(key)
                    if not attached:
                        del lease_keys[h[-1].lease]
            if kv.lease and kv.version:
                attached = lease_keys.get(kv.lease)
                if attached is None:
                    attached = lease_keys[kv.lease] = set()
                attached.add(key)
            if h is None:
                keys[key] = [kv]
                size += len(key) + KEY_OVERHEAD
                if not kv.version:
                    dead.add(key)
            else:
                if not h[-1].version:
                    if kv.version:
                        dead.remove(key)
                elif not kv.version:
                    dead.add(key)
                h.append(kv)
            size += len(kv.value) + VERSION_OVERHEAD + EVENT_OVERHEAD
        self.log.append(change)
        self.bytes += size
        self.revision = change.revision

    def complete(self, revision, rows):
        """The :class:`Change` of ``revision`` from its log rows (``(sub, name,
        create_revision, version, value, lease)`` in event order), with each event's
        prev_kv -- the key at ``revision - 1``, none for a creation -- read from this
        keyspace, which must hold every revision below ``revision``.  A key's versions
        share one bytes object."""
        keys = self.keys
        events = []
        below = revision - 1
        for _sub, name, create_revision, version, value, lease in rows:
            h = keys.get(name)
            prev = None
            if h is not None:
                name = h[0].key
                if not version or create_revision != revision:
                    prev = version_at(h, below)
            if version:
                events.append(Event(PUT, KV(name, create_revision, revision, version,
                                            value, lease), prev))
            else:
                events.append(Event(DELETE, KV(name, 0, revision, 0, b"", 0), prev))
        return Change(revision, tuple(events))

    # -- reads ----------------------------------------------------------------------------
    def history(self, start_revision, key, range_end, limit_revisions=1000):
        """Store.history over the log (raises ErrCompacted below the compact revision;
        negative start revisions only once something has been compacted, as etcd)."""
        if self.compact_revision >= 0 and start_revision < self.compact_revision:
            raise errors.ErrCompacted()
        logl = self.log
        i = bisect_revision(logl, start_revision, 0)
        return mvcc.select_history(
            (logl[n] for n in range(i, len(logl))), key, range_end, limit_revisions)

    def size(self):
        """Bytes the keyspace takes, as counted by its overhead constants."""
        return self.bytes + BASE_BYTES

    def frozen(self):
        """A :class:`Frozen` snapshot of this keyspace, for reading in another thread."""
        return Frozen(self)

    # -- compaction -------------------------------------------------------------------------
    def compact(self, revision, quiet=False):
        """Drop what reads at or above ``revision`` never need (see
        :meth:`mvcc.WriteView.compact`); returns what went as :class:`Purged` (logged
        unless ``quiet``)."""
        started = time.monotonic()
        keys = self.keys
        logl = self.log
        j = bisect_revision(logl, revision, 0)        # first change at >= revision
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
        subs = self.compacted_subs
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
                self.dead.remove(key)
                self.latest_sub.pop(key, None)
                freed += len(key) + KEY_OVERHEAD
                forgotten += 1
        del logl[:j]
        if logl and logl[0].revision == revision:
            # etcd reads a watch event's prev_kv at revision - 1: compacted now.
            change = logl[0]
            if any(ev.prev_kv is not None for ev in change.events):
                logl[0] = Change(revision, tuple(ev._replace(prev_kv=None)
                                                 for ev in change.events))
        self.bytes -= freed
        self.compact_revision = revision
        seconds = time.monotonic() - started
        self.last_purge = Purged(revision, versions, forgotten, seconds)
        if (versions or forgotten) and not quiet:
            log.info("compaction to revision {revision}: removed {versions} old versions "
                     "and {keys} keys in {seconds:.3f}s", revision=revision,
                     versions=versions, keys=forgotten, seconds=seconds)
        return self.last_purge


class KeyspaceView(mvcc.WriteView):
    """The mvcc view of a :class:`Keyspace`.  Always current: everything runs on one
    thread and mvcc functions run to completion before anything else touches it."""

    __slots__ = ("ks", "_lease_exists")

    def __init__(self, keyspace, lease_exists):
        self.ks = keyspace
        self._lease_exists = lease_exists

    @property
    def revision(self):
        return self.ks.revision

    @property
    def compact_revision(self):
        return self.ks.compact_revision

    def get(self, key, revision):
        h = self.ks.keys.get(key)
        if h is None:
            return None
        kv = h[-1]
        if kv.mod_revision <= revision:      # the hot case: the key's latest version
            return kv if kv.version else None
        return version_at(h, revision)

    def _iter_keys(self, key, range_end):
        keys = self.ks.keys
        if range_end == mvcc.ALL_KEYS:
            return keys.irange(key)
        if range_end <= key:
            return ()
        return keys.irange(key, range_end, inclusive=(True, False))

    def range(self, key, range_end, revision, limit=0):
        if not range_end:
            kv = self.get(key, revision)
            return [kv] if kv is not None else []
        keys = self.ks.keys
        out = []
        for k in self._iter_keys(key, range_end):
            kv = version_at(keys[k], revision)
            if kv is not None:
                out.append(kv)
                if len(out) == limit:
                    break
        return out

    def count(self, key, range_end, revision):
        if not range_end:
            return 1 if self.get(key, revision) is not None else 0
        ks = self.ks
        keys = ks.keys
        if revision >= ks.revision:
            # Latest: keys in range minus the deleted ones, two bisections each.
            dead = ks.dead
            if range_end == mvcc.ALL_KEYS:
                return ((len(keys) - keys.bisect_left(key))
                        - (len(dead) - dead.bisect_left(key)))
            if range_end <= key:
                return 0
            return ((keys.bisect_left(range_end) - keys.bisect_left(key))
                    - (dead.bisect_left(range_end) - dead.bisect_left(key)))
        n = 0
        for k in self._iter_keys(key, range_end):
            if version_at(keys[k], revision) is not None:
                n += 1
        return n

    def lease_exists(self, lease_id):
        return self._lease_exists(lease_id)

    def commit(self, revision, events):
        ks = self.ks
        if ks.before_commit is not None:
            ks.before_commit(revision)
        change = Change(revision, tuple(events))
        ks.apply(change)
        if ks.on_commit is not None:
            ks.on_commit(change)

    def compact(self, revision):
        self.ks.compact(revision)


class PendingView(mvcc.WriteView):
    """A keyspace plus revisions committed in this view only (a batch of writes whose
    database transaction is still open).  The keyspace must not change while the view is
    in use; :attr:`changes` holds the view's commits, to apply to the keyspace once the
    database has them.  ``lease_exists(id)`` answers for the view's moment;
    ``validate(events)``, if given, may refuse a commit by raising."""

    def __init__(self, keyspace, lease_exists, validate=None):
        self.keyspace = keyspace
        self.base = keyspace.view
        self.base_revision = self.base.revision
        self.revision = self.base.revision
        self.compact_revision = self.base.compact_revision
        self._lease_exists = lease_exists
        self._validate = validate
        self.pending = SortedDict()      # key -> its versions written in this view
        self.changes = []

    def get(self, key, revision):
        if revision > self.base_revision:
            versions = self.pending.get(key)
            if versions is not None:
                for kv in reversed(versions):
                    if kv.mod_revision <= revision:
                        return kv if kv.version else None
            revision = self.base_revision
        return self.base.get(key, revision)

    def _mine(self, key, range_end, revision):
        """(key, KV at revision or None) of this view's keys in range, in key order,
        for keys this view wrote at or below ``revision``."""
        pending = self.pending
        if not range_end:
            keys = (key,) if key in pending else ()
        elif range_end == mvcc.ALL_KEYS:
            keys = pending.irange(key)
        elif range_end <= key:
            keys = ()
        else:
            keys = pending.irange(key, range_end, inclusive=(True, False))
        out = []
        for k in keys:
            versions = pending[k]
            if versions[0].mod_revision > revision:
                continue
            out.append((k, self.get(k, revision)))
        return out

    def range(self, key, range_end, revision, limit=0):
        if revision <= self.base_revision or not self.pending:
            return self.base.range(key, range_end, min(revision, self.base_revision), limit)
        mine = self._mine(key, range_end, revision)
        if not mine:
            return self.base.range(key, range_end, self.base_revision, limit)
        # Each key of ours hides at most one base KV: limit + that many base KVs are
        # enough for the first ``limit`` merged ones.
        base = self.base.range(key, range_end, self.base_revision,
                               limit + len(mine) if limit > 0 else 0)
        own = dict(mine)
        out = [kv for kv in base if kv.key not in own]
        out.extend(kv for kv in own.values() if kv is not None)
        out.sort(key=lambda kv: kv.key)
        if limit > 0:
            del out[limit:]
        return out

    def count(self, key, range_end, revision):
        if revision <= self.base_revision or not self.pending:
            return self.base.count(key, range_end, min(revision, self.base_revision))
        n = self.base.count(key, range_end, self.base_revision)
        base_rev = self.base_revision
        for k, kv in self._mine(key, range_end, revision):
            n += (1 if kv is not None else 0) - (
                1 if self.base.get(k, base_rev) is not None else 0)
        return n

    def lease_exists(self, lease_id):
        return self._lease_exists(lease_id)

    def lease_keys(self, lease_id):
        """The keys attached to ``lease_id`` as of this view's revision."""
        keys = set(self.keyspace.lease_keys.get(lease_id, ()))
        for k, versions in self.pending.items():
            if versions[-1].version and versions[-1].lease == lease_id:
                keys.add(k)
            else:
                keys.discard(k)
        return keys

    def commit(self, revision, events):
        if self._validate is not None:
            self._validate(events)
        pending = self.pending
        for ev in events:
            kv = ev.kv
            versions = pending.get(kv.key)
            if versions is None:
                pending[kv.key] = [kv]
            else:
                versions.append(kv)
        self.changes.append(Change(revision, tuple(events)))
        self.revision = revision

    def compact(self, revision):
        raise AssertionError("compaction does not run in a batch of writes")


class Frozen(mvcc.ReadView):
    """What HashKV reads of a keyspace, taken at once on the reactor thread (copies of the
    key map, the log and the sub-revisions; the history lists are shared: the keyspace
    only appends to them, and compaction replaces them) and read in a thread."""

    def __init__(self, ks):
        self.revision = ks.revision
        self.compact_revision = ks.compact_revision
        self.histories = dict.copy(ks.keys)
        self.log = list(ks.log)
        self.subs = dict(ks.compacted_subs)

    def versions(self, after, upto):
        logl = self.log
        for i in range(bisect_revision(logl, after + 1, 0), len(logl)):
            change = logl[i]
            if change.revision > upto:
                break
            for sub, ev in enumerate(change.events):
                yield sub, ev.kv

    def _sub(self, kv):
        logl = self.log
        i = bisect_revision(logl, kv.mod_revision, 0)
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
            kv = version_at(h, at)
            if kv is not None and kv.mod_revision <= upto:
                out.append((kv.mod_revision, self._sub(kv), kv))
        out.sort(key=lambda t: t[:2])
        return [(sub, kv) for _rev, sub, kv in out]

    def any_live(self, at):
        return any(version_at(h, at) is not None for h in self.histories.values())
