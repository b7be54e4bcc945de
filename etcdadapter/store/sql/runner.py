"""Running database work off the reactor: a bounded thread pool, one connection per pool
thread, transactions with retries, and driver errors turned into etcd errors.

:meth:`Runner.call` runs ``f(session, *args)`` in a pool thread and returns a Deferred that
fires on the reactor thread.  Inside, ``session.transaction(mode, fn)`` opens a transaction
on the thread's connection, runs ``fn(tx)`` and commits:

* deadlocks and serialization failures (the database rolled the transaction back) are
  retried a few times with a short random back-off, then answered with
  ``errors.ErrTimeout`` (Unavailable);
* a connection that turns out to be dead is replaced and the transaction retried once
  (idle connections get closed by servers and proxies); a database that cannot be reached
  fails fast with ``errors.ErrNoLeader`` (Unavailable), never blocks the reactor;
* if the connection breaks while COMMIT of a write is in flight, the outcome is unknown:
  ``errors.ErrTimeout`` ("request timed out", etcd's answer for exactly that);
* an :class:`~etcdadapter.errors.EtcdError` raised by ``fn`` rolls back and propagates.

The runner logs the database's state changes once each, not every failed attempt:
``store-unavailable`` (warn: the error) when it stops answering and ``store-available``
(info: how long it was away) when a connection succeeds again.
"""

import random
import threading
import time

from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from etcdadapter import errors
from etcdadapter.errors import EtcdError
from etcdadapter.store.sql.dialect import DISCONNECT, RETRY

log = Logger()

MAX_ATTEMPTS = 5
# After a failed connection attempt, further attempts fail at once for this long, so that
# requests fail fast instead of each waiting for its own connect timeout.
CONNECT_BACKOFF = 1.0


class Tx(object):
    """One transaction's statements on one connection (counted in ``session``)."""

    __slots__ = ("cursor", "_convert", "_session")

    def __init__(self, conn, dialect, session):
        self.cursor = conn.cursor()
        self._convert = dialect.placeholder != "%s"
        self._session = session

    def _sql(self, sql):
        return _to_qmark(sql) if self._convert else sql

    def run(self, sql, params=None):
        """Execute; returns the affected row count."""
        c = self.cursor
        self._session.statements += 1
        if params is None:
            c.execute(self._sql(sql))
        else:
            c.execute(self._sql(sql), params)
        return c.rowcount

    def one(self, sql, params=None):
        self.run(sql, params)
        return self.cursor.fetchone()

    def all(self, sql, params=None):
        self.run(sql, params)
        return self.cursor.fetchall()

    def many(self, sql, seq):
        self._session.statements += 1
        self.cursor.executemany(self._sql(sql), seq)


_qmark_cache = {}


def _to_qmark(sql):
    out = _qmark_cache.get(sql)
    if out is None:
        out = _qmark_cache[sql] = sql.replace("%s", "?")
    return out


class Session(object):
    """The state of one pool thread: its connection (made on first use)."""

    def __init__(self, runner):
        self.runner = runner
        self.dialect = runner.dialect
        self.conn = None
        #: Statements this session sent (for /metrics; one thread at a time writes it).
        self.statements = 0
        runner.sessions.append(self)

    def _connection(self):
        if self.conn is None:
            runner = self.runner
            if time.monotonic() < runner.connect_blocked_until:
                raise errors.ErrNoLeader()
            try:
                conn = self.dialect.connect()
            except Exception as e:
                runner.connect_blocked_until = time.monotonic() + CONNECT_BACKOFF
                runner.unavailable("cannot connect", e)
                raise errors.ErrNoLeader()
            runner.connect_blocked_until = 0.0
            runner.available()
            self.conn = conn
            runner._register(conn)
        return self.conn

    def drop(self):
        conn, self.conn = self.conn, None
        if conn is not None:
            self.runner._unregister(conn)
            try:
                conn.close()
            except Exception:
                pass

    def _rollback(self, conn):
        try:
            conn.cursor().execute(self.dialect.rollback)
        except Exception:
            self.drop()

    def transaction(self, mode, fn):
        """Run ``fn(tx)`` in one transaction and return its result.  ``mode``: "read" (a
        consistent snapshot), "write" or "ddl" (autocommit statements)."""
        lock = self.dialect.write_lock
        if lock is None or mode == "read":
            return self._transaction(mode, fn)
        with lock:
            return self._transaction(mode, fn)

    def _transaction(self, mode, fn):
        d = self.dialect
        begin = d.begin_read if mode == "read" else d.begin_write
        for attempt in range(MAX_ATTEMPTS):
            reused = self.conn is not None
            conn = self._connection()
            tx = Tx(conn, d, self)
            try:
                if mode != "ddl":
                    for stmt in begin:
                        tx.run(stmt)
                result = fn(tx)
            except EtcdError:
                if mode != "ddl":
                    self._rollback(conn)
                raise
            except Exception as e:
                kind = d.classify(e)
                if kind == DISCONNECT:
                    self.drop()
                    if reused and attempt == 0:
                        continue                 # a stale pooled connection: once more
                    self.runner.unavailable("connection lost", e)
                    raise errors.ErrNoLeader()
                if mode != "ddl":
                    self._rollback(conn)
                if kind == RETRY:
                    _pause_or_give_up(d, e, attempt)
                    continue
                raise
            if mode == "ddl":
                return result
            try:
                tx.run(d.commit)
            except Exception as e:
                kind = d.classify(e)
                if kind == DISCONNECT:
                    self.drop()
                    if mode == "read":
                        return result            # nothing to commit: the read stands
                    log.warn("database {db}: connection lost during COMMIT: {err}",
                             db=d.describe(), err=_text(e))
                    self.runner.unavailable("connection lost during COMMIT", e)
                    raise errors.ErrTimeout()
                self._rollback(conn)
                if kind == RETRY:
                    _pause_or_give_up(d, e, attempt)
                    continue
                raise
            return result
        raise AssertionError("unreachable")


def _pause_or_give_up(dialect, error, attempt):
    """A deadlock or serialization failure: wait a little before the next attempt, or
    raise once the attempts are used up."""
    if attempt + 1 >= MAX_ATTEMPTS:
        raise _gave_up(dialect, error)
    time.sleep(random.uniform(0.001, 0.01) * (attempt + 1))


def _text(e):
    return "%s: %s" % (e.__class__.__name__, e)


def _gave_up(dialect, e):
    # Still conflicting after every retry (rolled back each time): Unavailable, which
    # clients retry.
    log.warn("database {db}: giving up after {n} conflicting attempts: {err}",
             db=dialect.describe(), n=MAX_ATTEMPTS, err=_text(e))
    return errors.ErrTimeout()


class Runner(object):
    """A bounded pool of threads, each with its own connection."""

    def __init__(self, dialect, size, reactor, name=None, reports_to=None):
        """``reports_to``: another Runner on the same database that logs the database's
        state changes for both (one store-unavailable per outage, not one per pool)."""
        self.dialect = dialect
        self._reports_to = reports_to
        self.reactor = reactor
        self.pool = ThreadPool(minthreads=0, maxthreads=size,
                               name="etcd-adapter-%s%s" % (dialect.name,
                                                           "-" + name if name else ""))
        self._local = threading.local()
        self.sessions = []
        self._conns = set()
        self._lock = threading.Lock()
        self._trigger = None
        self.connect_blocked_until = 0.0
        self._down_since = None          # monotonic time the database went away

    def start(self):
        self.pool.start()
        # If the reactor stops without the store being stopped, still end the threads.
        self._trigger = self.reactor.addSystemEventTrigger(
            "during", "shutdown", self.stop)

    def call(self, f, *args):
        """Deferred[f(session, *args)], run in a pool thread."""
        return deferToThreadPool(self.reactor, self.pool, self._in_thread, f, args)

    def _in_thread(self, f, args):
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = Session(self)
        return f(session, *args)

    # -- the database's state, as seen by the pool threads --------------------------------
    def unavailable(self, what, error):
        if self._reports_to is not None:
            return self._reports_to.unavailable(what, error)
        with self._lock:
            if self._down_since is not None:
                log.debug("database {db}: {what}: {error}", db=self.dialect.describe(),
                          what=what, error=_text(error))
                return
            self._down_since = time.monotonic()
        log.warn("database {db} unavailable ({what}): {error}", event="store-unavailable",
                 db=self.dialect.describe(), what=what, error=_text(error))

    def available(self):
        if self._reports_to is not None:
            return self._reports_to.available()
        if self._down_since is None:
            return
        with self._lock:
            since, self._down_since = self._down_since, None
        if since is not None:
            log.info("database {db} available again after {outage:.1f}s",
                     event="store-available", db=self.dialect.describe(),
                     outage=round(time.monotonic() - since, 3))

    def _register(self, conn):
        with self._lock:
            self._conns.add(conn)

    def _unregister(self, conn):
        with self._lock:
            self._conns.discard(conn)

    def statements(self):
        """How many statements this pool's sessions have sent."""
        return sum(s.statements for s in list(self.sessions))

    def stop(self):
        """Join the threads (their work must be done) and close every connection."""
        if self._trigger is not None:
            try:
                self.reactor.removeSystemEventTrigger(self._trigger)
            except (ValueError, KeyError):
                pass
            self._trigger = None
        if self.pool.started:
            self.pool.stop()
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for conn in conns:
            try:
                conn.close()
            except Exception:
                pass
