"""Running database work off the reactor: two bounded thread pools, one connection per pool
thread, transactions with retries, and driver errors turned into etcd errors.

:meth:`Runner.call` runs ``f(session, *args)`` in a thread of the *write* pool (the
default) or of the *read* pool (``pool=READ``) and returns a Deferred that fires on the
reactor thread.  The pools have their own threads and connections: a write waiting for
the revision-counter lock (held by another adapter, perhaps a stalled one) ties up write
threads only, never the reads, the change feed's polls or ``/health``.  Inside,
``session.transaction(mode, fn)`` opens a transaction on the thread's connection, runs
``fn(tx)`` and commits:

* a write waits for locks at most the dialect's ``lock_timeout``, counted from when the
  call was queued (so writes queued behind waiting writes do not wait once more each);
  then it answers ``errors.ErrTimeout`` (Unavailable "request timed out") at once,
  without retrying: another transaction holds the lock and retrying would only wait again;
* deadlocks, serialization failures and certification conflicts (the database rolled
  the transaction back) are retried with jittered exponential back-off until the write's
  deadline (``lock_timeout`` after it was queued, else DEFAULT_RETRY_TIMEOUT; a read:
  a few attempts), then answered with ``errors.ErrTimeout`` (Unavailable);
* a server that answers but cannot serve now (NOT_READY: a Galera node without quorum,
  a read-only member, TiKV unavailable) answers ``errors.ErrNoLeader`` (Unavailable) at
  once, logged once as ``store-unavailable`` like a lost connection;
* a connection that turns out to be dead is replaced and the transaction retried once
  (idle connections get closed by servers and proxies, and the database ends a write
  transaction left idle longer than ``idle_transaction_timeout``: rolled back, so running
  it again is safe); a database that cannot be reached fails fast with
  ``errors.ErrNoLeader`` (Unavailable), never blocks the reactor;
* if the connection breaks while COMMIT of a write is in flight, the outcome is unknown:
  ``errors.ErrTimeout`` ("request timed out", etcd's answer for exactly that);
* an :class:`~etcdadapter.errors.EtcdError` raised by ``fn`` rolls back and propagates.

The runner logs the database's state changes once each, not every failed attempt:
``store-unavailable`` (warn: the error) when it stops answering and ``store-available``
(info: how long it was away) when a transaction succeeds again -- a write, if a write was
refused as not ready in the last ``WRITES_REFUSED_HOLD`` seconds (a node that still
serves reads is not back for writes because a read succeeded: one line for the whole
time it refuses them, however many reads come in between); writes that timed out
waiting for a lock are logged at most every 10 s (``store-lock-timeout``, with a count).
"""

import random
import threading
import time

from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from etcdadapter import errors
from etcdadapter.errors import EtcdError
from etcdadapter.store.sql.dialect import DISCONNECT, LOCK_TIMEOUT, NOT_READY, RETRY

log = Logger()

READ = "read"
WRITE = "write"
#: The group committer's thread (:mod:`.group_commit`): its batches never wait for a
#: thread that other writes hold (a lease keep-alive waiting for a lease row the batch
#: has locked).
COMMIT = "commit"

MAX_ATTEMPTS = 5
#: How long a write conflicting again and again (deadlocks, Galera certification
#: failures, TiDB write conflicts) is retried when the store has no lock_timeout (which
#: is the bound otherwise), from when it was queued: etcd clients' usual request timeout.
DEFAULT_RETRY_TIMEOUT = 5.0
# Lock-wait timeouts are logged at most this often (seconds), with the count since.
LOCK_TIMEOUT_LOG_INTERVAL = 10.0
#: After a write refused as not ready, how long only a committed write (not a read)
#: ends the outage (see Runner.unavailable).
WRITES_REFUSED_HOLD = 10.0
# After a failed connection attempt, further attempts fail at once for this long, so that
# requests fail fast instead of each waiting for its own connect timeout.
CONNECT_BACKOFF = 1.0


class Tx(object):
    """One transaction's statements on one connection (counted in ``session``)."""

    __slots__ = ("cursor", "_convert", "_session", "_dialect")

    def __init__(self, conn, dialect, session):
        self.cursor = conn.cursor()
        self._convert = dialect.placeholder != "%s"
        self._session = session
        self._dialect = dialect

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

    def script(self, statements):
        """Run (sql, params or None) statements in order, in as few round trips as the
        dialect can (:meth:`Dialect.script`); the result sets in order (rows, or None
        for a statement without any)."""
        self._session.statements += len(statements)
        if self._convert:
            statements = [(self._sql(sql), params) for sql, params in statements]
        return self._dialect.script(self.cursor, statements)


_qmark_cache = {}


def _to_qmark(sql):
    out = _qmark_cache.get(sql)
    if out is None:
        out = _qmark_cache[sql] = sql.replace("%s", "?")
    return out


class Session(object):
    """The state of one pool thread: its connection (made on first use)."""

    def __init__(self, runner, pool=WRITE):
        self.runner = runner
        self.dialect = runner.dialect
        self.pool = pool
        self.conn = None
        #: What the dialect has set on this connection (see Dialect.begin_write_bounded).
        self.settings = {}
        #: When the current call was queued (monotonic); the first write transaction of
        #: the call counts its lock-wait bound from there.
        self.queued_at = None
        #: Statements this session sent (for /metrics; one thread at a time writes it).
        self.statements = 0
        #: Until when (monotonic) the current write retries conflicts.
        self._retry_until = None
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
            # (available() once a transaction succeeds: a node without quorum accepts
            # connections but no statement)
            runner.connect_blocked_until = 0.0
            self.conn = conn
            self.settings = {}
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
        start, self.queued_at = self.queued_at, None
        if mode != "write":
            return self._transaction(mode, fn, None)
        d = self.dialect
        deadline = None
        start = start if start is not None else time.monotonic()
        if d.lock_timeout:
            deadline = start + d.lock_timeout
        # Conflicts are retried until then.
        self._retry_until = start + (d.lock_timeout or DEFAULT_RETRY_TIMEOUT)
        lock = d.write_lock
        if lock is None:
            return self._transaction(mode, fn, deadline)
        wait = -1 if deadline is None else max(0.0, deadline - time.monotonic())
        if not lock.acquire(timeout=wait):
            raise self.runner.lock_timed_out(deadline - d.lock_timeout)
        try:
            return self._transaction(mode, fn, deadline)
        finally:
            lock.release()

    def _transaction(self, mode, fn, deadline):
        d = self.dialect
        begin = d.begin_read if mode == "read" else d.begin_write
        attempt = -1
        while True:
            attempt += 1
            wait = None
            if deadline is not None:
                wait = deadline - time.monotonic()
                if wait <= 0:
                    # Queued (or retried) past the bound: answer now rather than wait
                    # at the lock once more.
                    raise self.runner.lock_timed_out(deadline - d.lock_timeout)
            reused = self.conn is not None
            conn = self._connection()
            if mode == "write":
                begin = d.begin_write_bounded(wait, self.settings)
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
                self._retry_or_raise(mode, kind, e, attempt, deadline)
                continue
            if mode == "ddl":
                self.runner.available()
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
                             db=d.describe(), err=error_text(e))
                    self.runner.unavailable("connection lost during COMMIT", e)
                    raise errors.ErrTimeout()
                self._rollback(conn)
                if kind == NOT_READY and mode == "write":
                    # Refused at COMMIT: the outcome may be unknown (TiKV timeouts).
                    self.runner.unavailable("not ready at COMMIT", e, writes=True)
                    raise errors.ErrTimeout()
                self._retry_or_raise(mode, kind, e, attempt, deadline)
                continue
            self.runner.available(writes=mode == "write")
            return result

    def _retry_or_raise(self, mode, kind, error, attempt, deadline):
        """After a failed attempt (rolled back): return to try again, or raise."""
        if kind == LOCK_TIMEOUT and mode != "write":
            # Reads take no locks: on a Galera node this is a causal wait that timed out
            # (repl.causal_read_timeout: the node cannot reach the cluster).
            self.runner.unavailable("causal read timed out", error)
            raise errors.ErrTimeout()
        if kind == LOCK_TIMEOUT and mode == "write":
            # Another transaction holds the lock: waiting again would only take as long
            # again.  Unavailable now; clients retry.
            raise self.runner.lock_timed_out(
                None if deadline is None else deadline - self.dialect.lock_timeout)
        if kind == NOT_READY:
            self.runner.unavailable("not ready", error, writes=mode == "write")
            raise errors.ErrNoLeader()
        if kind in (RETRY, LOCK_TIMEOUT):
            until = self._retry_until if mode == "write" else None
            pause = backoff(attempt)
            if (attempt + 1 >= MAX_ATTEMPTS if until is None
                    else time.monotonic() + pause >= until):
                raise _gave_up(self.dialect, error, attempt + 1)
            self.runner.conflict_retries += 1
            time.sleep(pause)
            return
        raise error


def backoff(attempt):
    """Seconds to wait before attempt ``attempt + 1`` of a conflicting transaction:
    "full jitter" (uniform up to an exponential bound, 2 ms doubling to 50 ms), so that
    the writers that conflicted do not all come back at the same moment."""
    return random.uniform(0.001, min(0.05, 0.002 * (2 ** min(attempt, 10))))


def error_text(e):
    """A driver's error for a log line: its class and message on one line (libpq's
    messages carry newlines and tabs)."""
    return "%s: %s" % (e.__class__.__name__, " ".join(str(e).split()))


def _gave_up(dialect, e, attempts):
    # Still conflicting at the deadline (rolled back each time): Unavailable, which
    # clients retry.
    log.warn("database {db}: giving up after {n} conflicting attempts: {err}",
             db=dialect.describe(), n=attempts, err=error_text(e))
    return errors.ErrTimeout()


class Runner(object):
    """Two bounded pools of threads (reads, writes), each thread with its own
    connection."""

    def __init__(self, dialect, size, reactor, write_size=None):
        """``size`` read threads, ``write_size`` (default: ``size``) write threads."""
        self.dialect = dialect
        self.reactor = reactor
        self.pools = {
            pool: ThreadPool(minthreads=0, maxthreads=n,
                             name="etcd-adapter-%s-%s" % (dialect.name, pool))
            for pool, n in ((READ, size), (WRITE, size if write_size is None
                                           else write_size), (COMMIT, 1))}
        self._local = threading.local()
        self.sessions = []
        self._conns = set()
        self._lock = threading.Lock()
        self._trigger = None
        self.connect_blocked_until = 0.0
        self._down_since = None          # monotonic time the database went away
        self._writes_refused_at = None   # ... and a write was refused as not ready then
        self._lock_timeouts = 0          # not logged yet
        self._lock_logged_at = None
        #: Transactions of the pools run again after a conflict (for /metrics).
        self.conflict_retries = 0

    def start(self):
        for pool in self.pools.values():
            pool.start()
        # If the reactor stops without the store being stopped, still end the threads.
        self._trigger = self.reactor.addSystemEventTrigger(
            "during", "shutdown", self.stop)

    def call(self, f, *args, pool=WRITE):
        """Deferred[f(session, *args)], run in a thread of ``pool`` (READ or WRITE)."""
        return deferToThreadPool(self.reactor, self.pools[pool], self._in_thread, pool,
                                 time.monotonic(), f, args)

    def _in_thread(self, pool, queued_at, f, args):
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = Session(self, pool)
        session.queued_at = queued_at
        try:
            return f(session, *args)
        finally:
            session.queued_at = None

    def lock_timed_out(self, since):
        """The error for a write that waited ``lock_timeout`` for a lock (``since``:
        when it started waiting, monotonic, or None); logged at most every
        LOCK_TIMEOUT_LOG_INTERVAL seconds."""
        now = time.monotonic()
        with self._lock:
            self._lock_timeouts += 1
            if (self._lock_logged_at is not None
                    and now - self._lock_logged_at < LOCK_TIMEOUT_LOG_INTERVAL):
                return errors.ErrTimeout()
            count, self._lock_timeouts = self._lock_timeouts, 0
            self._lock_logged_at = now
        log.warn("database {db}: {count} write(s) not done within lock_timeout ({limit}s), "
                 "waiting for a lock another transaction holds or queued behind such "
                 "writes (this one {waited}s): answered 'request timed out'",
                 event="store-lock-timeout", db=self.dialect.describe(), count=count,
                 waited=None if since is None else round(now - since, 3),
                 limit=self.dialect.lock_timeout)
        return errors.ErrTimeout()

    # -- the database's state, as seen by the pool threads --------------------------------
    @property
    def down_since(self):
        """Monotonic time the database went away, None while it answers."""
        return self._down_since

    def unavailable(self, what, error, writes=False):
        """The database failed us (logged once per outage).  ``writes``: it refused a
        write as not ready (read-only, no quorum, not primary) -- then, for
        ``WRITES_REFUSED_HOLD`` seconds, only a write that succeeds ends the outage: a
        node that serves reads but refuses writes would otherwise be "available again"
        after every read in between (the change feed polls every 40 ms) and log the
        pair once per refused write.  After that a read ends it too, so an adapter that
        takes no more writes does not stay "no leader" once the node is writable."""
        with self._lock:
            if writes:
                self._writes_refused_at = time.monotonic()
            if self._down_since is not None:
                log.debug("database {db}: {what}: {error}", db=self.dialect.describe(),
                          what=what, error=error_text(error))
                return
            self._down_since = time.monotonic()
        log.warn("database {db} unavailable ({what}): {error}", event="store-unavailable",
                 db=self.dialect.describe(), what=what, error=error_text(error))

    def available(self, writes=False):
        """A transaction succeeded (``writes``: a write committed)."""
        if self._down_since is None:
            return
        with self._lock:
            refused = self._writes_refused_at
            if not writes and refused is not None \
                    and time.monotonic() - refused < WRITES_REFUSED_HOLD:
                return
            since, self._down_since = self._down_since, None
            self._writes_refused_at = None
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
        """How many statements this runner's sessions have sent."""
        return sum(s.statements for s in list(self.sessions))

    def stop(self):
        """Join the threads (their work must be done) and close every connection."""
        if self._trigger is not None:
            try:
                self.reactor.removeSystemEventTrigger(self._trigger)
            except (ValueError, KeyError):
                pass
            self._trigger = None
        for pool in self.pools.values():
            if pool.started:
                pool.stop()
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for conn in conns:
            try:
                conn.close()
            except Exception:
                pass
