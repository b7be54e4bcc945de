"""The SQL store's :meth:`~etcdadapter.store.base.Store.import_history`: one write
transaction that fills the empty tables (:mod:`.schema`) as if the adapter had lived
through the history and purged a compaction: ``etcd_log`` rows at their exact revision
and sub-revision, each pointing at the row it superseded (prev_revision, prev_sub),
``etcd_current``, the counter row at the history's revision and compact revision, the
purge marked as done, the leases and the auth state."""

from etcdadapter.store import importing
from etcdadapter.store.sql.replica import read_meta
from etcdadapter.store.sql.schema import AUTH, COMPACTION, CURRENT, LEASE, LOG, META

ROWS_PER_STATEMENT = 500

_LOG_INSERT = ("INSERT INTO " + LOG + " (revision, sub, name, create_revision, version, "
               "value, lease, prev_revision, prev_sub) VALUES "
               "(%s, %s, %s, %s, %s, %s, %s, %s, %s)")
_CURRENT_INSERT = ("INSERT INTO " + CURRENT + " (name, revision, sub, version, lease) "
                   "VALUES (%s, %s, %s, %s, %s)")


def _refuse_non_empty(tx):
    for table, what in ((LOG, "keys or history"), (LEASE, "leases"), (AUTH, "auth state")):
        if tx.one("SELECT 1 FROM " + table + " LIMIT 1") is not None:
            raise importing.StoreNotEmpty(what)


def write(tx, dialect, history, now_ms):
    """Inside a write transaction: the whole import (StoreNotEmpty if there is data)."""
    read_meta(tx, dialect.counter_lock)          # the counter lock, like every writer
    _refuse_non_empty(tx)
    # key -> (revision, sub, version, lease, base): its newest row, and ``base`` =
    # (revision, sub, version) of its newest row below that revision (prev_kv's row).
    state = {}
    rows = []
    top = -1
    for sub, kv in importing.ordered(history.versions()):
        revision = kv.mod_revision
        top = revision
        entry = state.get(kv.key)
        if entry is None:
            base = None
        elif entry[0] == revision:
            base = entry[4]                      # the same write touched the key before
        else:
            base = entry[:3]
        prev = (0, 0)
        if base is not None and base[2] and (not kv.version
                                              or kv.create_revision != revision):
            prev = base[:2]
        state[kv.key] = (revision, sub, kv.version, kv.lease, base)
        rows.append((revision, sub, kv.key, kv.create_revision, kv.version, kv.value,
                     kv.lease, prev[0], prev[1]))
        if len(rows) >= ROWS_PER_STATEMENT:
            tx.many(_LOG_INSERT, rows)
            rows = []
    if rows:
        tx.many(_LOG_INSERT, rows)
    if top > history.revision:
        raise importing.HistoryError("the history goes up to revision %d, above its "
                                     "revision %d" % (top, history.revision))
    current = []
    for key, (revision, sub, version, lease, _base) in state.items():
        current.append((key, revision, sub, version, lease if version else 0))
        if len(current) >= ROWS_PER_STATEMENT:
            tx.many(_CURRENT_INSERT, current)
            current = []
    if current:
        tx.many(_CURRENT_INSERT, current)
    compact = history.compact_revision
    tx.run("UPDATE " + META + " SET revision = %s, compact_revision = %s WHERE id = 1",
           (history.revision, compact))
    if compact >= 0:
        # Nothing for the purge to do: the history holds only what compaction keeps.
        tx.run("UPDATE " + COMPACTION + " SET purged_revision = %s, purge_cursor = %s "
               "WHERE id = 1", (compact, compact + 1))
    leases = [(lease_id, ttl, now_ms + ttl * 1000) for lease_id, ttl in history.leases]
    if leases:
        tx.many("INSERT INTO " + LEASE + " (id, ttl, expiry) VALUES (%s, %s, %s)", leases)
    if history.auth_blob is not None:
        tx.run("INSERT INTO " + AUTH + " (id, data) VALUES (1, %s)", (history.auth_blob,))
    return len(state)
