"""``GET /health`` reflects the store: a real adapter (twistd, JSON logs) on MariaDB or
PostgreSQL reached through a TCP proxy the test controls.

* healthy: 200 ``{"health":"true","reason":""}``;
* the database hangs (proxy frozen: connections open, no bytes pass): 503
  ``{"health":"false","reason":"RANGE ERROR:etcdserver: request timed out"}`` within the
  probe's one second -- every time, with no pile-up -- and healthy again once it answers;
* the database is gone (connections closed, new ones refused): 503 with
  ``"RANGE ERROR:etcdserver: no leader"`` at once; healthy again once it is back;
* the log has one ``store-unavailable`` event for the outage and one ``store-available``
  with its length, and never the password of the store URL.
"""

import json
import time
from urllib.parse import urlsplit

import pytest

from support import servers
from support.db_proxy import DatabaseProxy
from support.logged import JsonLoggedAdapter
from support.stores import create_database

pytestmark = pytest.mark.adapter

HEALTHY = {"health": "true", "reason": ""}
TIMED_OUT = {"health": "false", "reason": "RANGE ERROR:etcdserver: request timed out"}
NO_LEADER = {"health": "false", "reason": "RANGE ERROR:etcdserver: no leader"}
PROBE_TIMEOUT = 1.0
RECOVERY = 20.0


def health(server):
    t = time.monotonic()
    resp, body = servers.http_request(server, "GET", "/health", timeout=10)
    return resp.status, json.loads(body), time.monotonic() - t


def wait_healthy(server, timeout=RECOVERY):
    deadline = time.monotonic() + timeout
    while True:
        status, body, _ = health(server)
        if status == 200:
            assert body == HEALTHY
            return
        assert time.monotonic() < deadline, "still unhealthy: %s" % body
        time.sleep(0.2)


@pytest.fixture(params=["mariadb", "postgresql"])
def proxied(request):
    """(adapter with JSON logs reaching a fresh database through a proxy, proxy)."""
    if servers.target_kind() != "adapter":
        pytest.skip("needs the adapter")
    kind = request.param
    url, drop = create_database(kind)
    request.addfinalizer(drop)
    proxy = DatabaseProxy(urlsplit(url).port)
    request.addfinalizer(proxy.close)
    url = proxy.url_for(url)
    if kind == "postgresql":
        # trust authentication ignores it; it must never reach the log.
        url = url.replace("postgres@", "postgres:SeCrEt@", 1)
    server = JsonLoggedAdapter("health-" + kind, store=url)
    request.node._etcdadapter_servers = [server]
    server.start()

    def stop():
        proxy.restore()
        if server.alive():
            server.stop()
        server.cleanup()
    request.addfinalizer(stop)
    return server, proxy


def test_health_follows_the_database(proxied):
    server, proxy = proxied
    status, body, _ = health(server)
    assert (status, body) == (200, HEALTHY)

    # A database that hangs: unhealthy within the probe timeout, every time.
    proxy.freeze()
    try:
        for _ in range(3):
            status, body, seconds = health(server)
            assert (status, body) == (503, TIMED_OUT)
            assert PROBE_TIMEOUT * 0.9 <= seconds < PROBE_TIMEOUT + 1.0, seconds
    finally:
        proxy.restore()
    wait_healthy(server)

    # A database that is gone: unhealthy at once, with etcd's error.
    proxy.cut()
    try:
        deadline = time.monotonic() + 5
        while True:
            status, body, seconds = health(server)
            if body != HEALTHY:
                break
            assert time.monotonic() < deadline, "still healthy after the cut"
            time.sleep(0.05)
        for _ in range(3):
            assert (status, body) == (503, NO_LEADER)
            assert seconds < PROBE_TIMEOUT, seconds
            status, body, seconds = health(server)
    finally:
        proxy.restore()
    t = time.monotonic()
    wait_healthy(server)
    recovered = time.monotonic() - t
    server.stop()
    assert server.proc.returncode == 0

    down = server.named("store-unavailable")
    up = server.named("store-available")
    assert len(down) >= 1 and len(up) >= 1, [e.get("event") for e in server.events()]
    assert all(e["level"] == "warn" for e in down)
    assert any("Connection refused" in e["error"] or "connect" in e["error"].lower()
               or "lost" in e["what"] for e in down), down
    assert up[-1]["level"] == "info" and up[-1]["outage"] > 0
    assert up[-1]["db"] == down[-1]["db"] and str(proxy.port) in up[-1]["db"]
    # The outage is told once, not as a traceback from every background pass.
    assert not [e for e in server.events() if e["level"] == "critical"]
    ready = server.named("ready")[0]
    assert "SeCrEt" not in server.log_text()
    if "postgres:" in ready["store"]:
        assert "postgres:***@" in ready["store"]
    print("recovered %.2fs after the database came back" % recovered)


def test_unavailable_errors_are_fresh_exceptions():
    """While the database is unreachable every request fails with Unavailable "no
    leader"; each failure must be its own exception: re-raising one shared instance
    grows its traceback by every raise (and keeps all those frames alive)."""
    import traceback
    from support import stores
    from etcdadapter import errors
    from etcdadapter.store.sql.mysql import MySQLDialect
    from etcdadapter.store.sql.runner import Runner
    dialect = MySQLDialect(host="127.0.0.1", port=servers.free_port(), user="root",
                           password="", database="nowhere", connect_timeout=1,
                           read_timeout=1, write_timeout=1)
    runner = Runner(dialect, 1, stores.reactor())
    stores.call(runner.start)
    try:
        seen = []
        for _ in range(20):
            with pytest.raises(errors.EtcdError) as e:
                stores.call(runner.call, lambda s: s.transaction("read", lambda tx: 1))
            assert e.value == errors.ErrNoLeader
            seen.append(e.value)
        assert len({id(x) for x in seen}) == len(seen)
        assert len(traceback.extract_tb(seen[-1].__traceback__)) < 30
        assert isinstance(errors.ErrNoLeader, type)   # a kind, never a shared instance
    finally:
        stores.call(runner.stop)


def test_one_probe_in_flight_shared_and_bounded():
    """Pure logic on a task.Clock: callers during a stuck probe share it and each gets
    its own timeout answer; none is left waiting; the next call after the probe ends
    starts a new one."""
    from twisted.internet import defer, task
    from etcdadapter.health import HealthCheck
    from etcdadapter.store.memory import MemoryStore

    class HeldStore(MemoryStore):
        """A memory store whose reads wait until the test releases them."""
        def __init__(self):
            MemoryStore.__init__(self, initial_revision=1)
            self.held = []

        def range(self, request):
            d = defer.Deferred()
            self.held.append((d, request))
            return d

    clock, store = task.Clock(), HeldStore()
    check = HealthCheck(store, clock, timeout=1.0)
    answers = []
    for _ in range(3):
        check().addCallback(answers.append)
        clock.advance(0.4)
    assert len(store.held) == 1                      # one probe for three callers
    assert answers == [TIMED_OUT_TUPLE]               # t=1.2: the first timed out
    clock.advance(0.6)
    assert answers == [TIMED_OUT_TUPLE] * 3 and check._waiting == []
    d, request = store.held[0]
    assert (request.key, request.range_end, request.keys_only, request.limit) == (
        b"\0", b"\0", True, 1)
    d.callback(None)                                  # the store answers at last
    assert check._waiting is None
    check().addCallback(answers.append)
    assert len(store.held) == 2
    store.held[1][0].callback(None)
    assert answers[-1] == (True, "") and not clock.getDelayedCalls()


TIMED_OUT_TUPLE = (False, "RANGE ERROR:etcdserver: request timed out")
