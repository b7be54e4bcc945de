"""The ``etcd-adapter`` command against the local MariaDB and PostgreSQL: a database
that cannot be used is one line naming the store and the server's message (status 1);
one that is down at start-up is waited for (each try logged) for
``--store-start-timeout``; ``etcd_server_has_leader`` on the metrics port follows an
outage (the database cut and restored by the tests' TCP proxy)."""

import re
import time
import uuid
from urllib.parse import urlsplit

import pytest

from support import stores
from support.command import Running, free_port, get, metric, run
from support.db_proxy import DatabaseProxy
from etcdadapter.store.sql import schema

pytestmark = pytest.mark.adapter

MYSQL = stores.MYSQL_URL            # mysql://root@127.0.0.1:3306
POSTGRES = stores.POSTGRES_URL      # postgresql://postgres@127.0.0.1:5432


def one_line(stderr):
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def name():
    return "ops16_cli_" + uuid.uuid4().hex[:10]


def _admin(kind, *statements):
    def run_all(cur):
        for sql in statements:
            cur.execute(sql)
    stores._admin(kind, run_all)


def host_port(url):
    u = urlsplit(url)
    return "%s:%d" % (u.hostname, u.port)


def fails_with(store, *extra):
    status, out, err = run(["--store", store, "--listen", "127.0.0.1:%d" % free_port()]
                           + list(extra))
    assert status == 1, (out, err)
    assert "Traceback" not in out
    return one_line(err)


def test_mariadb_errors_are_one_line():
    db, ro, none = name(), name(), name()
    _admin("mariadb", "CREATE DATABASE " + db,
                 "CREATE USER '%s'@'%%' IDENTIFIED BY 'pw'" % ro,
                 "GRANT SELECT ON %s.* TO '%s'@'%%'" % (db, ro),
                 "CREATE USER '%s'@'%%' IDENTIFIED BY 'pw'" % none)
    hp = host_port(MYSQL)
    try:
        missing = name()
        assert fails_with("%s/%s" % (MYSQL, missing)) == (
            "etcd-adapter: store mysql://root@%s/%s: Unknown database '%s'; create it "
            "first (README: Quick start per store)" % (hp, missing, missing))
        assert fails_with("mysql://%s:wrong@%s/%s" % (ro, hp, db)) == (
            "etcd-adapter: store mysql://%s@%s/%s: Access denied for user '%s'@'127.0.0.1' "
            "(using password: YES); check the user and password in --store"
            % (ro, hp, db, ro))
        assert fails_with("mysql://%s:pw@%s/%s" % (none, hp, db)) == (
            "etcd-adapter: store mysql://%s@%s/%s: Access denied for user '%s'@'%%' to "
            "database '%s'; grant the user its rights (README: Quick start per store)"
            % (none, hp, db, none, db))
        assert fails_with("mysql://%s:pw@%s/%s" % (ro, hp, db)) == (
            "etcd-adapter: store mysql://%s@%s/%s: CREATE command denied to user "
            "'%s'@'127.0.0.1' for table `%s`.`etcd_schema_lock`; grant the user its "
            "rights (README: Quick start per store)" % (ro, hp, db, ro, db))
    finally:
        _admin("mariadb", "DROP DATABASE IF EXISTS " + db,
               "DROP USER IF EXISTS '%s'@'%%'" % ro, "DROP USER IF EXISTS '%s'@'%%'" % none)


def test_postgresql_errors_are_one_line():
    db, role = name(), name()
    _admin("postgresql", "CREATE ROLE %s LOGIN" % role, "CREATE DATABASE " + db)
    hp = host_port(POSTGRES)
    try:
        missing = name()
        line = fails_with("%s/%s" % (POSTGRES, missing))
        assert line.startswith("etcd-adapter: store postgresql://postgres@%s/%s: "
                               % (hp, missing)), line
        assert line.endswith('FATAL: database "%s" does not exist; create it first '
                             '(README: Quick start per store)' % missing), line
        # PostgreSQL 15+: a role that does not own the database may not create tables
        # in schema public.
        assert fails_with("postgresql://%s@%s/%s" % (role, hp, db)) == (
            "etcd-adapter: store postgresql://%s@%s/%s: permission denied for schema "
            "public; grant the user its rights (README: Quick start per store)"
            % (role, hp, db))
    finally:
        _admin("postgresql", "DROP DATABASE IF EXISTS " + db, "DROP ROLE IF EXISTS " + role)


def test_newer_schema_is_one_line():
    url, drop = stores.create_database("mariadb")
    db = urlsplit(url).path.lstrip("/")
    try:
        _admin("mariadb", "CREATE TABLE %s.etcd_schema_version (id INT PRIMARY KEY, "
               "version INT NOT NULL)" % db,
               "INSERT INTO %s.etcd_schema_version VALUES (1, 99)" % db)
        assert fails_with(url) == (
            "etcd-adapter: store mysql://root@%s/%s: the database has schema version 99; "
            "this etcd-adapter knows versions up to %d (upgrade etcd-adapter)"
            % (host_port(MYSQL), db, schema.LATEST))
    finally:
        drop()


@pytest.fixture(params=["mariadb", "postgresql"])
def proxied_database(request):
    """(kind, store URL through the proxy, proxy) on a fresh database of each server."""
    url, drop = stores.create_database(request.param)
    proxy = DatabaseProxy(urlsplit(url).port)
    yield request.param, proxy.url_for(url), proxy
    proxy.close()
    drop()


# The driver's words for a refused connection, as a pattern: PyMySQL's whole; psycopg's
# (libpq's) by its start, as libpq's hint after it changes between versions.
REFUSED = {
    "mariadb": lambda port: re.escape(
        "Can't connect to MySQL server on '127.0.0.1' ([Errno 111] Connection refused)"),
    "postgresql": lambda port: re.escape(
        'connection failed: connection to server at "127.0.0.1", port %d failed: '
        'Connection refused' % port) + r"[^;\n]*",
}


def described(url):
    """The store as the command names it: the URL without its options."""
    return url.split("?")[0]


def test_gives_up_after_the_start_timeout(proxied_database):
    kind, url, proxy = proxied_database
    proxy.cut()
    t0 = time.monotonic()
    line = fails_with(url, "--store-start-timeout", "1")
    assert time.monotonic() - t0 < 8
    assert re.fullmatch(
        r"etcd-adapter: store %s: %s \(gave up after [23] tries in 1s: "
        r"--store-start-timeout\)" % (re.escape(described(url)), REFUSED[kind](proxy.port)),
        line), line


def test_waits_for_the_database_then_has_leader_follows_it(proxied_database):
    kind, url, proxy = proxied_database
    proxy.cut()
    port, metrics_port = free_port(), free_port()
    server = Running(["--store", url, "--listen", "127.0.0.1:%d" % port,
                      "--listen-metrics-urls", "127.0.0.1:%d" % metrics_port,
                      "--store-start-timeout", "30"])
    try:
        server.wait_log("not reachable (try 2)")
        proxy.restore()
        server.wait_log("etcd-adapter ready")
        for n, wait in ((1, "0.5"), (2, "1.0")):
            assert re.search(r"warn \[etcdadapter.store_start\] database %s not reachable "
                             r"\(try %d\): %s; trying again in %ss$"
                             % (re.escape(described(url)), n, REFUSED[kind](proxy.port),
                                re.escape(wait)), server.stdout(), re.M), server.stdout()
        assert re.search(r"database %s reachable after \d+ tries$"
                         % re.escape(described(url)), server.stdout(), re.M)

        def has_leader():
            return metric(get(metrics_port, "/metrics")[1], "etcd_server_has_leader")
        assert has_leader() == 1
        proxy.cut()
        wait_for(lambda: has_leader() == 0)
        status, body = get(metrics_port, "/health")
        assert (status, body) == (
            503, '{"health":"false","reason":"RANGE ERROR:etcdserver: no leader"}')
        proxy.restore()
        wait_for(lambda: has_leader() == 1)
        assert get(metrics_port, "/health") == (200, '{"health":"true","reason":""}')
    finally:
        assert server.terminate() == 0
    assert server.stderr() == ""
    assert "Traceback" not in server.stdout()


def wait_for(predicate, timeout=15):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in %ss" % timeout
        time.sleep(0.1)
