"""Every store under test, behind one fixture: memory, sqlite, mariadb, postgresql.

tests/conftest.py provides the fixtures to every module: a test that uses ``make_store``
runs once per store kind, with ids ``[memory]``, ``[sqlite]``, ``[mariadb]``,
``[postgresql]``; a module (or a test, with ``@pytest.mark.parametrize("store_kind",
[...])``) can narrow the kinds by overriding ``store_kind``.

* memory: a :class:`MemoryStore`, used directly (its Deferreds have already fired).
* sqlite: a file in the test's tmp dir.
* mariadb / postgresql: a fresh database ``etcdadapter_test_<random>`` per test on the
  local server (on PostgreSQL a fresh schema of that name in one database per session),
  dropped at teardown (``ETCDADAPTER_TEST_MYSQL`` / ``ETCDADAPTER_TEST_POSTGRES``
  override the server URLs).  If the server cannot be reached the test is skipped,
  unless ``CI=true`` (then it fails).

The SQL stores answer later, from their thread pool, on the reactor thread.  The Twisted
reactor runs in a background thread for the whole session, and a SQL store is handed to
the test wrapped in :class:`BlockingStore`: each method call runs on the reactor thread and
blocks until its Deferred fires, then returns an already-fired Deferred -- so the tests
read results with ``fired.result`` / ``fired.error_of`` exactly as for the memory store,
while the real thread pool, connections and change feed do the work.  Subscriber
callbacks run on the reactor thread; a callback that wants to write uses ``raw(s)`` and
does not wait.
"""

import os
import threading
import uuid
from urllib.parse import urlsplit

import pytest
from twisted.internet import defer
from twisted.python.failure import Failure

from support import servers

KINDS = ("memory", "sqlite", "mariadb", "postgresql")
SQL_KINDS = KINDS[1:]

MYSQL_URL = os.environ.get("ETCDADAPTER_TEST_MYSQL", "mysql://root@127.0.0.1:3306")
POSTGRES_URL = os.environ.get("ETCDADAPTER_TEST_POSTGRES",
                              "postgresql://postgres@127.0.0.1:5432")


# ---------------------------------------------------------------------------------------
# The reactor in a background thread

_reactor_lock = threading.Lock()
_reactor_thread = None


def reactor():
    """The global reactor, running in a daemon thread (started on first use)."""
    global _reactor_thread
    from twisted.internet import reactor as r
    with _reactor_lock:
        if _reactor_thread is None:
            started = threading.Event()
            r.callWhenRunning(started.set)
            _reactor_thread = threading.Thread(
                target=r.run, kwargs={"installSignalHandlers": False},
                name="test-reactor", daemon=True)
            _reactor_thread.start()
            if not started.wait(10):
                raise RuntimeError("the reactor did not start")
    return r


def call(f, *args, **kw):
    """Run ``f`` on the reactor thread; wait for its Deferred; return the result or
    raise its failure."""
    from twisted.internet.threads import blockingCallFromThread
    r = reactor()
    if threading.current_thread() is _reactor_thread:
        raise RuntimeError("call() from the reactor thread would deadlock")
    return blockingCallFromThread(r, lambda: defer.maybeDeferred(f, *args, **kw))


class BlockingStore(object):
    """A store whose every method runs on the reactor thread and returns an already-fired
    Deferred.  Attributes (``revision``, ...) read through."""

    def __init__(self, store):
        object.__setattr__(self, "raw", store)

    def __getattr__(self, name):
        attr = getattr(self.raw, name)
        if not callable(attr):
            return attr

        def blocking(*args, **kw):
            try:
                value = call(attr, *args, **kw)
            except Exception:
                return defer.fail(Failure())
            if name == "subscribe":
                return lambda: call(value)      # unsubscribe on the reactor thread too
            return defer.succeed(value)
        return blocking

    def __setattr__(self, name, value):
        setattr(self.raw, name, value)

    def __repr__(self):
        return "<BlockingStore %r>" % (self.raw,)


def raw(s):
    """The store itself (for code running on the reactor thread)."""
    return s.raw if isinstance(s, BlockingStore) else s


def settle(s):
    """Wait until the store has finished everything started so far (a lease expiry pass,
    a write started by a subscriber); a no-op for the memory store."""
    if isinstance(s, BlockingStore):
        call(s.raw.drain)


def is_memory(s):
    from etcdadapter.store.memory import MemoryStore
    return isinstance(raw(s), MemoryStore)


# ---------------------------------------------------------------------------------------
# Databases

_reachable = {}


def _require(kind):
    """Skip (or, with CI=true, fail) if the server for ``kind`` cannot be reached."""
    if kind not in _reachable:
        try:
            _admin(kind, lambda cur: cur.execute("SELECT 1"))
            _reachable[kind] = None
        except Exception as e:
            _reachable[kind] = "%s server not reachable: %s: %s" % (
                kind, e.__class__.__name__, e)
    message = _reachable[kind]
    if message:
        if servers.in_ci():
            pytest.fail(message + " (CI=true: failing instead of skipping)")
        pytest.skip(message)


def _admin(kind, fn):
    """fn(cursor) on an administrative autocommit connection."""
    if kind == "mariadb":
        import pymysql
        u = urlsplit(MYSQL_URL)
        conn = pymysql.connect(host=u.hostname, port=u.port or 3306,
                               user=u.username or "root", password=u.password or "",
                               autocommit=True, connect_timeout=3)
    else:
        import psycopg
        conn = psycopg.connect(POSTGRES_URL + "/postgres", autocommit=True,
                               connect_timeout=3)
    try:
        cur = conn.cursor()
        return fn(cur)
    finally:
        conn.close()


def create_database(kind):
    """A fresh database on the server for ``kind``; returns (store URL, drop function).
    PostgreSQL creates databases slowly (~0.3 s), so there it is a fresh schema in one
    database per test session (the URL selects it with ``options=-csearch_path=...``)."""
    _require(kind)
    name = "etcdadapter_test_" + uuid.uuid4().hex[:12]
    if kind == "postgresql":
        return _create_schema(name)
    _admin(kind, lambda cur: cur.execute("CREATE DATABASE " + name))

    def drop():
        _admin(kind, lambda cur: cur.execute("DROP DATABASE IF EXISTS " + name))
    return MYSQL_URL + "/" + name, drop


_pg_session_db = []


def _create_schema(name):
    import atexit
    import psycopg
    if not _pg_session_db:
        db = "etcdadapter_test_" + uuid.uuid4().hex[:12]
        _admin("postgresql", lambda cur: cur.execute("CREATE DATABASE " + db))
        _pg_session_db.append(db)
        atexit.register(lambda: _admin("postgresql", lambda cur: cur.execute(
            "DROP DATABASE IF EXISTS " + db + " WITH (FORCE)")))
    db = _pg_session_db[0]

    def on_db(sql):
        with psycopg.connect(POSTGRES_URL + "/" + db, autocommit=True,
                             connect_timeout=3) as conn:
            conn.execute(sql)
    on_db("CREATE SCHEMA " + name)

    def drop():
        on_db("DROP SCHEMA IF EXISTS " + name + " CASCADE")
    return "%s/%s?options=-csearch_path%%3D%s" % (POSTGRES_URL, db, name), drop


def store_url(kind, tmp_path):
    """(URL of a fresh empty store of ``kind``, cleanup function)."""
    if kind == "memory":
        return "memory://", lambda: None
    if kind == "sqlite":
        path = tmp_path / ("etcd-%s.db" % uuid.uuid4().hex[:8])
        return "sqlite://" + str(path), lambda: None
    return create_database(kind)


def _with_params(url, params):
    if not params:
        return url
    q = "&".join("%s=%s" % kv for kv in sorted(params.items()))
    return url + ("&" if "?" in url else "?") + q


# ---------------------------------------------------------------------------------------
# Fixtures

@pytest.fixture(params=KINDS)
def store_kind(request):
    return request.param


@pytest.fixture
def make_store(store_kind, tmp_path):
    """Factory: ``make_store(initial_revision=1, clock=None, url=None, store_kw=None,
    start=True, **url_params)`` -> a started store of the test's kind (BlockingStore for
    SQL).  ``factory.url`` is the URL of the database last created; several calls with
    the same ``url`` give several instances on one database.  ``store_kw`` go to the SQL
    store's constructor.  ``start=False``: the store itself, not started (for an
    adapter, which starts and stops it; stop it before the teardown).  Stopped and
    dropped at teardown."""
    from etcdadapter.store.memory import MemoryStore
    from etcdadapter.store.urls import open_store
    opened = []
    cleanups = []

    def factory(initial_revision=1, clock=None, url=None, store_kw=None, start=True,
                **params):
        if store_kind == "memory":
            s = MemoryStore(initial_revision=initial_revision, clock=clock)
            opened.append(s)
            return s
        if url is None:
            url, cleanup = store_url(store_kind, tmp_path)
            cleanups.append(cleanup)
        factory.url = url
        if initial_revision is not None:
            params["initial_revision"] = initial_revision
        store = open_store(_with_params(url, params), clock=clock, reactor=reactor(),
                           **(store_kw or {}))
        if not start:
            return store
        call(store.start)
        s = BlockingStore(store)
        opened.append(s)
        return s

    factory.kind = store_kind
    yield factory

    errors = []
    for s in reversed(opened):
        if isinstance(s, BlockingStore):
            try:
                call(s.raw.stop)
            except Exception as e:
                errors.append(e)
    for cleanup in cleanups:
        cleanup()
    if errors:
        raise errors[0]
