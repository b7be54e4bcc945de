"""Filling an empty store with a given history (an etcd snapshot restored into a store):
every retained version at its exact revision and sub-revision, the compact revision,
leases and the auth state, through :meth:`Store.import_history
<etcdadapter.store.base.Store.import_history>`, which the memory store and the SQL store
implement (:mod:`etcdadapter.store.sql.importing`).

The history is etcd's view of it: at or below the compact revision only each key's
version live at the compact revision (what compaction keeps), above it every version,
tombstones included, in (revision, sub) order.
"""

from collections import namedtuple

from etcdadapter.store.base import DELETE, PUT, Change, Event
from etcdadapter.store.keyspace import Keyspace
from etcdadapter.store.sql.replica import subs_of

#: ``revision``: the store's current revision afterwards (at least the newest version's);
#: ``compact_revision``: -1 when nothing was compacted; ``versions()``: a fresh iterator
#: of (sub, KV) in (revision, sub) order (a tombstone is ``KV(key, 0, rev, 0, b"", 0)``);
#: ``leases``: (ID, granted TTL) pairs -- each starts its full TTL at the import, as in
#: a restored etcd; ``auth_blob``: the :mod:`~etcdadapter.security.auth_store` state, or
#: None.
Imported = namedtuple("Imported", "revision compact_revision versions leases auth_blob")


class StoreNotEmpty(Exception):
    """The target store already holds keys, history, leases or auth state."""

    def __init__(self, what):
        Exception.__init__(self, "the target store is not empty (%s): a restore fills "
                                 "an empty store only" % what)


class HistoryError(ValueError):
    """The history cannot be imported (out of order, revision mismatch)."""


def ordered(versions):
    """``versions``, checked: (revision, sub) strictly increasing."""
    previous = (-1, -1)
    for sub, kv in versions:
        at = (kv.mod_revision, sub)
        if at <= previous:
            raise HistoryError("versions out of order at revision %d" % kv.mod_revision)
        previous = at
        yield sub, kv


def by_revision(versions):
    """(revision, [(sub, KV)]) groups of ``versions``."""
    current = None
    group = []
    for sub, kv in versions:
        if kv.mod_revision != current:
            if group:
                yield current, group
            current = kv.mod_revision
            group = []
        group.append((sub, kv))
    if group:
        yield current, group


def build_keyspace(history):
    """The :class:`Keyspace` holding ``history`` -- the state a store that lived through
    it and compacted would hold: the same reads at every retained revision, the same
    watch history (events with their prev_kv), the same compact revision."""
    compact = history.compact_revision
    latest = {}
    at_compact = []
    ks = None
    for revision, group in by_revision(ordered(history.versions())):
        if compact >= 0 and revision <= compact:
            for sub, kv in group:
                latest[kv.key] = (kv, sub)
                if revision == compact:
                    at_compact.append(Event(PUT if kv.version else DELETE, kv, None))
            continue
        if ks is None:
            ks = _start(compact, latest, at_compact, revision - 1)
        rows = [(sub, kv.key, kv.create_revision, kv.version, kv.value, kv.lease)
                for sub, kv in group]
        ks.apply(ks.complete(revision, rows), subs_of(rows))
    if ks is None:
        ks = _start(compact, latest, at_compact, max(history.revision, 0))
    if history.revision < ks.revision:
        raise HistoryError("the history goes up to revision %d, above its revision %d"
                           % (ks.revision, history.revision))
    ks.revision = history.revision
    return ks


def _start(compact, latest, at_compact, below_first):
    if compact >= 0:
        return Keyspace.restored(compact, latest, Change(compact, tuple(at_compact))
                                 if at_compact else None)
    return Keyspace(below_first)
