"""The mvcc views (:class:`~etcdadapter.store.mvcc.ReadView` / ``WriteView``) over one SQL
transaction, and the queries that rebuild watch events from the log.

A :class:`SQLReadView` lives inside a read transaction (a consistent snapshot): it reads the
revision counter once, then answers reads at that revision from ``etcd_current`` joined to
``etcd_log`` and older reads from ``etcd_log`` alone.  A :class:`SQLWriteView` lives inside a
write transaction that has locked the counter row, so nothing changes underneath while the
mvcc function runs; :meth:`SQLWriteView.commit` appends the log rows, moves
``etcd_current`` and bumps the counter (the caller then commits the transaction).
"""

from etcdadapter import errors
from etcdadapter.store import mvcc
from etcdadapter.store.base import DELETE, KV, PUT, Change, Event
from etcdadapter.store.sql.schema import CURRENT, LEASE, LOG, META

ALL_KEYS = mvcc.ALL_KEYS

# A version as the views select it: KV fields, then sub.
_COLS = "l.name, l.create_revision, l.revision, l.version, l.value, l.lease, l.sub"

_LATEST = ("SELECT " + _COLS + " FROM " + CURRENT + " c JOIN " + LOG + " l "
           "ON l.revision = c.revision AND l.sub = c.sub WHERE ")

# l is the newest row of its key at or below revision %s.
_NEWEST_AT = ("NOT EXISTS (SELECT 1 FROM " + LOG + " n WHERE n.name = l.name "
              "AND n.revision <= %s AND (n.revision > l.revision "
              "OR (n.revision = l.revision AND n.sub > l.sub)))")

_EVENT_COLS = ("l.revision, l.sub, l.name, l.create_revision, l.version, l.value, "
               "l.lease, p.create_revision, p.revision, p.version, p.value, p.lease")
_EVENTS = ("SELECT " + _EVENT_COLS + " FROM " + LOG + " l LEFT JOIN " + LOG + " p "
           "ON p.revision = l.prev_revision AND p.sub = l.prev_sub AND l.prev_revision > 0 ")

_META = "SELECT revision, compact_revision FROM " + META + " WHERE id = 1"

HASH_BATCH = 2000           # log rows per query of HashKV


def key_bounds(col, key, range_end):
    """(SQL condition on column ``col``, parameters) for ``key``/``range_end`` (etcd range
    rules), or None when the range is empty."""
    if not range_end:
        return col + " = %s", [key]
    if range_end == ALL_KEYS:
        return col + " >= %s", [key]
    if range_end <= key:
        return None
    return col + " >= %s AND " + col + " < %s", [key, range_end]


def key_too_long(dialect, size):
    """etcd's error for a request that is too large (InvalidArgument), saying which limit:
    the key column and its B-tree indexes of MySQL/MariaDB/TiDB and PostgreSQL take keys
    of at most ``max_key_bytes`` (etcd itself takes any key a request can carry)."""
    return errors.ErrRequestTooLarge(message=(
        "etcdserver: request is too large: key of %d bytes, the %s store takes keys of "
        "at most %d bytes" % (size, dialect.name, dialect.max_key_bytes)))


def _kv(row):
    return KV(bytes(row[0]), row[1], row[2], row[3], bytes(row[4]), row[5])


def read_meta(tx, lock=""):
    row = tx.one(_META + lock)
    if row is None:
        raise RuntimeError("etcd_meta has no row: the schema was not created")
    return row[0], row[1]


class SQLReadView(mvcc.ReadView):
    """A snapshot: ``revision`` and ``compact_revision`` as of the transaction start."""

    def __init__(self, tx, dialect, lock=""):
        self.tx = tx
        self.dialect = dialect
        self.revision, self.compact_revision = read_meta(tx, lock)
        # name -> (revision, sub) of the latest row, for every key read at the latest
        # revision: commit() points the new rows' prev_kv at them.
        self.latest_rows = {}

    def get(self, key, revision):
        if revision >= self.revision:
            row = self.tx.one(_LATEST + "c.name = %s AND c.version > 0", (key,))
            if row is None:
                return None
            self.latest_rows[key] = (row[2], row[6])
            return _kv(row)
        row = self.tx.one("SELECT name, create_revision, revision, version, value, lease, "
                          "sub FROM " + LOG + " WHERE name = %s AND revision <= %s "
                          "ORDER BY revision DESC, sub DESC LIMIT 1", (key, revision))
        if row is None or not row[3]:
            return None
        return _kv(row)

    def range(self, key, range_end, revision, limit=0):
        if not range_end:
            kv = self.get(key, revision)
            return [kv] if kv is not None else []
        tail = " LIMIT %d" % limit if limit > 0 else ""
        if revision >= self.revision:
            b = key_bounds("c.name", key, range_end)
            if b is None:
                return []
            rows = self.tx.all(_LATEST + b[0] + " AND c.version > 0 ORDER BY c.name" + tail,
                               b[1])
            latest = self.latest_rows
            out = []
            for row in rows:
                kv = _kv(row)
                latest[kv.key] = (row[2], row[6])
                out.append(kv)
            return out
        b = key_bounds("l.name", key, range_end)
        if b is None:
            return []
        rows = self.tx.all("SELECT " + _COLS + " FROM " + LOG + " l WHERE " + b[0]
                           + " AND l.revision <= %s AND l.version > 0 AND " + _NEWEST_AT
                           + " ORDER BY l.name" + tail, b[1] + [revision, revision])
        return [_kv(row) for row in rows]

    def count(self, key, range_end, revision):
        if not range_end:
            return 1 if self.get(key, revision) is not None else 0
        if revision >= self.revision:
            b = key_bounds("c.name", key, range_end)
            if b is None:
                return 0
            return self.tx.one("SELECT COUNT(*) FROM " + CURRENT + " c WHERE " + b[0]
                               + " AND c.version > 0", b[1])[0]
        b = key_bounds("l.name", key, range_end)
        if b is None:
            return 0
        return self.tx.one("SELECT COUNT(*) FROM " + LOG + " l WHERE " + b[0]
                           + " AND l.revision <= %s AND l.version > 0 AND " + _NEWEST_AT,
                           b[1] + [revision, revision])[0]


    # -- HashKV: every version, read in batches (ordered by the primary key) -----------
    def _batches(self, sql, params):
        """Rows of ``sql`` (which selects _COLS from ``l`` and ends in a WHERE clause)
        in (revision, sub) order, HASH_BATCH at a time."""
        last = None
        while True:
            if last is None:
                cond, args = "", []
            else:
                cond = " AND (l.revision > %s OR (l.revision = %s AND l.sub > %s))"
                args = [last[0], last[0], last[1]]
            rows = self.tx.all(sql + cond + " ORDER BY l.revision, l.sub LIMIT %d"
                               % HASH_BATCH, list(params) + args)
            for row in rows:
                yield row[6], _kv(row)
            if len(rows) < HASH_BATCH:
                return
            last = (rows[-1][2], rows[-1][6])

    def versions(self, after, upto):
        return self._batches("SELECT " + _COLS + " FROM " + LOG + " l WHERE "
                             "l.revision > %s AND l.revision <= %s", (after, upto))

    def live_versions(self, upto, at):
        if at >= self.revision:
            # Walk the log by its primary key; a row is live if etcd_current points at it.
            return self._batches("SELECT " + _COLS + " FROM " + LOG + " l JOIN " + CURRENT
                                 + " c ON c.name = l.name AND c.revision = l.revision "
                                 "AND c.sub = l.sub WHERE c.version > 0 AND "
                                 "l.revision <= %s", (upto,))
        return self._batches("SELECT " + _COLS + " FROM " + LOG + " l WHERE "
                             "l.revision <= %s AND l.version > 0 AND " + _NEWEST_AT,
                             (upto, at))

    def any_live(self, at):
        if at >= self.revision:
            return self.tx.one("SELECT 1 FROM " + CURRENT + " WHERE version > 0 LIMIT 1") \
                is not None
        return self.count(b"\0", ALL_KEYS, at) > 0


class SQLWriteView(SQLReadView, mvcc.WriteView):
    """Inside a write transaction that holds the lock on the revision counter."""

    def __init__(self, tx, dialect):
        SQLReadView.__init__(self, tx, dialect, dialect.counter_lock)
        self.committed = None            # (revision, events) once commit() ran

    def lease_exists(self, lease_id):
        return self.tx.one("SELECT 1 FROM " + LEASE + " WHERE id = %s", (lease_id,)) \
            is not None

    def _latest_row(self, key):
        pos = self.latest_rows.get(key)
        if pos is None:
            row = self.tx.one("SELECT revision, sub FROM " + CURRENT + " WHERE name = %s",
                              (key,))
            pos = (row[0], row[1])
        return pos

    def commit(self, revision, events):
        d = self.dialect
        limit = d.max_key_bytes
        log_rows = []
        current = {}
        for sub, ev in enumerate(events):
            kv = ev.kv
            if limit is not None and len(kv.key) > limit:
                raise key_too_long(d, len(kv.key))
            prev = ev.prev_kv
            if prev is not None:
                # prev_kv is the key at revision - 1: the row etcd_current points at now.
                prev_rev, prev_sub = self._latest_row(kv.key)
                if prev_rev != prev.mod_revision:
                    raise AssertionError("prev_kv of %r is not the latest row" % (kv.key,))
            else:
                prev_rev = prev_sub = 0
            log_rows.append((revision, sub, kv.key, kv.create_revision, kv.version,
                             kv.value, kv.lease, prev_rev, prev_sub))
            current[kv.key] = (kv.key, revision, sub, kv.version, kv.lease)
        tx = self.tx
        tx.many("INSERT INTO " + LOG + " (revision, sub, name, create_revision, version, "
                "value, lease, prev_revision, prev_sub) VALUES "
                "(%s, %s, %s, %s, %s, %s, %s, %s, %s)", log_rows)
        tx.many(d.upsert(CURRENT, ["name", "revision", "sub", "version", "lease"], "name"),
                list(current.values()))
        tx.run("UPDATE " + META + " SET revision = %s WHERE id = 1", (revision,))
        self.revision = revision
        self.committed = (revision, events)

    def compact(self, revision):
        # Only the revision, in this short transaction: every instance answers below it
        # with ErrCompacted from now on, and reads at or above it never need the rows
        # below it.  Deleting those rows is garbage collection, done afterwards in
        # small batches (:mod:`.purge`) so that writers never wait for all of it.
        self.tx.run("UPDATE " + META + " SET compact_revision = %s WHERE id = 1",
                    (revision,))
        self.compact_revision = revision


# ---------------------------------------------------------------------------------------
# Events from the log (change feed and watch history)

def changes_from_rows(rows, compact_revision):
    """Rows of an ``_EVENTS`` query (ordered by revision, sub) -> [Change].  prev_kv is
    left out at or below the compact revision (etcd reads it at revision - 1)."""
    out = []
    events = []
    rev = None
    for r in rows:
        revision = r[0]
        if revision != rev:
            if events:
                out.append(Change(rev, tuple(events)))
            events = []
            rev = revision
        key = bytes(r[2])
        if r[4]:
            kv = KV(key, r[3], revision, r[4], bytes(r[5]), r[6])
            etype = PUT
        else:
            kv = KV(key, 0, revision, 0, b"", 0)
            etype = DELETE
        prev = None
        if r[8] is not None and revision > compact_revision:
            prev = KV(key, r[7], r[8], r[9], bytes(r[10]), r[11])
        events.append(Event(etype, kv, prev))
    if events:
        out.append(Change(rev, tuple(events)))
    return out


def poll_changes(tx, after, limit):
    """The committed changes after revision ``after``, oldest first, at most about
    ``limit`` rows but always whole revisions: (changes, revision, compact_revision,
    more) where ``more`` says that more changes may follow."""
    revision, compact = read_meta(tx)
    if revision <= after:
        return [], revision, compact, False
    rows = list(tx.all(_EVENTS + "WHERE l.revision > %s ORDER BY l.revision, l.sub "
                       "LIMIT %s", (after, limit)))
    more = False
    if len(rows) >= limit:
        more = True
        last = rows[-1][0]
        if rows[0][0] == last:
            # One revision larger than the batch: take all of it.
            rows.extend(tx.all(_EVENTS + "WHERE l.revision = %s AND l.sub > %s "
                               "ORDER BY l.sub", (last, rows[-1][1])))
        else:
            while rows[-1][0] == last:
                rows.pop()
    return changes_from_rows(rows, compact), revision, compact, more


def read_history(tx, start_revision, key, range_end, limit_revisions):
    """Store.history in one snapshot."""
    _revision, compact = read_meta(tx)
    if compact >= 0 and start_revision < compact:
        raise errors.ErrCompacted
    if limit_revisions <= 0:
        return []
    b = key_bounds("l.name", key, range_end)
    if b is None:
        return []
    cond = b[0]
    params = list(b[1]) + [start_revision]
    # The last revision of the batch: the limit_revisions-th distinct one in range.
    upper = tx.one("SELECT l.revision FROM " + LOG + " l WHERE " + cond
                   + " AND l.revision >= %s GROUP BY l.revision ORDER BY l.revision "
                   "LIMIT 1 OFFSET %s", params + [limit_revisions - 1])
    sql = _EVENTS + "WHERE " + cond + " AND l.revision >= %s"
    if upper is not None:
        sql += " AND l.revision <= %s"
        params.append(upper[0])
    rows = tx.all(sql + " ORDER BY l.revision, l.sub", params)
    return changes_from_rows(rows, compact)
