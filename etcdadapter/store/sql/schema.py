"""The SQL schema and its migrations.

Tables (version 1, plus etcd_compaction from version 2)::

    etcd_schema_version (id = 1, version)
        Which migrations have run.  A database written by a newer adapter (higher version)
        is refused at start.

    etcd_meta (id = 1, revision, compact_revision)
        The revision counter.  Every write transaction locks this one row first
        (SELECT ... FOR UPDATE; BEGIN IMMEDIATE on SQLite), so revisions are handed out
        and committed in the same order: a reader that sees revision N has seen every
        revision below it, without gaps to fill.  compact_revision is -1 until the first
        compaction; every instance reads it from here, so they all agree.

    etcd_log (revision, sub, name, create_revision, version, value, lease,
              prev_revision, prev_sub)             PRIMARY KEY (revision, sub)
        Every version of every key, which is also the watch history: row ``sub`` of
        revision ``revision`` is the ``sub``-th event of that write request (one request
        may write the same key twice, so the key is not part of the primary key).
        ``version`` 0 marks a tombstone (create_revision 0, empty value, lease 0).
        (prev_revision, prev_sub) points at the row holding the key's version at
        ``revision - 1`` -- the event's prev_kv -- or is (0, 0) when there was none (or
        the event creates the key); compaction follows it to the rows a write superseded
        (:mod:`.purge`).  Index (name, revision, sub) serves point and
        historical reads; the primary key serves the change feed.

    etcd_current (name, revision, sub, version, lease)   PRIMARY KEY (name)
        The latest row of each key (tombstones too, until compacted): reads at the
        latest revision join it to etcd_log by primary key instead of searching the
        history; ``version`` (0 = deleted) makes counting cheap and ``lease`` (index)
        lists a lease's keys.

    etcd_lease (id, ttl, expiry)                   PRIMARY KEY (id), INDEX (expiry)
        Granted leases: granted TTL in seconds and expiry in wall-clock milliseconds,
        so that every instance agrees on when a lease expires.

    etcd_auth (id = 1, data)
        etcd's users, roles and auth flags as the opaque blob of
        :mod:`etcdadapter.security.auth_store` (never part of the revision history).

    etcd_compaction (id = 1, purged_revision, purge_cursor)      (version 2)
        How far the physical side of compaction has got (see :mod:`.purge`): a
        compaction records its revision in etcd_meta at once, then deletes the rows it
        made garbage in small batches.  purged_revision is the compact revision whose
        deletions are complete (-1: none yet, or made by a version-1 adapter); while it
        is below etcd_meta.compact_revision, purge_cursor is the log revision the next
        batch starts at.  Every batch moves it in the same transaction as its deletions,
        so an interrupted purge resumes where it stopped, on any instance.

Outside the versioned schema, MySQL/MariaDB/TiDB have ``etcd_schema_lock (id = 1, holder,
expires)``: the claim row by which instances starting together take turns migrating (see
:func:`_claimed`; a named lock such as GET_LOCK is local to one node of a Galera
cluster).

PostgreSQL also gets a trigger on etcd_meta that sends ``NOTIFY etcd_adapter, '<revision>'``
with every committed revision (see :mod:`.notify`).

Keys and values are binary columns (VARBINARY/LONGBLOB on MySQL, BYTEA on PostgreSQL, BLOB
on SQLite) compared bytewise; ranges are ``name >= ? AND name < ?``, never LIKE.

Migrations: :data:`MIGRATIONS` lists, for each version, a function returning the statements
that bring version N-1 to N.  They run at store start, in order, then the version row is
bumped.  MySQL commits DDL implicitly, so a migration cannot be one atomic transaction
there: every statement must be idempotent (CREATE ... IF NOT EXISTS, INSERT ignoring
duplicates, ...), so that an interrupted migration, or two instances starting at once,
simply run it again.
"""

VERSION_TABLE = "etcd_schema_version"
META = "etcd_meta"
LOG = "etcd_log"
CURRENT = "etcd_current"
LEASE = "etcd_lease"
AUTH = "etcd_auth"
COMPACTION = "etcd_compaction"

TABLES = (VERSION_TABLE, META, LOG, CURRENT, LEASE, AUTH, COMPACTION)


class SchemaError(Exception):
    pass


def _v1(d, initial_revision):
    B, I, K, V = d.BIGINT, d.INT, d.KEY, d.VALUE
    out = []
    out += d.create_table(META, ["id %s NOT NULL" % I, "revision %s NOT NULL" % B,
                                 "compact_revision %s NOT NULL" % B], ["id"])
    out += d.create_table(
        LOG,
        ["revision %s NOT NULL" % B, "sub %s NOT NULL" % I, "name %s NOT NULL" % K,
         "create_revision %s NOT NULL" % B, "version %s NOT NULL" % B,
         "value %s NOT NULL" % V, "lease %s NOT NULL" % B,
         "prev_revision %s NOT NULL" % B, "prev_sub %s NOT NULL" % I],
        ["revision", "sub"],
        [("etcd_log_name", ["name", "revision", "sub"])])
    out += d.create_table(
        CURRENT,
        ["name %s NOT NULL" % K, "revision %s NOT NULL" % B, "sub %s NOT NULL" % I,
         "version %s NOT NULL" % B, "lease %s NOT NULL" % B],
        ["name"],
        [("etcd_current_lease", ["lease"])])
    out += d.create_table(
        LEASE,
        ["id %s NOT NULL" % B, "ttl %s NOT NULL" % B, "expiry %s NOT NULL" % B],
        ["id"],
        [("etcd_lease_expiry", ["expiry"])])
    out += d.create_table(AUTH, ["id %s NOT NULL" % I, "data %s NOT NULL" % V], ["id"])
    out.append((d.insert_ignore(META, ["id", "revision", "compact_revision"]),
                (1, initial_revision, -1)))
    out += d.schema_extras()
    return out


def _v2(d, initial_revision):
    # A database compacted by version 1 has no garbage, but nothing says so: its first
    # purge walks the whole log once.
    I, B = d.INT, d.BIGINT
    out = d.create_table(COMPACTION, ["id %s NOT NULL" % I,
                                      "purged_revision %s NOT NULL" % B,
                                      "purge_cursor %s NOT NULL" % B], ["id"])
    out.append((d.insert_ignore(COMPACTION, ["id", "purged_revision", "purge_cursor"]),
                (1, -1, -1)))
    return out


#: MIGRATIONS[n - 1](dialect, initial_revision) -> statements bringing version n-1 to n.
#: A statement is SQL text or (SQL text, parameters).
MIGRATIONS = [_v1, _v2]

LATEST = len(MIGRATIONS)


def _run(tx, statements):
    for s in statements:
        if isinstance(s, tuple):
            tx.run(s[0], s[1])
        else:
            tx.run(s)


#: ``Dialect.migration_lock`` of a dialect whose engine has no cluster-wide named lock:
#: instances take turns through a claim row in :data:`LOCK_TABLE` instead.
CLAIM_ROW = "claim-row"
#: The claim row's table (not part of the versioned schema: it exists before the
#: migrations run, and is created the same idempotent way by whoever comes first).
LOCK_TABLE = "etcd_schema_lock"
#: A claim lasts this long (milliseconds of the wall clock): a holder that died
#: mid-migration blocks the others no longer (migrations are idempotent, see above).
CLAIM_MS = 120000
#: How long an instance waits for another's claim (seconds), and how often it looks.
CLAIM_WAIT = 60.0
CLAIM_POLL = 0.1


def migrate(session, d, initial_revision):
    """Create or upgrade the schema (in a pool thread); returns the version found.
    Several processes starting at once take turns (``Dialect.migration_lock``)."""
    lock = d.migration_lock
    if lock is None:
        return _migrate(session, d, initial_revision)
    if lock == CLAIM_ROW:
        return _claimed(session, d, initial_revision)
    session.transaction("ddl", lambda tx: tx.run(lock[0]))
    try:
        return _migrate(session, d, initial_revision)
    finally:
        try:
            session.transaction("ddl", lambda tx: tx.run(lock[1]))
        except Exception:
            session.drop()          # closing the connection releases the lock too


def _migrate(session, d, initial_revision):
    def prepare(tx):
        _run(tx, d.create_table(VERSION_TABLE, ["id %s NOT NULL" % d.INT,
                                                "version %s NOT NULL" % d.INT], ["id"]))
        tx.run(d.insert_ignore(VERSION_TABLE, ["id", "version"]), (1, 0))
        return tx.one("SELECT version FROM %s WHERE id = 1" % VERSION_TABLE)[0]

    found = session.transaction("ddl", prepare)
    if found > LATEST:
        raise SchemaError("the database has schema version %d; this etcd-adapter knows "
                          "versions up to %d (upgrade etcd-adapter)" % (found, LATEST))
    for version in range(found + 1, LATEST + 1):
        def step(tx, version=version):
            _run(tx, MIGRATIONS[version - 1](d, initial_revision))
            tx.run("UPDATE %s SET version = %%s WHERE id = 1 AND version < %%s"
                   % VERSION_TABLE, (version, version))
        session.transaction("ddl", step)
    return found



def _claimed(session, d, initial_revision):
    """The migration under a claim row: ``holder`` is set by one committed UPDATE that
    only succeeds while nobody else's unexpired claim is there.  A committed write is
    what every node of a multi-primary cluster agrees on -- Galera certifies two
    concurrent claims and aborts one (retried: it then finds the row taken), TiDB and
    Group Replication order them too --, whereas GET_LOCK() and a held row lock
    (SELECT ... FOR UPDATE) are local to one Galera node."""
    import os
    import time
    import uuid
    me = "%s:%d:%s" % (os.uname()[1][:30], os.getpid(), uuid.uuid4().hex[:12])

    def prepare(tx):
        for stmt in d.create_table(LOCK_TABLE, ["id %s NOT NULL" % d.INT,
                                                "holder VARCHAR(64) NOT NULL",
                                                "expires %s NOT NULL" % d.BIGINT], ["id"]):
            tx.run(stmt)
        tx.run(d.insert_ignore(LOCK_TABLE, ["id", "holder", "expires"]), (1, "", 0))
    session.transaction("ddl", prepare)

    def claim(tx):
        now = int(time.time() * 1000)
        return tx.run("UPDATE " + LOCK_TABLE + " SET holder = %s, expires = %s "
                      "WHERE id = 1 AND (holder = '' OR holder = %s OR expires < %s)",
                      (me, now + CLAIM_MS, me, now)) == 1
    give_up = time.monotonic() + CLAIM_WAIT
    while not session.transaction("ddl", claim):
        if time.monotonic() > give_up:
            holder = session.transaction("ddl", lambda tx: tx.one(
                "SELECT holder FROM " + LOCK_TABLE + " WHERE id = 1"))[0]
            raise SchemaError("the schema lock (table %s) has been held by %s for over "
                              "%.0fs" % (LOCK_TABLE, holder, CLAIM_WAIT))
        time.sleep(CLAIM_POLL)
    try:
        return _migrate(session, d, initial_revision)
    finally:
        try:
            session.transaction("ddl", lambda tx: tx.run(
                "UPDATE " + LOCK_TABLE + " SET holder = '', expires = 0 WHERE id = 1 "
                "AND holder = %s", (me,)))
        except Exception:
            pass                     # the claim expires
