"""What one SQL engine supplies to the generic store: connections, column types, the few
statements whose syntax differs -- among them the three DELETEs of a compaction's purge
batch (at the end of :class:`Dialect`: the spelling SQLite uses; MySQL and PostgreSQL
override them) -- and how to classify its errors.

Everything else is written once, in the SQL common to SQLite, MySQL/MariaDB/TiDB and
PostgreSQL with ``%s`` placeholders (rewritten to ``?`` for sqlite3): the tables
(:mod:`.schema`), the write path and the recording of a compaction's revision
(:mod:`.group_commit`), loading and polling the log for the replica (:mod:`.replica`),
leases and the auth state (:mod:`.generic`), the purge's batches (:mod:`.purge`) and
imports (:mod:`.importing`).  Reads are answered from the in-memory replica; the only SQL
a read runs is the barrier's query of the current revision (:mod:`.barrier`).
"""

# Defaults of the store URL's lock_timeout and idle_transaction_timeout (seconds): a write
# waits at most the first for a lock; the database ends a write transaction of ours left
# idle (a stalled or dead adapter) after the second.  Idle < lock: writes held up by a
# stalled adapter go through once its session is ended instead of failing.
DEFAULT_LOCK_TIMEOUT = 3.0
DEFAULT_IDLE_TRANSACTION_TIMEOUT = 1.0

# Error classes (Dialect.classify).
RETRY = "retry"              # deadlock / serialization failure: the txn was rolled back
LOCK_TIMEOUT = "lock-timeout"  # waited the lock timeout for a lock another txn holds
DISCONNECT = "disconnect"    # the connection is unusable (or could not be made)
DUPLICATE = "duplicate"      # unique-key violation
NOT_READY = "not-ready"      # the server answers but cannot serve now (no quorum, not a
                             # primary, read-only): Unavailable at once, connection kept


class Dialect(object):
    #: Short engine name for logs.
    name = "sql"

    #: Placeholder the driver wants (the shared SQL text uses ``%s``).
    placeholder = "%s"

    #: Column types.
    BIGINT = "BIGINT"
    INT = "INTEGER"
    KEY = "BLOB"
    VALUE = "BLOB"

    #: Longest key the key column and its indexes accept (None: no limit).
    max_key_bytes = None

    #: Appended to SELECTs that lock the rows they read (the revision counter, a lease).
    for_update = " FOR UPDATE"

    @property
    def counter_lock(self):
        """Appended to the SELECT of the revision counter that locks it (no parameters):
        the first statement of a write that takes the counter lock."""
        return self.for_update

    #: Statements opening a transaction: a consistent snapshot for reads; a write
    #: transaction that sees every commit before its first locking read.
    begin_read = ("BEGIN",)
    begin_write = ("BEGIN",)
    commit = "COMMIT"
    rollback = "ROLLBACK"

    #: A lock every write transaction of this process holds (None: the database's own
    #: row lock on the revision counter is enough).
    write_lock = None

    #: Seconds a write transaction may wait for locks (the revision counter's row, this
    #: process's ``write_lock``), counted from when the write was queued; then it fails
    #: with LOCK_TIMEOUT, answered Unavailable at once (None: no bound of ours).
    lock_timeout = None

    #: Seconds the database may leave one of our write transactions idle (waiting for
    #: our next statement: a stalled or dead adapter) before it ends the session, which
    #: rolls back and releases its locks (None: no bound).
    idle_transaction_timeout = None

    #: Statements to send right after the statement that took the counter lock (a
    #: dialect that bounded the lock wait puts its bound back here).
    after_counter_lock = ()

    def guard_failed(self, exc):
        """Whether ``exc`` is the error of a NOT NULL column set to NULL (the guard of
        an optimistic write batch, :mod:`.group_commit`)."""
        return False

    def begin_write_bounded(self, wait, settings):
        """The statements opening a write transaction whose lock waits end after ``wait``
        seconds (None: no bound of ours).  ``settings``: a dict kept with the connection
        (emptied when it is replaced), where a dialect notes what it has set on the
        session."""
        return self.begin_write

    #: Appended to CREATE TABLE (engine, row format).
    table_options = ""

    #: Whether commits can be pushed to other instances (see :mod:`.notify`): then the
    #: dialect implements ``listen_connect`` and ``wait_notify``.
    can_notify = False

    def connect(self):
        """A new DB-API connection in autocommit mode (the store sends BEGIN/COMMIT)."""
        raise NotImplementedError

    def listen_connect(self):
        """A connection subscribed to commit notifications."""
        raise NotImplementedError

    def wait_notify(self, conn, timeout):
        """Block up to ``timeout`` seconds for notifications; the highest revision
        notified, or None if none came."""
        raise NotImplementedError

    def classify(self, exc):
        """RETRY, LOCK_TIMEOUT, DISCONNECT, NOT_READY, DUPLICATE or None for an exception
        of the driver."""
        raise NotImplementedError

    def key_too_long(self, size):
        """etcd's error for a request that is too large (InvalidArgument), saying which
        limit: the key column and its B-tree indexes take keys of at most
        ``max_key_bytes`` (etcd itself takes any key a request can carry)."""
        from etcdadapter import errors
        return errors.ErrRequestTooLarge(message=(
            "etcdserver: request is too large: key of %d bytes, the %s store takes keys "
            "of at most %d bytes" % (size, self.name, self.max_key_bytes)))

    def script(self, cursor, statements):
        """Run (sql, params or None) statements in order; their result sets in order
        (rows, or None).  A dialect whose driver can send several statements at once
        does, to save round trips (each costs the write thread a wait for the GIL)."""
        out = []
        for sql, params in statements:
            if params is None:
                cursor.execute(sql)
            else:
                cursor.execute(sql, params)
            out.append(cursor.fetchall() if cursor.description is not None else None)
        return out

    def reactor_connection(self, reactor, timeout):
        """A :class:`~.reactor_conn.ReactorConnection` (scripts of statements sent and
        answered on the reactor, no pool thread), or None when the driver cannot."""
        return None

    def revision_reader(self, reactor):
        """An object whose ``read()`` returns a Deferred[(revision, compact_revision)] of
        the counter row, read on the reactor thread without a pool thread (the read
        barrier's query, see :mod:`.barrier`), or None: the barrier then uses the pool.
        A failed read falls back to the pool for that query."""
        return None

    def describe(self):
        """Where the data lives, for logs (no password)."""
        return self.name

    # -- schema ---------------------------------------------------------------------------
    def create_table(self, name, columns, primary_key, indexes=()):
        """Statements creating table ``name`` (if missing) with ``columns`` (SQL column
        definitions), ``primary_key`` (column names) and ``indexes`` ((index name,
        column names) pairs).  Must be idempotent."""
        body = list(columns) + ["PRIMARY KEY (%s)" % ", ".join(primary_key)]
        out = ["CREATE TABLE IF NOT EXISTS %s (%s)%s"
               % (name, ", ".join(body), self.table_options)]
        for index, cols in indexes:
            out.append("CREATE INDEX IF NOT EXISTS %s ON %s (%s)"
                       % (index, name, ", ".join(cols)))
        return out

    def insert_ignore(self, table, columns):
        """INSERT of one row that does nothing if its primary key exists."""
        return ("INSERT INTO %s (%s) VALUES (%s) ON CONFLICT DO NOTHING"
                % (table, ", ".join(columns), ", ".join(["%s"] * len(columns))))

    def upsert(self, table, columns, key):
        """INSERT of one row that overwrites the other columns if ``key`` exists."""
        rest = [c for c in columns if c != key]
        return ("INSERT INTO %s (%s) VALUES (%s) ON CONFLICT (%s) DO UPDATE SET %s"
                % (table, ", ".join(columns), ", ".join(["%s"] * len(columns)), key,
                   ", ".join("%s = excluded.%s" % (c, c) for c in rest)))

    #: (acquire, release) statements of a lock, held by one connection, that serialises
    #: schema creation and migration between processes starting at the same time (None:
    #: the engine's own locking is enough).
    migration_lock = None

    def schema_extras(self):
        """Engine-specific statements of the version-1 schema (idempotent)."""
        return []

    # -- compaction (see :mod:`.purge`) -----------------------------------------------------
    #
    # One purge batch covers the log rows of whole revisions lo..hi and, with ``compact``
    # the compact revision, deletes in this order (each method returns (SQL, parameters)):

    def purge_dead_keys(self, log, current, lo, hi, compact):
        """etcd_current rows of keys that are deleted as of a revision below ``compact``,
        for the tombstones in lo..hi."""
        return ("DELETE FROM {cur} WHERE name IN (SELECT name FROM {log} WHERE "
                "revision >= %s AND revision <= %s AND version = 0) "
                "AND version = 0 AND revision < %s").format(log=log, cur=current), \
            (lo, hi, compact)

    def purge_superseded(self, log, lo, hi):
        """The rows that the rows of lo..hi superseded: each row's (prev_revision,
        prev_sub) is its key's previous version, so this is primary-key work only."""
        return ("DELETE FROM {log} WHERE (revision, sub) IN (SELECT prev_revision, "
                "prev_sub FROM {log} WHERE revision >= %s AND revision <= %s "
                "AND prev_revision > 0)").format(log=log), (lo, hi)

    def purge_tombstones(self, log, lo, hi, compact):
        """The tombstones in lo..hi below ``compact``, with the rows of their key that
        the same revision wrote before them (a txn may put, then delete, one key)."""
        return ("DELETE FROM {log} WHERE revision >= %s AND revision <= %s "
                "AND revision < %s AND EXISTS (SELECT 1 FROM {log} t "
                "WHERE t.revision = {log}.revision AND t.name = {log}.name "
                "AND t.sub >= {log}.sub AND t.version = 0)").format(log=log), \
            (lo, hi, compact)

    # -- sizes ----------------------------------------------------------------------------
    def db_size(self, tx, tables):
        """(bytes the store takes, bytes in use) -- as close as the engine tells."""
        return 0, 0
