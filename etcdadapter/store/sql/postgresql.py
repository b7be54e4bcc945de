"""PostgreSQL through psycopg 3.

Reads run in REPEATABLE READ READ ONLY transactions (one snapshot for the counter and the
data).  Writes run in READ COMMITTED: after SELECT ... FOR UPDATE on the counter row has
waited for the previous writer, every later statement sees that writer's commit (under
REPEATABLE READ the lock wait would end in a serialization failure instead).

Write transactions bound their lock waits with ``SET LOCAL statement_timeout`` (the time
left of the store's ``lock_timeout``), sent with BEGIN in one round trip and put back to
the session's default in the same round trip as the counter's locking SELECT, so it bounds
the whole wait for the counter lock -- ``lock_timeout`` would not: it bounds each lock
acquisition, and a row lock with several waiters is two (the tuple lock, then the
holder's transaction ID) or more.  ``SET LOCAL idle_in_transaction_session_timeout``
bounds how long a write transaction may stay idle in the server: a stalled or dead
adapter's session is ended, its locks released.

Keys are BYTEA, compared bytewise; B-tree entries are limited to about 2.7 kB, hence
``max_key_bytes``.

Other instances' commits arrive by LISTEN/NOTIFY: a trigger on the revision counter
notifies channel ``etcd_adapter`` with "<revision> <writer>" at every commit (NOTIFY is
delivered only on commit, in commit order, to listeners of the same database); the writer
is the store instance's tag, set as the custom setting ``etcd_adapter.instance`` on each of
its connections, so an instance ignores its own commits.  Behind a
pooler in transaction mode (PgBouncer) LISTEN does not work: use ``notify=false`` and rely
on polling.
"""

import math
import os

import psycopg

from etcdadapter.store.sql.dialect import (DISCONNECT, DUPLICATE, LOCK_TIMEOUT,
                                           NOT_READY, RETRY, Dialect)
from etcdadapter.store.sql.reactor_conn import (Constant, ReactorConnection,
                                                 RevisionReader)

_RETRY_STATES = ("40001", "40P01")             # serialization, deadlock
_LOCK_TIMEOUT = ("55P03", "57014")            # lock not available, statement timeout
_GONE_CLASSES = ("08", "53", "57")             # connection, resources, operator intervention
_IDLE_KILLED = "25P03"                         # idle_in_transaction_session_timeout


class PostgresDialect(Dialect):
    name = "postgresql"
    BIGINT = "BIGINT"
    INT = "INTEGER"
    KEY = "BYTEA"
    VALUE = "BYTEA"
    max_key_bytes = 2600
    begin_read = ("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY",)
    begin_write = ("BEGIN ISOLATION LEVEL READ COMMITTED",)

    CHANNEL = "etcd_adapter"

    # Concurrent CREATE TABLE IF NOT EXISTS of one table fails in PostgreSQL (a unique
    # violation on pg_type): instances starting together on a fresh database take turns.
    migration_lock = (
        "SELECT pg_advisory_lock(hashtext('etcd-adapter schema ' || current_schema()))",
        "SELECT pg_advisory_unlock(hashtext('etcd-adapter schema ' || current_schema()))")

    def __init__(self, notify=True, lock_timeout=None, idle_transaction_timeout=None,
                 **params):
        """``params``: libpq connection parameters (host, port, user, password, dbname,
        sslmode, sslrootcert, sslcert, sslkey, connect_timeout, ...); ``notify``: listen
        for other instances' commits; the timeouts: see Dialect (seconds, None: none)."""
        self.can_notify = notify
        self.lock_timeout = lock_timeout or None
        self.idle_transaction_timeout = idle_transaction_timeout or None
        self.params = dict(params)
        self.params.setdefault("application_name", "etcd-adapter")
        # Tags this store's sessions, so that the trigger names the writer and the
        # listener can skip its own commits (the feed has them already).
        self.instance = os.urandom(6).hex()
        self.params["options"] = (self.params.get("options", "")
                                  + " -c etcd_adapter.instance=" + self.instance).strip()

    def describe(self):
        p = self.params
        return "postgresql://%s@%s:%s/%s" % (p.get("user", ""), p.get("host", ""),
                                            p.get("port", ""), p.get("dbname", ""))

    def connect(self):
        return psycopg.connect(autocommit=True, **self.params)

    # The counter lock's wait is bounded by the statement_timeout that BEGIN set (the
    # cursor answers the SELECT's rows; the SET runs in the same round trip).
    counter_lock = " FOR UPDATE; SET LOCAL statement_timeout = DEFAULT"

    def begin_write_bounded(self, wait, settings):
        # One string, one round trip (several statements are fine without parameters).
        sql = self.begin_write[0]
        if wait is not None:
            sql += "; SET LOCAL statement_timeout = %d" % _ms(wait)  # 0 would mean none
        if self.idle_transaction_timeout:
            sql += ("; SET LOCAL idle_in_transaction_session_timeout = %d"
                    % _ms(self.idle_transaction_timeout))
        return (sql,)

    def listen_connect(self):
        conn = self.connect()
        conn.execute("LISTEN " + self.CHANNEL)
        return conn

    def wait_notify(self, conn, timeout):
        best = None
        # The first notification (waiting up to ``timeout``), then whatever else is
        # already queued.
        for wait, stop_after in ((timeout, 1), (0.0, None)):
            got = False
            for n in conn.notifies(timeout=wait, stop_after=stop_after):
                got = True
                rev, _, writer = n.payload.partition(" ")
                if writer == self.instance:
                    continue
                try:
                    rev = int(rev)
                except ValueError:
                    rev = 0
                best = rev if best is None else max(best, rev)
            if not got:
                break
        return best

    def script(self, cursor, statements):
        if len(statements) < 2:
            return Dialect.script(self, cursor, statements)
        if all(params is None for _sql, params in statements):
            # The simple query protocol takes several statements in one message.
            cursor.execute("; ".join(sql for sql, _p in statements))
            out = []
            while True:
                out.append(cursor.fetchall() if cursor.description is not None else None)
                if not cursor.nextset():
                    return out
        # With parameters: a pipeline, one round trip for all.
        conn = cursor.connection
        cursors = []
        with conn.pipeline():
            for sql, params in statements:
                c = conn.cursor()
                c.execute(sql, params)
                cursors.append(c)
        return [c.fetchall() if c.description is not None else None for c in cursors]

    def reactor_connection(self, reactor, timeout):
        return _ReactorConnection(self, reactor, timeout)

    def revision_reader(self, reactor):
        return RevisionReader(self.reactor_connection(reactor, 2.0))

    def schema_extras(self):
        return [
            "CREATE OR REPLACE FUNCTION etcd_notify_revision() RETURNS trigger "
            "LANGUAGE plpgsql AS $$ BEGIN "
            "PERFORM pg_notify('" + self.CHANNEL + "', NEW.revision::text || ' ' || "
            "coalesce(current_setting('etcd_adapter.instance', true), '')); "
            "RETURN NULL; END $$",
            "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_trigger "
            "WHERE tgname = 'etcd_meta_notify' AND tgrelid = 'etcd_meta'::regclass) THEN "
            "CREATE TRIGGER etcd_meta_notify AFTER UPDATE OF revision ON etcd_meta "
            "FOR EACH ROW EXECUTE FUNCTION etcd_notify_revision(); END IF; END $$",
        ]

    # DELETE ... USING: joins the planner drives from the batch's primary-key range (an
    # IN (subquery) form may be planned as a hash join over the whole table).
    def purge_dead_keys(self, log, current, lo, hi, compact):
        return ("DELETE FROM {cur} c USING {log} t WHERE t.revision >= %s "
                "AND t.revision <= %s AND t.version = 0 AND c.name = t.name "
                "AND c.version = 0 AND c.revision < %s").format(log=log, cur=current), \
            (lo, hi, compact)

    def purge_superseded(self, log, lo, hi):
        return ("DELETE FROM {log} p USING {log} n WHERE n.revision >= %s "
                "AND n.revision <= %s AND n.prev_revision > 0 "
                "AND p.revision = n.prev_revision AND p.sub = n.prev_sub").format(log=log), \
            (lo, hi)

    def purge_tombstones(self, log, lo, hi, compact):
        return ("DELETE FROM {log} l USING {log} t WHERE t.revision >= %s "
                "AND t.revision <= %s AND t.revision < %s AND t.version = 0 "
                "AND l.revision = t.revision AND l.name = t.name "
                "AND l.sub <= t.sub").format(log=log), (lo, hi, compact)

    # The counter lock's bound ends with the locking statement.
    after_counter_lock = ("SET LOCAL statement_timeout = DEFAULT",)

    def guard_failed(self, exc):
        return getattr(exc, "sqlstate", None) == "23502"       # not_null_violation

    def classify(self, exc):
        state = getattr(exc, "sqlstate", None)
        if state in _RETRY_STATES:
            return RETRY
        if state in _LOCK_TIMEOUT:
            return LOCK_TIMEOUT
        if state == _IDLE_KILLED:
            return DISCONNECT            # the server ended the session (rolled back)
        if state == "25006":
            # read_only_sql_transaction: a standby (or a demoted primary after a
            # failover) -- Unavailable at once, like a node without quorum.
            return NOT_READY
        if state == "23505":
            return DUPLICATE
        if isinstance(exc, psycopg.InterfaceError):
            return DISCONNECT
        if isinstance(exc, psycopg.OperationalError):
            if state is None or state[:2] in _GONE_CLASSES:
                return DISCONNECT
        return None

    def db_size(self, tx, tables):
        size = 0
        for t in tables:
            size += tx.one("SELECT pg_total_relation_size(%s)", (t,))[0] or 0
        return size, size


class _ReactorConnection(ReactorConnection):
    """Through libpq's asynchronous API on the reactor: a script without parameters is
    one simple query (several statements, one result each); with parameters, one
    pipeline of extended-protocol queries (values sent as text, bytes as binary)."""

    def _connect(self):
        conn = self.dialect.connect()
        conn.pgconn.nonblocking = 1
        return conn

    def _fileno(self, conn):
        return conn.pgconn.socket

    def _lost(self, message="the server closed the connection"):
        return psycopg.OperationalError("connection lost: %s" % message)

    def _send(self, conn, statements):
        pg = conn.pgconn
        self._results = []
        self._current = None
        if type(statements) is Constant:            # the barrier's query: encoded once
            self._pipeline = False
            pg.send_query(statements.encoded(_simple))
        elif all(params is None for _sql, params in statements):
            self._pipeline = False
            pg.send_query(_simple(statements))
        else:
            self._pipeline = True
            self._left = len(statements)
            pg.enter_pipeline_mode()
            for sql, params in statements:
                # One command per extended query: a parameterless "a; b" (the bounded
                # BEGIN) goes as its parts; our SQL has no "; " inside a literal.
                for part in (sql.split("; ") if params is None else (sql,)):
                    text, values, types, formats = _extended(part, params or ())
                    pg.send_query_params(text, values, param_types=types,
                                         param_formats=formats)
            pg.pipeline_sync()
        return b"-"                      # libpq writes: see _socket_send

    def _socket_send(self, conn, data):
        return len(data) if conn.pgconn.flush() == 0 else 0

    def _peek_closed(self, conn):
        pg = conn.pgconn
        pg.consume_input()               # raises when the server has gone
        return pg.status != _pq.ConnStatus.OK

    def _receive(self, conn):
        pg = conn.pgconn
        pg.consume_input()
        while not pg.is_busy():
            res = pg.get_result()
            if res is None:
                if not self._pipeline:
                    return self._done()
                continue                 # the end of one query of the pipeline
            status = res.status
            if status == _PIPELINE_SYNC:
                pg.exit_pipeline_mode()
                return self._done()
            if status in (_FATAL_ERROR, _PIPELINE_ABORTED):
                if self._current is None:
                    self._current = _error_of(res)
                continue
            self._results.append(_rows_of(res))
        return None

    def _done(self):
        return self._current if self._current is not None else self._results


_pq = psycopg.pq
_PIPELINE_SYNC = _pq.ExecStatus.PIPELINE_SYNC
_FATAL_ERROR = _pq.ExecStatus.FATAL_ERROR
_PIPELINE_ABORTED = _pq.ExecStatus.PIPELINE_ABORTED
_TUPLES_OK = _pq.ExecStatus.TUPLES_OK
_INT_TYPES = frozenset((20, 21, 23))     # int8, int2, int4
_BYTEA = 17
_INT8 = 20


def _simple(statements):
    """The text of one simple query running parameterless ``statements``."""
    return "; ".join(sql for sql, _p in statements).encode("utf-8")


def _extended(sql, params):
    """``%s`` placeholders as $1, $2, ...; values as libpq takes them (ints as text
    bigint, bytes as binary bytea)."""
    parts = sql.split("%s")
    text = parts[0]
    for i, part in enumerate(parts[1:]):
        text += "$%d" % (i + 1) + part
    values, types, formats = [], [], []
    for v in params:
        if v is None:
            values.append(None)
            types.append(0)
            formats.append(0)
        elif isinstance(v, (bytes, bytearray, memoryview)):
            values.append(bytes(v))
            types.append(_BYTEA)
            formats.append(1)
        else:
            values.append(str(int(v)).encode())
            types.append(_INT8)
            formats.append(0)
    return text.encode("utf-8"), values, types, formats


def _rows_of(res):
    if res.status != _TUPLES_OK:
        return None
    ncols = res.nfields
    types = [res.ftype(i) for i in range(ncols)]
    rows = []
    for r in range(res.ntuples):
        row = []
        for c in range(ncols):
            v = res.get_value(r, c)
            if v is not None:
                if types[c] in _INT_TYPES:
                    v = int(v)
                elif types[c] == _BYTEA:
                    v = bytes.fromhex(v[2:].decode()) if v[:2] == b"\\x" else v
            row.append(v)
        rows.append(tuple(row))
    return rows


def _error_of(res):
    state = res.error_field(_pq.DiagnosticField.SQLSTATE)
    state = state.decode() if state else None
    message = (res.error_message or b"").decode("utf-8", "replace").strip()
    try:
        cls = psycopg.errors.lookup(state) if state else psycopg.OperationalError
    except KeyError:
        cls = psycopg.DatabaseError
    return cls(message)


def _ms(seconds):
    return max(1, int(math.ceil(seconds * 1000)))
