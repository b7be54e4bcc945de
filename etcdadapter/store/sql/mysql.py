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
import socket
import struct

import pymysql
from pymysql.constants import CLIENT, FIELD_TYPE, SERVER_STATUS
from pymysql.protocol import MysqlPacket
from twisted.internet import defer
from twisted.logger import Logger

from etcdadapter.store.sql.dialect import (DISCONNECT, DUPLICATE, LOCK_TIMEOUT,
                                           NOT_READY, RETRY, Dialect)
from etcdadapter.store.sql.reactor_conn import (Constant, ReactorConnection,
                                                 RevisionReader)
from etcdadapter.store.sql.schema import CLAIM_ROW

log = Logger()

# Retried until the write's deadline (the transaction was rolled back; running it again is
# safe): deadlock -- which is also how Galera reports a certification conflict or a
# transaction its applier aborted (a "brute force abort") --, MariaDB "record has changed
# since last read" (snapshot isolation), Group Replication's rollback of a transaction
# that failed certification (3101), TiDB's write conflicts and retryable errors (9007,
# 8005, 8002, 8022), its schema changed / out of date during the transaction (8028,
# 8027).
_RETRY_CODES = (1213, 1020, 3101, 9007, 8005, 8002, 8022, 8027, 8028)
_LOCK_WAIT_TIMEOUT = 1205
# Cannot connect / gone / lost / too many connections / shutdown / killed / access
# denied / unknown database / SSL errors / idle disconnect / MySQL's offline_mode (3032:
# the server ends the sessions of ordinary users; a new connection is refused).
_GONE_CODES = (2002, 2003, 2005, 2006, 2013, 2026, 2055, 1040, 1045, 1049, 1053, 1077,
               1152, 1927, 3032, 4031)
# The server answers but cannot serve us now -- not part of a quorum, not a primary,
# read-only --: Unavailable at once (the client tries another endpoint or later), the
# connection kept for when the node is back.
#   1047  Galera: "WSREP has not yet prepared node for application use" (non-primary,
#         joining, donor without wsrep_sst_donor_rejects_queries...)
#   1180  ER_ERROR_DURING_COMMIT: Galera could not replicate the write set at COMMIT
#         (wsrep-lib's e_error_during_commit; a node isolated under load gave "Error
#         while appending streaming replication fragment(provider status: Not
#         connected to Primary Component)": not sent, nothing committed); InnoDB's own
#         commit failures carry it too.  Unavailable, logged once, no traceback
#   1290  --read-only / --super-read-only (a Group Replication secondary, a replica, a
#         node fenced by the operator): ER_OPTION_PREVENTS_STATEMENT
#   1792  ER_CANT_EXECUTE_IN_READ_ONLY_TRANSACTION: every new session starts read-only
#         (a node fenced with SET GLOBAL transaction_read_only = ON; our writes never
#         ask for a read-only transaction themselves)
#   1836  ER_READ_ONLY_MODE
#   3100  Group Replication: the replication hook refused the commit (the member is
#         not ONLINE or lost its majority)
#   3781  Group Replication, a new primary applying its backlog (consistency BEFORE
#   3782  includes BEFORE_ON_PRIMARY_FAILOVER): the held statement timed out, was
#   3783  killed, or the member went into ERROR state (ER_GR_HOLD_*)
#   3796  Group Replication with group_replication_consistency BEFORE (what the adapter
#   3797  sets): the member is not ONLINE (3796), the wait for the group's preceding
#   3798  transactions failed (3797, 3798), the plugin is stopping (3799)
#   3799
#   9001  TiDB: PD server timeout          9002  TiKV server timeout
#   9003  TiKV server is busy               9004  resolve lock timeout
#   9005  region is unavailable (a Raft group without its leader or quorum)
#   9008  TiKV store limit reached          9010  TiKV stale command (leader moved)
#   9011  TiKV max timestamp not synced (a new leader not ready yet)
#   9012  TiFlash server timeout            9013  TiFlash server busy
# (TiDB retries those internally with back-off, about 20 s, before answering them.)
_NOT_READY_CODES = (1047, 1180, 1290, 1792, 1836, 3100, 3781, 3782, 3783, 3796, 3797,
                    3798, 3799, 9001, 9002, 9003, 9004, 9005, 9008, 9010, 9011, 9012,
                    9013)


#: Multi-primary clusters the dialect recognises at connect (MySQLDialect.cluster).
GALERA = "Galera"
GROUP_REPLICATION = "Group Replication"
#: Galera's session wsrep_sync_wait by default: 1 (reads: SELECT, BEGIN ... WITH
#: CONSISTENT SNAPSHOT, SELECT ... FOR UPDATE) + 2 (UPDATE, DELETE: the optimistic guard
#: then sees the counter as the cluster has it, instead of committing a doomed
#: transaction that certification aborts).
GALERA_SYNC_WAIT = 3
#: Group Replication's session consistency by default: a transaction waits until the
#: member has applied everything the group ordered before it began.
GR_CONSISTENCY = "BEFORE"


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
    # schema: a claim row (schema.CLAIM_ROW), not GET_LOCK(), which is local to one node
    # of a Galera cluster.
    migration_lock = CLAIM_ROW

    #: The server's variable bounding idle transactions (found at connect: MariaDB's;
    #: None on MySQL).
    idle_variable = None

    #: What the server is a node of, found at connect: GALERA, GROUP_REPLICATION or None.
    cluster = None

    def __init__(self, lock_timeout=None, idle_transaction_timeout=None,
                 wsrep_sync_wait=None, group_replication_consistency=None, **params):
        """``params``: pymysql.connect arguments (host, port, user, password, database,
        connect_timeout, read_timeout, write_timeout, ssl_ca, ssl_cert, ssl_key,
        ssl_verify_cert, ssl_verify_identity, unix_socket, ...); the timeouts: see
        Dialect (seconds, None: none); ``wsrep_sync_wait`` and
        ``group_replication_consistency``: the session's causality setting on a Galera
        or Group Replication node (None: :data:`GALERA_SYNC_WAIT`,
        :data:`GR_CONSISTENCY`)."""
        self.lock_timeout = lock_timeout or None
        self.idle_transaction_timeout = idle_transaction_timeout or None
        self.wsrep_sync_wait = wsrep_sync_wait
        self.group_replication_consistency = group_replication_consistency
        self.params = dict(params)
        self._announced = False

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
        try:
            self._causal_reads(conn)
        except Exception:
            conn.close()
            raise
        return conn

    def _causal_reads(self, conn):
        """On a node of a multi-primary cluster, make every statement of the session see
        every transaction committed anywhere in the cluster before it began -- the read
        barrier, the change feed's reads, the counter lock and the optimistic guard
        depend on it (without it a node answers from what it has applied so far: a get
        through another node's adapter, after a put acknowledged through this one, may
        return the old value).  One query per connection finds the cluster."""
        cursor = conn.cursor()
        cursor.execute("SHOW VARIABLES WHERE Variable_name IN ('wsrep_on', "
                       "'wsrep_provider', 'group_replication_group_name')")
        found = {name.lower(): (value or "") for name, value in cursor.fetchall()}
        if (found.get("wsrep_on", "").upper() == "ON"
                and found.get("wsrep_provider", "none").lower() not in ("", "none")):
            cluster = GALERA
            setting = ("wsrep_sync_wait", GALERA_SYNC_WAIT if self.wsrep_sync_wait is None
                       else self.wsrep_sync_wait)
            cursor.execute("SET SESSION wsrep_sync_wait = %d" % setting[1])
        elif found.get("group_replication_group_name"):
            cluster = GROUP_REPLICATION
            setting = ("group_replication_consistency",
                       self.group_replication_consistency or GR_CONSISTENCY)
            try:
                cursor.execute("SET SESSION group_replication_consistency = %s",
                               (setting[1],))
            except pymysql.err.MySQLError as e:
                if e.args[:1] != (1193,):        # unknown variable: before MySQL 8.0.14
                    raise
                if not self._announced:
                    self._announced = True
                    log.warn("database {db} is a Group Replication member without "
                             "group_replication_consistency (MySQL < 8.0.14): reads "
                             "through another member may be stale; point every adapter "
                             "at the primary", db=self.describe())
                return
        else:
            return
        self.cluster = cluster
        if not self._announced:
            self._announced = True
            log.info("database {db} is a {cluster} node: every session sets {name} = "
                     "{value} (reads see what any node committed before them)",
                     db=self.describe(), cluster=cluster, name=setting[0],
                     value=setting[1])

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
        if len(statements) < 2 or self.cluster == GALERA:
            # Galera: one statement per command (see _ReactorConnection.script).
            return Dialect.script(self, cursor, statements)
        cursor.execute(";\n".join(sql if params is None else cursor.mogrify(sql, params)
                                   for sql, params in statements))
        out = []
        while True:
            out.append(cursor.fetchall() if cursor.description is not None else None)
            if not cursor.nextset():
                return out

    def reactor_connection(self, reactor, timeout):
        if any(k.startswith("ssl") for k in self.params):
            return None          # TLS buffers what epoll cannot see: the pool does it
        return _ReactorConnection(self, reactor, timeout)

    def revision_reader(self, reactor):
        conn = self.reactor_connection(reactor, 2.0)
        return RevisionReader(conn) if conn is not None else None

    def guard_failed(self, exc):
        # 1048: column cannot be null (an error: the connection is in strict mode).
        return isinstance(exc, pymysql.err.MySQLError) and exc.args[:1] == (1048,)

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
            if code in _NOT_READY_CODES:
                return NOT_READY
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
    """TiDB.  No TiDB server runs in the tests; they run these settings against MariaDB
    (and a MariaDB Galera cluster), where every one of them is valid and sound: TiDB's
    own syntax is written in TiDB's executable comments (``/*T! ... */``, which MySQL and
    MariaDB skip) or sent only to a server that says it is TiDB.

    Why the store is one etcd on TiDB, property by property (and the code relying on
    it):

    * Causal reads, no setting needed: every transaction and every autocommit statement
      takes its snapshot from PD's timestamp oracle (TSO), which is after every commit
      acknowledged before it -- whichever TiDB server took the commit.  The read barrier
      (:mod:`.barrier`, one autocommit SELECT of the counter row) and the change feed's
      reads (``START TRANSACTION READ ONLY``: the snapshot is taken at BEGIN) therefore
      see every revision acknowledged by any adapter on any TiDB server.  TiDB's
      ``tidb_read_staleness`` / follower reads would break this: they are off by default
      and must stay off.
    * One order of revisions: a write batch locks the counter row (``SELECT ... FOR
      UPDATE`` in a pessimistic transaction, or the guarded ``UPDATE`` of the
      optimistic batch, which takes the same lock).  Pessimistic locks are held in TiKV,
      so they are cluster-wide -- unlike Galera's, which are local to a node and settled
      by certification at commit.  A write that conflicts anyway (9007, 8005 in
      optimistic mode, 8002, 8022) is rolled back and retried like a deadlock
      (:mod:`.group_commit`).
    * Fresh reads inside a write: in pessimistic mode a ``SELECT ... FOR UPDATE`` and an
      ``UPDATE`` read the latest committed version (a "current read"), and READ
      COMMITTED makes the plain reads of a write transaction use a new snapshot per
      statement, so nothing read after the counter lock predates the previous writer's
      commit.
    * Node loss: a TiDB server is stateless; its loss drops the adapter's connections
      (DISCONNECT: Unavailable, reconnect).  A TiKV region without a leader or a PD
      timeout comes back, after TiDB's own back-off, as 9001-9005, 9008 or 9010-9013
      (NOT_READY: Unavailable at once, see ``_NOT_READY_CODES``).
    * The schema lock is a committed claim row (:mod:`.schema`), which TiDB orders like
      any write.
    * Revisions come from the counter row, never from AUTO_INCREMENT, so TiDB's
      per-server ID caches do not matter.

    No idle-transaction bound is set (``tidb_idle_transaction_timeout`` exists from
    TiDB 7.6 only)."""

    name = "tidb"
    # TiDB takes a transaction's snapshot when it begins anyway.
    begin_read = ("START TRANSACTION READ ONLY",)
    begin_write = ("SET TRANSACTION ISOLATION LEVEL READ COMMITTED",
                   "BEGIN /*T! PESSIMISTIC */")

    @staticmethod
    def _idle_variable(server_version):
        return None

    def connect(self):
        conn = MySQLDialect.connect(self)
        if "tidb" in conn.get_server_info().lower():
            try:
                conn.cursor().execute("SET SESSION tidb_txn_mode = 'pessimistic'")
            except Exception:
                conn.close()
                raise
        return conn


class _ReactorConnection(ReactorConnection):
    """MySQL's text protocol on a connection PyMySQL opened (and authenticated), whose
    socket the reactor then drives: a script is one COM_QUERY (statements joined with
    ``;``, values escaped into the text by PyMySQL -- the connection allows several
    statements), answered by one OK, error or result set per statement."""

    #: The server status flags of the last statement answered.
    last_status = 0
    _inbox = None                        # the receive buffer (see _receive)

    def script(self, statements, check_closed=True):
        """On a Galera node, a transaction's statements go one command at a time (the
        statements opening it ride with the first that takes a lock).  MariaDB Galera
        (10.11) runs the rest of a multi-statement command after a "brute force abort"
        -- another node's certified write rolling this transaction back -- in autocommit
        mode, without an error: the remaining INSERTs were committed alone and the
        COMMIT answered OK for a transaction that no longer existed (seen here under
        cross-node write load: an acknowledged write lost, a stray log row committed).
        Between commands the server does report the abort, on the next command (1213),
        which the write path retries."""
        if self.dialect.cluster != GALERA or len(statements) < 2:
            return ReactorConnection.script(self, statements, check_closed)
        return self._one_by_one(_commands(statements))

    @defer.inlineCallbacks
    def _one_by_one(self, commands):
        out = []
        for command in commands:
            out.extend((yield ReactorConnection.script(self, command)))
            ends = command[-1][0].lstrip()[:8].upper().startswith(("COMMIT", "ROLLBACK"))
            if not ends and not self.last_status & SERVER_STATUS.SERVER_STATUS_IN_TRANS:
                # (Every script of several statements is a write transaction's.)  Should
                # not happen -- the abort is reported on the next command --, but never
                # let a write go on outside its transaction unnoticed.
                e = pymysql.err.OperationalError(
                    1213, "the transaction ended before COMMIT (aborted by the cluster)")
                e.answered = True
                raise e
        return out

    def _connect(self):
        conn = self.dialect.connect()
        try:
            # A NULL for a NOT NULL column must be an error, never a zero with a warning:
            # an optimistic write batch's guard relies on it.
            conn.cursor().execute("SET SESSION sql_mode = "
                                  "CONCAT_WS(',', @@SESSION.sql_mode, 'STRICT_ALL_TABLES')")
        except Exception:
            conn.close()
            raise
        conn._sock.setblocking(False)
        return conn

    def _fileno(self, conn):
        return conn._sock.fileno()

    def _lost(self, message="MySQL closed the connection"):
        return pymysql.err.OperationalError(2013, "Lost connection to MySQL server: %s"
                                            % message)

    def _send(self, conn, statements):
        if type(statements) is Constant:    # the barrier's query: its packet made once
            out = statements.encoded(_constant_command)
        else:
            cursor = conn.cursor()
            out = _command(";\n".join(sql if params is None else cursor.mogrify(sql, params)
                                       for sql, params in statements))
        self._buffer = b""
        self._results = []
        self._result = None              # the result set being read: [types, rows]
        self._expect = "first"
        return out

    def _socket_send(self, conn, data):
        return conn._sock.send(data)

    def _peek_closed(self, conn):
        try:
            return conn._sock.recv(1, socket.MSG_PEEK) == b""
        except BlockingIOError:
            return False

    def _receive(self, conn):
        # Into a buffer kept for the connection: recv(n) allocates n bytes first, and
        # for a large n that allocation cost more than the barrier's whole answer.
        inbox = self._inbox
        if inbox is None:
            inbox = self._inbox = memoryview(bytearray(_RECEIVE_SIZE))
        try:
            n = conn._sock.recv_into(inbox)
        except BlockingIOError:
            return None
        if not n:
            raise self._lost()
        data = bytes(inbox[:n])
        buf = self._buffer + data if self._buffer else data
        pos = 0
        done = False
        while len(buf) - pos >= 4:
            n = buf[pos] | buf[pos + 1] << 8 | buf[pos + 2] << 16
            if len(buf) - pos - 4 < n:
                break
            try:
                done = self._packet(buf[pos + 4:pos + 4 + n])
            except pymysql.err.MySQLError as e:
                # The server's error for one statement: it runs none of the next ones.
                self._buffer = b""
                return e
            pos += 4 + n
        self._buffer = buf[pos:]
        return self._results if done else None

    def _packet(self, data):
        """One packet of the answer; True once the last result set is complete.  (Read
        in place, as PyMySQL's packet classes would, without making them: every
        barrier query's answer is six packets.)"""
        first = data[0]
        if first == 0xFF:
            MysqlPacket(data, "utf8").raise_for_error()
        state = self._expect
        if state == "first":
            if first == 0 and len(data) >= 7:            # OK
                _affected, pos = _lenenc(data, 1)
                _insert_id, pos = _lenenc(data, pos)
                self.last_status = data[pos] | data[pos + 1] << 8
                self._results.append(None)
                return self._ended(self.last_status)
            self._result = [[], [], _lenenc(data, 0)[0]]
            self._expect = "columns"
            return False
        if state == "columns":
            if first == 0xFE and len(data) < 9:          # EOF
                self._expect = "rows"
                return False
            # catalog, schema, table, org_table, name, org_name; then the length of
            # the fixed fields, character set (2 bytes), column length (4), type.
            pos = 0
            for _ in range(6):
                n, pos = _lenenc(data, pos)
                pos += n
            self._result[0].append(data[pos + 7])
            return False
        if first == 0xFE and len(data) < 9:              # EOF: warnings, status
            self._results.append(self._result[1])
            self._result = None
            self.last_status = data[3] | data[4] << 8
            return self._ended(self.last_status)
        row = []
        pos = 0
        for t in self._result[0]:
            n, pos = _lenenc(data, pos)
            if n is None:
                row.append(None)
                continue
            v = data[pos:pos + n]
            pos += n
            row.append(int(v) if t in _INTEGER_TYPES else v)
        self._result[1].append(tuple(row))
        return False

    def _ended(self, status):
        if status & SERVER_STATUS.SERVER_MORE_RESULTS_EXISTS:
            self._expect = "first"
            return False
        return True


#: Bytes one read of a reactor connection's socket takes at most.
_RECEIVE_SIZE = 256 * 1024

def _constant_command(statements):
    """The COM_QUERY packets of a script of parameterless statements."""
    return _command(";\n".join(sql for sql, _params in statements))


def _command(text):
    """The COM_QUERY packets of ``text``."""
    payload = b"\x03" + text.encode("utf-8")
    out = []
    seq = 0
    while True:                      # 16 MiB - 1 per packet; a full one continues
        chunk, payload = payload[:0xFFFFFF], payload[0xFFFFFF:]
        out.append(struct.pack("<I", len(chunk))[:3] + bytes([seq & 0xFF]) + chunk)
        seq += 1
        if len(chunk) < 0xFFFFFF:
            break
    return b"".join(out)


def _lenenc(data, pos):
    """A length-encoded integer at ``pos``: (value or None for NULL, position after)."""
    c = data[pos]
    if c < 0xFB:
        return c, pos + 1
    if c == 0xFB:
        return None, pos + 1
    if c == 0xFC:
        return data[pos + 1] | data[pos + 2] << 8, pos + 3
    if c == 0xFD:
        return int.from_bytes(data[pos + 1:pos + 4], "little"), pos + 4
    return int.from_bytes(data[pos + 1:pos + 9], "little"), pos + 9


def _commands(statements):
    """``statements`` as commands of one statement each, the session and transaction
    statements (SET, START TRANSACTION, BEGIN) joined to the statement after them."""
    out = []
    pending = []
    for stmt in statements:
        pending.append(stmt)
        head = stmt[0].lstrip()[:18].upper()
        if not head.startswith(("SET ", "START TRANSACTION", "BEGIN")):
            out.append(pending)
            pending = []
    if pending:
        out.append(pending)
    return out


_INTEGER_TYPES = frozenset((FIELD_TYPE.TINY, FIELD_TYPE.SHORT, FIELD_TYPE.LONG,
                            FIELD_TYPE.LONGLONG, FIELD_TYPE.INT24, FIELD_TYPE.YEAR))
