"""MySQL / MariaDB (and TiDB) through PyMySQL.

Reads run in a REPEATABLE READ snapshot (START TRANSACTION WITH CONSISTENT SNAPSHOT).
Writes start with the locking read of the counter row: InnoDB creates a transaction's read
view only at its first non-locking read, so everything the write reads afterwards includes
the previous writer's commit.

TiDB (``tidb://``) takes the snapshot of a REPEATABLE READ transaction when it begins, so
a write would read data older than the counter it waited for; its writes therefore run in
READ COMMITTED, which TiDB supports in pessimistic mode (set for the session; it is the
default since TiDB 3.0.8).  Revisions come from the counter row, never from
AUTO_INCREMENT, so TiDB's per-server ID caches do not matter.

Write transactions bound their lock waits with the session's ``innodb_lock_wait_timeout``
(whole seconds: the time left of the store's ``lock_timeout``, rounded; set only when it
changes) and, on MariaDB, how long they may stay idle with ``idle_transaction_timeout``
(whole seconds; the server closes the connection of a stalled or dead adapter, which rolls
back and releases its locks).  MySQL has no such setting: there a stalled holder keeps
its locks until the server drops its connection.  Both are set on write connections only.

Keys are VARBINARY(3000) (InnoDB indexes take at most 3072 bytes), values LONGBLOB.
"""

import math
import struct

import pymysql
from pymysql.constants import CLIENT

from etcdadapter.store.sql.dialect import (DISCONNECT, DUPLICATE, LOCK_TIMEOUT, RETRY,
                                           Dialect)
from etcdadapter.store.sql.revision_reader import QUERY, SocketRevisionReader

# Deadlock, MariaDB "record has changed since last read" (snapshot isolation), TiDB write
# conflicts / retryable errors.
_RETRY_CODES = (1213, 1020, 9007, 8002, 8022, 8028)
_LOCK_WAIT_TIMEOUT = 1205
# Cannot connect / gone / lost / too many connections / shutdown / killed / access
# denied / unknown database / SSL errors / idle disconnect.
_GONE_CODES = (2002, 2003, 2005, 2006, 2013, 2026, 2055, 1040, 1045, 1049, 1053, 1077,
               1152, 1927, 4031)


class MySQLDialect(Dialect):
    name = "mysql"
    BIGINT = "BIGINT"
    INT = "INT"
    KEY = "VARBINARY(3000)"
    VALUE = "LONGBLOB"
    max_key_bytes = 3000
    table_options = " ENGINE=InnoDB ROW_FORMAT=DYNAMIC"
    begin_read = ("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY",)
    begin_write = ("START TRANSACTION",)
    session_init = "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ"
    # Instances starting together on a fresh database take turns creating/migrating the
    # schema (a named lock; names are at most 64 characters).
    migration_lock = (
        "SELECT GET_LOCK(CONCAT('etcd_adapter_schema_', SHA1(DATABASE())), 60)",
        "SELECT RELEASE_LOCK(CONCAT('etcd_adapter_schema_', SHA1(DATABASE())))")

    #: The server's variable bounding idle transactions (found at connect: MariaDB's;
    #: None on MySQL).
    idle_variable = None

    def __init__(self, lock_timeout=None, idle_transaction_timeout=None, **params):
        """``params``: pymysql.connect arguments (host, port, user, password, database,
        connect_timeout, read_timeout, write_timeout, ssl_ca, ssl_cert, ssl_key,
        ssl_verify_cert, ssl_verify_identity, unix_socket, ...); the timeouts: see
        Dialect (seconds, None: none)."""
        self.lock_timeout = lock_timeout or None
        self.idle_transaction_timeout = idle_transaction_timeout or None
        self.params = dict(params)

    def describe(self):
        p = self.params
        return "%s://%s@%s:%s/%s" % (self.name, p.get("user", ""), p.get("host", ""),
                                     p.get("port", ""), p.get("database", ""))

    def connect(self):
        conn = pymysql.connect(
            autocommit=True, charset="utf8mb4", binary_prefix=True,
            # UPDATE's row count = rows matched, not rows changed (a keep-alive within
            # the same millisecond changes nothing but found its lease).
            # Several statements in one round trip (Dialect.script): values are escaped
            # by PyMySQL into the text, never concatenated unescaped.
            client_flag=CLIENT.FOUND_ROWS | CLIENT.MULTI_STATEMENTS,
            init_command=self.session_init, **self.params)
        self.idle_variable = self._idle_variable(conn.get_server_info())
        return conn

    @staticmethod
    def _idle_variable(server_version):
        return "idle_transaction_timeout" if "mariadb" in server_version.lower() else None

    def begin_write_bounded(self, wait, settings):
        # Session variables: sent only when they change (once per connection, and when
        # a write queued long leaves less than the full lock_timeout).
        assign = []
        if wait is not None:
            # Whole seconds, rounded (0: fail at once if the lock is taken): at most half
            # a second over the bound.  MySQL raises 0 to its minimum, 1.
            seconds = max(0, int(wait + 0.5))
            if settings.get("lock") != seconds:
                assign.append("innodb_lock_wait_timeout = %d" % seconds)
                settings["lock"] = seconds
        if (self.idle_transaction_timeout and self.idle_variable
                and "idle" not in settings):
            assign.append("%s = %d" % (self.idle_variable,
                                       _whole_seconds(self.idle_transaction_timeout)))
            settings["idle"] = True
        if assign:
            return ("SET SESSION " + ", ".join(assign),) + self.begin_write
        return self.begin_write

    def create_table(self, name, columns, primary_key, indexes=()):
        # MySQL has no CREATE INDEX IF NOT EXISTS: indexes go inline.
        body = list(columns) + ["PRIMARY KEY (%s)" % ", ".join(primary_key)]
        body += ["KEY %s (%s)" % (index, ", ".join(cols)) for index, cols in indexes]
        return ["CREATE TABLE IF NOT EXISTS %s (%s)%s"
                % (name, ", ".join(body), self.table_options)]

    def insert_ignore(self, table, columns):
        # Not INSERT IGNORE, which would also turn other errors into warnings.
        return ("INSERT INTO %s (%s) VALUES (%s) ON DUPLICATE KEY UPDATE %s = %s"
                % (table, ", ".join(columns), ", ".join(["%s"] * len(columns)),
                   columns[0], columns[0]))

    def upsert(self, table, columns, key):
        rest = [c for c in columns if c != key]
        return ("INSERT INTO %s (%s) VALUES (%s) ON DUPLICATE KEY UPDATE %s"
                % (table, ", ".join(columns), ", ".join(["%s"] * len(columns)),
                   ", ".join("%s = VALUES(%s)" % (c, c) for c in rest)))

    # MySQL cannot DELETE from a table that a subquery of the statement reads, and
    # MariaDB runs a single-table DELETE ... IN (subquery) as a scan of the whole table:
    # multi-table DELETEs, driven by the batch's rows.
    def purge_dead_keys(self, log, current, lo, hi, compact):
        return ("DELETE c FROM {log} t JOIN {cur} c ON c.name = t.name "
                "WHERE t.revision >= %s AND t.revision <= %s AND t.version = 0 "
                "AND c.version = 0 AND c.revision < %s").format(log=log, cur=current), \
            (lo, hi, compact)

    def purge_superseded(self, log, lo, hi):
        return ("DELETE p FROM {log} n JOIN {log} p ON p.revision = n.prev_revision "
                "AND p.sub = n.prev_sub WHERE n.revision >= %s AND n.revision <= %s "
                "AND n.prev_revision > 0").format(log=log), (lo, hi)

    def purge_tombstones(self, log, lo, hi, compact):
        return ("DELETE l FROM {log} t JOIN {log} l ON l.revision = t.revision "
                "AND l.name = t.name AND l.sub <= t.sub WHERE t.revision >= %s "
                "AND t.revision <= %s AND t.revision < %s AND t.version = 0").format(log=log), \
            (lo, hi, compact)

    def script(self, cursor, statements):
        if len(statements) < 2:
            return Dialect.script(self, cursor, statements)
        cursor.execute(";\n".join(sql if params is None else cursor.mogrify(sql, params)
                                   for sql, params in statements))
        out = []
        while True:
            out.append(cursor.fetchall() if cursor.description is not None else None)
            if not cursor.nextset():
                return out

    def revision_reader(self, reactor):
        if any(k.startswith("ssl") for k in self.params):
            return None          # TLS buffers what epoll cannot see: the pool reads
        return _RevisionReader(self, reactor)

    def classify(self, exc):
        if isinstance(exc, pymysql.err.InterfaceError):
            return DISCONNECT
        if isinstance(exc, pymysql.err.MySQLError):
            code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
            if code in _RETRY_CODES:
                return RETRY
            if code == _LOCK_WAIT_TIMEOUT:
                return LOCK_TIMEOUT
            if code == 1062:
                return DUPLICATE
            if code in _GONE_CODES:
                return DISCONNECT
        if isinstance(exc, OSError):
            return DISCONNECT
        return None

    def db_size(self, tx, tables):
        row = tx.one("SELECT COALESCE(SUM(data_length + index_length), 0), "
                     "COALESCE(SUM(data_free), 0) FROM information_schema.tables "
                     "WHERE table_schema = DATABASE() AND table_name IN (%s)"
                     % ", ".join(["%s"] * len(tables)), tuple(tables))
        used, free = int(row[0]), int(row[1])
        return used + free, used


def _whole_seconds(seconds):
    return max(1, int(math.ceil(seconds)))


class TiDBDialect(MySQLDialect):
    """Not tested here (no TiDB server in CI yet).  No idle-transaction bound is set
    (``tidb_idle_transaction_timeout`` exists from TiDB 7.6 only)."""

    name = "tidb"
    # TiDB takes a transaction's snapshot when it begins anyway.
    begin_read = ("START TRANSACTION READ ONLY",)
    begin_write = ("SET TRANSACTION ISOLATION LEVEL READ COMMITTED", "BEGIN PESSIMISTIC")

    @staticmethod
    def _idle_variable(server_version):
        return None

    def connect(self):
        conn = MySQLDialect.connect(self)
        try:
            conn.cursor().execute("SET SESSION tidb_txn_mode = 'pessimistic'")
        except Exception:
            conn.close()
            raise
        return conn


class _RevisionReader(SocketRevisionReader):
    """The read barrier's query in MySQL's text protocol, on a connection PyMySQL opened
    (and authenticated) whose socket the reactor then drives: one COM_QUERY packet out;
    in: the column count, the column definitions and an EOF, the row, an EOF."""

    _packet = b"\x03" + QUERY.encode()
    _packet = struct.pack("<I", len(_packet))[:3] + b"\x00" + _packet

    def _connect(self):
        conn = self.dialect.connect()
        conn._sock.setblocking(False)
        return conn

    def _fileno(self, conn):
        return conn._sock.fileno()

    def _send(self, conn):
        self._buffer = b""
        self._packets = []
        conn._sock.send(self._packet)        # a hundred bytes: written at once

    def _receive(self, conn):
        data = conn._sock.recv(65536)
        if not data:
            raise ConnectionError("MySQL closed the connection")
        buf = self._buffer + data
        pos = 0
        while len(buf) - pos >= 4:
            n = buf[pos] | buf[pos + 1] << 8 | buf[pos + 2] << 16
            if len(buf) - pos - 4 < n:
                break
            self._packets.append(buf[pos + 4:pos + 4 + n])
            pos += 4 + n
        self._buffer = buf[pos:]
        return self._answer()

    def _answer(self):
        p = self._packets
        if not p:
            return None
        if p[0][:1] == b"\xff":
            raise pymysql.err.OperationalError(p[0][3:].decode("utf-8", "replace"))
        i = 1 + p[0][0] + 1              # the row follows the columns and their EOF
        if len(p) < i + 2:
            return None
        row, end = p[i], p[i + 1]
        if end[:1] != b"\xfe" or len(end) >= 9:
            raise pymysql.err.OperationalError("unexpected answer")
        values = []
        j = 0
        while j < len(row):              # length-encoded strings, each < 251 bytes
            n = row[j]
            values.append(int(row[j + 1:j + 1 + n]))
            j += 1 + n
        return values[0], values[1]
