"""A SQL store that follows a live etcd (``etcd-adapter migrate``, :mod:`etcdadapter.migrate`).

The mark: while a migration is in progress, ``etcd_meta`` holds a second row, ``id = 2``,
besides the revision counter (``id = 1``): its ``revision`` is the etcd revision the
migration copied, its ``compact_revision`` is 1 once a cut-over has been requested, else
0.  Adapters on the store read it (:class:`MigrationMark`) and refuse every write while
it is there -- writes still go to etcd, whose revisions the follower copies; the
cut-over deletes the row and writes are accepted again, continuing at etcd's revision + 1.
No schema change: every other reader of ``etcd_meta`` selects ``id = 1``.

:func:`apply` writes etcd's events at etcd's revisions, one transaction for a batch of
whole revisions, under the counter lock, exactly as the adapter's own write batches
would have written them (log rows with their prev pointers, ``etcd_current``, the
counter), so the adapters' change feeds deliver them as they deliver their own.
"""

from twisted.internet import defer, task
from twisted.logger import Logger

from etcdadapter.errors import EtcdError, StatusCode
from etcdadapter.store.sql.replica import read_meta
from etcdadapter.store.sql.schema import AUTH, CURRENT, LEASE, LOG, META

log = Logger()

MARK_ID = 2
#: How often an adapter re-reads the mark (seconds): after a cut-over its writes are
#: accepted within this time.
MARK_POLL_INTERVAL = 0.5

MIGRATION_MESSAGE = "etcdserver: migration in progress: writes go to etcd until cut-over"

_MARK = "SELECT revision, compact_revision FROM " + META + " WHERE id = %d" % MARK_ID
_LOG_INSERT = ("INSERT INTO " + LOG + " (revision, sub, name, create_revision, version, "
               "value, lease, prev_revision, prev_sub) VALUES "
               "(%s, %s, %s, %s, %s, %s, %s, %s, %s)")


def ErrMigrationInProgress():
    return EtcdError(StatusCode.UNAVAILABLE, MIGRATION_MESSAGE)


class FollowError(Exception):
    """The store is not where the follower expects it (another writer, a cut-over)."""


# -- the mark ------------------------------------------------------------------------

def read_mark(tx):
    """None (no migration in progress), or (copied revision, cut-over requested)."""
    row = tx.one(_MARK)
    if row is None:
        return None
    return row[0], bool(row[1])


def set_mark(tx, revision):
    tx.run("INSERT INTO " + META + " (id, revision, compact_revision) VALUES (%s, %s, 0)",
           (MARK_ID, revision))


def request_cut_over(tx):
    """True if a migration was in progress (the follower now cuts over)."""
    return bool(tx.run("UPDATE " + META + " SET compact_revision = 1 WHERE id = %s",
                       (MARK_ID,))) or read_mark(tx) is not None


def clear_mark(tx, dialect, revision):
    """The cut-over itself: only if the store is at ``revision`` (under the counter
    lock, so no follower batch is half-way)."""
    current, _compact = read_meta(tx, dialect.counter_lock)
    if current != revision:
        raise FollowError("the store is at revision %d, not %d" % (current, revision))
    tx.run("DELETE FROM " + META + " WHERE id = %s", (MARK_ID,))


def read_auth(tx):
    row = tx.one("SELECT data FROM " + AUTH + " WHERE id = 1")
    return bytes(row[0]) if row is not None else None


def write_auth(tx, dialect, blob):
    tx.run(dialect.upsert(AUTH, ["id", "data"], "id"), (1, blob))


# -- applying etcd's revisions --------------------------------------------------------

def apply(tx, dialect, expected, revisions):
    """Write ``revisions`` -- [(revision, [(deleted, key, create_revision, version, value,
    lease)])], increasing, every event of each -- on top of the store at revision
    ``expected``; returns the new revision."""
    current, _compact = read_meta(tx, dialect.counter_lock)
    if current != expected:
        raise FollowError("the store is at revision %d, the follower expected %d: "
                          "something else wrote to it" % (current, expected))
    if read_mark(tx) is None:
        raise FollowError("no migration is in progress on this store (cut over "
                          "already?)")
    # key -> (revision, sub, version): its newest row, read once, then as written here.
    rows_of = {}

    def newest(key):
        if key not in rows_of:
            rows_of[key] = tx.one("SELECT revision, sub, version FROM " + CURRENT
                                  + " WHERE name = %s", (key,))
        return rows_of[key]

    log_rows = []
    upserts = {}
    top = current
    for revision, events in revisions:
        if revision <= top:
            raise FollowError("revision %d is not above %d" % (revision, top))
        top = revision
        for sub, (deleted, key, create_revision, version, value, lease) in enumerate(events):
            base = newest(key)
            prev = (0, 0)
            if base is not None and base[2] and (deleted or create_revision != revision):
                prev = (base[0], base[1])
            if deleted:
                create_revision, version, value, lease = 0, 0, b"", 0
            log_rows.append((revision, sub, key, create_revision, version, value, lease,
                             prev[0], prev[1]))
            rows_of[key] = (revision, sub, version)
            upserts[key] = (key, revision, sub, version, lease if version else 0)
    if log_rows:
        tx.many(_LOG_INSERT, log_rows)
        tx.many(dialect.upsert(CURRENT, ["name", "revision", "sub", "version", "lease"],
                               "name"), list(upserts.values()))
    tx.run("UPDATE " + META + " SET revision = %s WHERE id = 1", (top,))
    return top


def sync_leases(tx, leases):
    """Make the lease table hold exactly ``leases``: {id: (granted TTL, expiry in
    wall-clock ms)} (a lease etcd revoked is gone; its keys' deletions come as events)."""
    have = set(r[0] for r in tx.all("SELECT id FROM " + LEASE))
    gone = sorted(have - set(leases))
    for lease_id in gone:
        tx.run("DELETE FROM " + LEASE + " WHERE id = %s", (lease_id,))
    for lease_id, (ttl, expiry) in sorted(leases.items()):
        if lease_id in have:
            tx.run("UPDATE " + LEASE + " SET ttl = %s, expiry = %s WHERE id = %s",
                   (ttl, expiry, lease_id))
        else:
            tx.run("INSERT INTO " + LEASE + " (id, ttl, expiry) VALUES (%s, %s, %s)",
                   (lease_id, ttl, expiry))


# -- the adapters' side ----------------------------------------------------------------

class MigrationMark(object):
    """An adapter's view of the mark: ``active`` while a migration is in progress
    (read at store start, then every MARK_POLL_INTERVAL)."""

    def __init__(self, read, reactor, interval=MARK_POLL_INTERVAL):
        self._read = read            # () -> Deferred[read_mark's answer]
        self._loop = task.LoopingCall(self._refresh)
        self._loop.clock = reactor
        self.interval = interval
        self.active = False

    @defer.inlineCallbacks
    def start(self):
        # Strict at start (a failure fails the store's start): never accept a write
        # because the first read did not answer.
        self._seen((yield self._read()))
        self._loop.start(self.interval, now=False)

    def stop(self):
        if self._loop.running:
            self._loop.stop()

    def _seen(self, mark):
        active = mark is not None
        if active != self.active:
            log.info("etcd migration {state}", event="migration-mark",
                     state="in progress: writes refused" if active
                     else "cut over: writes accepted")
        self.active = active

    def _refresh(self):
        def failed(failure):           # the database's trouble is logged elsewhere
            log.debug("reading the migration mark failed: {f}", f=failure.value)
        return self._read().addCallbacks(self._seen, failed)
