"""SQLite (stdlib sqlite3): a file, WAL journal, one writer at a time.

Writes open with BEGIN IMMEDIATE, which takes the database's write lock up front: that is
SQLite's "lock the revision counter".  Reads open with a deferred BEGIN; in WAL mode their
snapshot starts at the first SELECT and never blocks the writer.  Other processes on the
same file work too (their writes reach this one through the poll loop).

``busy_timeout`` is the store's lock timeout: a write waits at most that long, from when it
was queued, for this process's writers and then for another process's write lock (SQLite's
busy handler, set per transaction to the time left); then it answers Unavailable at once.
"""

import math
import sqlite3
import threading

from etcdadapter.store.sql.dialect import (DISCONNECT, DUPLICATE, LOCK_TIMEOUT, RETRY,
                                           Dialect)

_BUSY = 5               # SQLITE_BUSY: the busy handler gave up waiting for the lock
_RETRY = (6, 517)       # SQLITE_LOCKED, SQLITE_BUSY_SNAPSHOT (at once, no waiting)
_GONE = (10, 14, 26)    # SQLITE_IOERR, SQLITE_CANTOPEN, SQLITE_NOTADB

SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")


class SQLiteDialect(Dialect):
    name = "sqlite"
    placeholder = "?"
    BIGINT = "INTEGER"
    INT = "INTEGER"
    KEY = "BLOB"
    VALUE = "BLOB"
    for_update = ""
    begin_read = ("BEGIN",)
    begin_write = ("BEGIN IMMEDIATE",)

    def __init__(self, path, busy_timeout=5.0, synchronous="FULL"):
        self.path = path
        self.busy_timeout = busy_timeout
        self.lock_timeout = busy_timeout or None
        self.synchronous = synchronous
        # Writers of this process queue here instead of in SQLite's busy handler (which
        # polls with sleeps); the busy timeout is left for other processes.
        self.write_lock = threading.Lock()

    def describe(self):
        return "sqlite:%s" % (self.path,)

    def connect(self):
        # isolation_level=None: autocommit; the store sends BEGIN/COMMIT itself.  The
        # connection is used by one pool thread only, but closed from the reactor thread
        # at stop.
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None,
                               check_same_thread=False)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=%s" % self.synchronous)
        except Exception:
            conn.close()
            raise
        return conn

    def revision_reader(self, reactor):
        return _RevisionReader(self)
    def begin_write_bounded(self, wait, settings):
        if wait is None:
            return self.begin_write
        # The busy handler waits for what is left of the bound (no I/O: cheap).
        return ("PRAGMA busy_timeout = %d" % max(1, int(math.ceil(wait * 1000))),) \
            + self.begin_write

    def classify(self, exc):
        extended = getattr(exc, "sqlite_errorcode", None)
        code = extended & 0xFF if extended is not None else None  # primary code low
        if isinstance(exc, sqlite3.IntegrityError):
            return DUPLICATE if "UNIQUE" in str(exc) else None
        if isinstance(exc, sqlite3.OperationalError):
            if extended == _BUSY:
                return LOCK_TIMEOUT
            if extended in _RETRY or code in (_BUSY, 6) or "locked" in str(exc):
                return RETRY
            if code in _GONE or "unable to open" in str(exc):
                return DISCONNECT
        if isinstance(exc, sqlite3.ProgrammingError) and "closed" in str(exc):
            return DISCONNECT
        return None

    def db_size(self, tx, tables):
        page_size = tx.one("PRAGMA page_size")[0]
        pages = tx.one("PRAGMA page_count")[0]
        free = tx.one("PRAGMA freelist_count")[0]
        return pages * page_size, (pages - free) * page_size


class _RevisionReader(object):
    """The counter row read on the reactor thread: one indexed page of a local file, a
    few microseconds, cheaper than a trip through the pool.  In WAL mode a reader never
    waits for the writer; a busy database (another process recovering the WAL) fails
    after 50 ms and the pool takes over for that query."""

    def __init__(self, dialect):
        self.dialect = dialect
        self.conn = None
        self.queries = 0

    @property
    def connected(self):
        return self.conn is not None

    def read(self):
        from twisted.internet import defer
        try:
            if self.conn is None:
                self.conn = sqlite3.connect(self.dialect.path, timeout=0.05,
                                            isolation_level=None, check_same_thread=False)
            self.queries += 1
            row = self.conn.execute(
                "SELECT revision, compact_revision FROM etcd_meta WHERE id = 1").fetchone()
        except Exception as e:
            self.close()
            return defer.fail(e)
        return defer.succeed((row[0], row[1]))

    def close(self):
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass
