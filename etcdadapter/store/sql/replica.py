"""Reading the database's log into an in-memory replica (:class:`~etcdadapter.store.
keyspace.Keyspace`), and the few other queries the replica needs.

The log (``etcd_log``) is append-only above the compact revision and every revision is
committed under the counter lock, in order: a snapshot holding revision N holds every
revision below it.  So a replica is the log applied in ``(revision, sub)`` order:
:func:`load` does that at start (and after falling behind a purge), :func:`poll` brings
it forward.  Below the compact revision the purge (:mod:`.purge`) deletes superseded rows
in batches; a replica that has not applied a revision the purge has already walked past
may have lost rows, which :func:`poll` reports as ``behind`` (the store then loads
afresh).
"""

from etcdadapter.store.base import DELETE, KV, PUT, Change, Event
from etcdadapter.store.keyspace import Keyspace
from etcdadapter.store.sql.schema import COMPACTION, LOG, META

_META = "SELECT revision, compact_revision FROM " + META + " WHERE id = 1"
#: The counter row's SELECT, to which a dialect's ``counter_lock`` is appended.
META_LOCK = _META
_PURGE = "SELECT purged_revision, purge_cursor FROM " + COMPACTION + " WHERE id = 1"
_ROWS = ("SELECT revision, sub, name, create_revision, version, value, lease FROM " + LOG
         + " WHERE revision > %s AND revision <= %s ORDER BY revision, sub LIMIT %s")
_REST = ("SELECT revision, sub, name, create_revision, version, value, lease FROM " + LOG
         + " WHERE revision = %s AND sub > %s ORDER BY sub")

PAGE = 5000           # log rows per query when loading


def read_meta(tx, lock=""):
    """(revision, compact_revision) of the counter row (``lock``: the dialect's FOR
    UPDATE, to take the counter lock)."""
    row = tx.one(_META + lock)
    if row is None:
        raise RuntimeError("etcd_meta has no row: the schema was not created")
    return row[0], row[1]


def purged_through(tx):
    """The highest log revision the purge has walked (rows at or below it may be gone;
    nothing above it was touched)."""
    purged, cursor = tx.one(_PURGE)
    return max(purged, cursor - 1)


def read_revisions(tx, after, upto, limit):
    """The log rows of revisions after..upto, whole revisions, about ``limit`` rows at
    most (one larger revision is taken whole): ([(revision, [(sub, name, create_revision,
    version, value, lease)])], more)."""
    rows = tx.all(_ROWS, (after, upto, limit))
    more = False
    if len(rows) >= limit:
        more = True
        last = rows[-1][0]
        if rows[0][0] == last:
            rows = list(rows)
            rows.extend(tx.all(_REST, (last, rows[-1][1])))
        else:
            rows = list(rows)
            while rows[-1][0] == last:
                rows.pop()
    out = []
    current = None
    for r in rows:
        if r[0] != current:
            current = r[0]
            batch = []
            out.append((current, batch))
        batch.append((r[1], bytes(r[2]), r[3], r[4], bytes(r[5]), r[6]))
    return out, more


def poll(tx, after, limit):
    """What a replica at revision ``after`` is missing, in one snapshot: (revisions (as
    read_revisions), revision, compact_revision, more, behind).  ``behind``: the purge
    walked past ``after``, so rows the replica needs may be gone (nothing is returned)."""
    revision, compact = read_meta(tx)
    if revision <= after:
        return [], revision, compact, False, False
    if compact > after and purged_through(tx) > after:
        return [], revision, compact, False, True
    revisions, more = read_revisions(tx, after, revision, limit)
    return revisions, revision, compact, more, False


def load(tx, page=PAGE):
    """A :class:`Keyspace` holding the database's state as of one snapshot (run in a
    read transaction): at or below the compact revision only each key's latest version
    matters (what the purge has not deleted yet is skipped), above it every revision is
    applied in order."""
    revision, compact = read_meta(tx)
    after = -1
    ks = None
    if compact >= 0:
        latest = {}
        at_compact = []
        while True:
            revisions, more = read_revisions(tx, after, compact, page)
            for rev, rows in revisions:
                for row in rows:
                    sub, name, create_revision, version, value, lease = row
                    if version:
                        kv = KV(name, create_revision, rev, version, value, lease)
                    else:
                        kv = KV(name, 0, rev, 0, b"", 0)
                    latest[name] = (kv, sub)
                    if rev == compact:
                        at_compact.append(Event(PUT if version else DELETE, kv, None))
            if not more:
                break
            after = revisions[-1][0]
        ks = Keyspace.restored(compact, latest, Change(compact, tuple(at_compact))
                               if at_compact else None)
        after = compact
    else:
        ks = Keyspace(0)
    while True:
        revisions, more = read_revisions(tx, after, revision, page)
        for rev, rows in revisions:
            ks.apply(ks.complete(rev, rows), subs_of(rows))
        if not more:
            break
        after = revisions[-1][0]
    ks.revision = revision
    return ks


def subs_of(rows):
    """The subs of a revision's rows for :meth:`Keyspace.apply`: None when they are 0, 1,
    2, ... (always, except for old revisions the purge thinned)."""
    for i, row in enumerate(rows):
        if row[0] != i:
            return tuple(r[0] for r in rows)
    return None
