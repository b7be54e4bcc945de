"""The SQL stores: one generic store (:mod:`.generic`) over small per-engine dialects.

URLs (``--store``)::

    sqlite:///var/lib/etcd-adapter/etcd.db     (sqlite://relative/path.db is relative)
    mysql://user:password@host:3306/database   (MySQL, MariaDB)
    tidb://user:password@host:4000/database
    postgresql://user:password@host:5432/database   (also postgres://)

Key length: MySQL/MariaDB/TiDB store keys of at most 3,000 bytes, PostgreSQL 2,600 (the key
column and its B-tree indexes; etcd, the memory store and SQLite take any key a request can
carry).  A write of a longer key changes nothing and fails with etcd's InvalidArgument
"etcdserver: request is too large: key of N bytes, the mysql store takes keys of at most
3000 bytes".  Lifting the cap would need another key column (a hash for the indexes) and
every range query rewritten over it while keeping keys in byte order: not done.

Query parameters, every store:

``poll_interval``  how often to look for other instances' writes: seconds or ``50ms``
                   (default 40 ms; this instance's own writes are seen at once)
``pool_size``      read threads, each with one connection (default 4): the change feed's
                   polls, the replica's load, lease and auth reads run there, never
                   behind writes (reads of keys are answered from the replica)
``write_pool_size``  write threads, each with one connection (default 2): lease grants
                   and keep-alives, auth saves.  The write batches (group commit) and
                   the read barrier have a connection each, driven by the reactor on
                   MySQL/MariaDB/TiDB (without TLS) and PostgreSQL, a thread otherwise;
                   PostgreSQL adds the LISTEN connection: pool_size + write_pool_size +
                   3 or 4 connections per adapter
``initial_revision``  first revision of a database created now (default: the wall clock
                   in ms, like the memory store, so a recreated database never goes back)
``compact_batch``  log rows a compaction deletes per transaction (default 1000; writers
                   wait for one such batch at most, see :mod:`.purge`)

MySQL / MariaDB / TiDB and PostgreSQL, how adapters on one database bound each other
(see docs/deployment.md, "When an adapter stalls"):

``lock_timeout``   how long a write may wait for the revision-counter lock (or another row
                   lock) that another transaction holds, counted from when the write was
                   queued; then it answers Unavailable "etcdserver: request timed out" at
                   once, without retrying (default 3 s; MySQL/MariaDB round the time left
                   to whole seconds; ``0``: the server's own setting, e.g. InnoDB's 50 s)
``idle_transaction_timeout``  how long the database may leave one of this adapter's
                   write transactions waiting for its next statement before it ends the
                   session, rolling back and releasing the lock -- what bounds a stalled
                   (SIGSTOP, VM pause) or dead adapter's hold on the other adapters' writes
                   (default 1 s, below ``lock_timeout``: the writes it held up then go
                   through instead of failing; PostgreSQL
                   ``idle_in_transaction_session_timeout``, MariaDB
                   ``idle_transaction_timeout`` in whole seconds; MySQL and TiDB have no
                   such setting: ignored there; ``0``: none)

SQLite: ``busy_timeout`` (seconds a write may wait for the write lock -- this process's
other writers, then another process's -- counted from when it was queued, then
Unavailable "request timed out"; default 5), ``synchronous`` (``FULL`` default,
``NORMAL``, ...).

MySQL / TiDB: ``connect_timeout`` (seconds, default 5), ``timeout`` (read/write timeout,
seconds, default 60), ``ssl_ca``, ``ssl_cert``, ``ssl_key`` (files; any of them turns TLS
on), ``ssl_verify_cert``, ``ssl_verify_identity`` (true/false), ``unix_socket``.

Multi-primary clusters are recognised at connect (see docs/deployment.md, "Distributed
databases"); every session of the adapter then reads causally, with no setting:

``wsrep_sync_wait``  on a MariaDB/Percona Galera node (``wsrep_on`` with a provider): the
                   session's ``wsrep_sync_wait`` bit mask (default 3: reads and
                   UPDATE/DELETE wait until the node has applied everything committed
                   in the cluster before them; ``0`` turns it off -- stale reads across
                   nodes, for a single-writer setup that accepts them)
``group_replication_consistency``  on a MySQL Group Replication member: the session's
                   ``group_replication_consistency`` (default ``BEFORE``)

Write conflicts (deadlocks, Galera certification failures, Group Replication and TiDB
write conflicts) are retried with jittered back-off until the write's ``lock_timeout``
(counted from when it was queued) is used up; only then does it answer Unavailable
"request timed out".

PostgreSQL: ``connect_timeout`` (default 5), ``sslmode``, ``sslrootcert``, ``sslcert``,
``sslkey`` (libpq's names; ``ssl_ca``/``ssl_cert``/``ssl_key`` are accepted too, and
``ssl_ca`` alone means ``sslmode=verify-full``), ``host`` (e.g. a socket directory),
``application_name``, ``options`` (server settings, e.g. ``-csearch_path=etcd`` to keep
the tables in schema ``etcd``), ``notify`` (default true: other instances' commits wake the change
feed through LISTEN/NOTIFY, and the periodic poll slows to once a second; ``false`` behind
a pooler in transaction mode).

The schema, and how it is created and migrated, is described in :mod:`.schema`.
"""

from urllib.parse import unquote

SCHEMES = ("sqlite", "mysql", "tidb", "postgresql", "postgres")


def _error(message):
    from etcdadapter.store.urls import StoreURLError
    return StoreURLError(message)


def _seconds(name, text):
    from etcdadapter import durations
    try:
        value = durations.seconds(text)
    except ValueError:
        raise _error("%s must be a duration (e.g. 0.05 or 50ms): %r" % (name, text))
    if value < 0:
        raise _error("%s must not be negative" % name)
    return value


def _int(name, text, minimum):
    try:
        value = int(text)
    except ValueError:
        raise _error("%s must be an integer: %r" % (name, text))
    if value < minimum:
        raise _error("%s must be >= %d" % (name, minimum))
    return value


def _bool(name, text):
    t = text.strip().lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off"):
        return False
    raise _error("%s must be true or false: %r" % (name, text))


def _sqlite(parts, q):
    from etcdadapter.store.sql.sqlite import SYNCHRONOUS, SQLiteDialect
    path = unquote(parts.netloc + parts.path)
    if not path or path == ":memory:":
        raise _error("sqlite:// needs a file path, e.g. sqlite:///var/lib/etcd/etcd.db")
    kw = {}
    if "busy_timeout" in q:
        kw["busy_timeout"] = _seconds("busy_timeout", q.pop("busy_timeout"))
    if "synchronous" in q:
        sync = q.pop("synchronous").upper()
        if sync not in SYNCHRONOUS:
            raise _error("synchronous must be one of %s" % ", ".join(SYNCHRONOUS))
        kw["synchronous"] = sync
    return SQLiteDialect(path, **kw)


def _timeouts(q, kw):
    """The lock and idle-transaction bounds of the server databases (0: none)."""
    from etcdadapter.store.sql.dialect import (DEFAULT_IDLE_TRANSACTION_TIMEOUT,
                                               DEFAULT_LOCK_TIMEOUT)
    kw["lock_timeout"] = DEFAULT_LOCK_TIMEOUT
    kw["idle_transaction_timeout"] = DEFAULT_IDLE_TRANSACTION_TIMEOUT
    for name in ("lock_timeout", "idle_transaction_timeout"):
        if name in q:
            kw[name] = _seconds(name, q.pop(name)) or None


def _mysql(scheme, parts, q):
    from etcdadapter.store.sql.mysql import MySQLDialect, TiDBDialect
    database = unquote(parts.path.lstrip("/"))
    if not database:
        raise _error("%s:// needs a database name: %s://user@host/database"
                     % (scheme, scheme))
    try:
        port = parts.port
    except ValueError:
        raise _error("bad port in %s URL" % scheme)
    kw = dict(host=parts.hostname or "127.0.0.1",
              port=port or (4000 if scheme == "tidb" else 3306),
              user=unquote(parts.username) if parts.username else "root",
              password=unquote(parts.password) if parts.password else "",
              database=database, connect_timeout=5, read_timeout=60, write_timeout=60)
    if "connect_timeout" in q:
        kw["connect_timeout"] = _seconds("connect_timeout", q.pop("connect_timeout"))
    if "timeout" in q:
        kw["read_timeout"] = kw["write_timeout"] = _seconds("timeout", q.pop("timeout"))
    for name in ("ssl_ca", "ssl_cert", "ssl_key", "unix_socket"):
        if name in q:
            kw[name] = q.pop(name)
    for name in ("ssl_verify_cert", "ssl_verify_identity"):
        if name in q:
            kw[name] = _bool(name, q.pop(name))
    if "wsrep_sync_wait" in q:
        kw["wsrep_sync_wait"] = _int("wsrep_sync_wait", q.pop("wsrep_sync_wait"), 0)
        if kw["wsrep_sync_wait"] > 15:
            raise _error("wsrep_sync_wait must be 0..15 (a bit mask)")
    if "group_replication_consistency" in q:
        level = q.pop("group_replication_consistency").strip().upper()
        if level not in _GR_LEVELS:
            raise _error("group_replication_consistency must be one of %s"
                         % ", ".join(_GR_LEVELS))
        kw["group_replication_consistency"] = level
    _timeouts(q, kw)
    cls = TiDBDialect if scheme == "tidb" else MySQLDialect
    return cls(**kw)


_GR_LEVELS = ("EVENTUAL", "BEFORE_ON_PRIMARY_FAILOVER", "BEFORE", "AFTER",
              "BEFORE_AND_AFTER")

_PG_ALIASES = {"ssl_ca": "sslrootcert", "ssl_cert": "sslcert", "ssl_key": "sslkey"}
_PG_PARAMS = ("sslmode", "sslrootcert", "sslcert", "sslkey", "host", "application_name",
              "options")


def _postgresql(parts, q):
    from etcdadapter.store.sql.postgresql import PostgresDialect
    try:
        port = parts.port
    except ValueError:
        raise _error("bad port in postgresql URL")
    kw = {"connect_timeout": 5}
    if parts.hostname:
        kw["host"] = parts.hostname
    if port:
        kw["port"] = port
    if parts.username:
        kw["user"] = unquote(parts.username)
    if parts.password:
        kw["password"] = unquote(parts.password)
    database = unquote(parts.path.lstrip("/"))
    if database:
        kw["dbname"] = database
    for alias, name in _PG_ALIASES.items():
        if alias in q:
            kw[name] = q.pop(alias)
    if "sslrootcert" in kw:
        kw.setdefault("sslmode", "verify-full")
    for name in _PG_PARAMS:
        if name in q:
            kw[name] = q.pop(name)
    if "connect_timeout" in q:
        kw["connect_timeout"] = max(1, int(round(_seconds("connect_timeout",
                                                          q.pop("connect_timeout")))))
    if "notify" in q:
        kw["notify"] = _bool("notify", q.pop("notify"))
    _timeouts(q, kw)
    return PostgresDialect(**kw)


def open_sql_store(scheme, parts, query, **store_kw):
    """A :class:`~etcdadapter.store.sql.generic.SQLStore` for a parsed URL (``query``:
    {name: last value}; unknown names are an error)."""
    from etcdadapter.store.sql.generic import SQLStore
    q = dict(query)
    kw = {}
    if "poll_interval" in q:
        kw["poll_interval"] = _seconds("poll_interval", q.pop("poll_interval"))
    for name in ("pool_size", "write_pool_size"):
        if name in q:
            kw[name] = _int(name, q.pop(name), 1)
    if "initial_revision" in q:
        kw["initial_revision"] = _int("initial_revision", q.pop("initial_revision"), 1)
    if "compact_batch" in q:
        kw["compact_batch"] = _int("compact_batch", q.pop("compact_batch"), 1)
    if scheme == "sqlite":
        dialect = _sqlite(parts, q)
    elif scheme in ("mysql", "tidb"):
        dialect = _mysql(scheme, parts, q)
    else:
        dialect = _postgresql(parts, q)
    if q:
        raise _error("unknown %s store option(s): %s" % (scheme, ", ".join(sorted(q))))
    kw.update(store_kw)
    return SQLStore(dialect, **kw)
