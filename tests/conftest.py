"""Shared pytest fixtures: a real etcd (the reference) and the server under test.

The server under test is our etcd-adapter, or -- with ``ETCDADAPTER_TEST_TARGET=etcd`` -- a
second real etcd, to validate the harness itself.  Tests that need it are marked
``@pytest.mark.adapter`` (select or deselect them with ``-m adapter`` / ``-m "not
adapter"``).

Without the etcd/etcdctl binaries the tests that need servers are skipped, unless
``CI=true`` (then they fail).
"""

import pytest

from support import servers
from support.servers import require_etcd_binaries
# The store fixtures (make_store, parametrised by store_kind) for every test module.
from support.stores import make_store, store_kind  # noqa: F401


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "adapter: needs the server under test (our adapter; a second etcd when "
        "ETCDADAPTER_TEST_TARGET=etcd)")
    config.addinivalue_line(
        "markers",
        "serial: run alone, not beside other tests (./run-tests runs these after the "
        "parallel part): restarts or pauses the shared databases, starts a Galera "
        "cluster, or measures stalls")


def pytest_report_header(config):
    return "etcd-adapter compat: target=%s, etcd=%s, etcdctl=%s" % (
        servers.target_kind(), servers.ETCD_BIN, servers.ETCDCTL_BIN)


class Pair(object):
    """The reference etcd and the server under test, both fresh.

    ``offset`` maps revisions: target revision = etcd revision + offset (for revisions
    > 0; 0 and negative revisions mean "latest"/"unset" on both sides).
    """

    def __init__(self, etcd, target):
        self.etcd = etcd
        self.target = target
        self.offset = target.base_revision - etcd.base_revision
        self.etcd_client = servers.GrpcClient(etcd.endpoint)
        self.target_client = servers.GrpcClient(target.endpoint)

    def to_target_rev(self, rev):
        return rev + self.offset if rev > 0 else rev

    def from_target_rev(self, rev):
        return rev - self.offset if rev > 0 else rev

    def close(self):
        self.etcd_client.close()
        self.target_client.close()


def _stop_all(started):
    """Stop servers newest first; keep their temp dirs (logs) if any misbehaved."""
    failures = []
    for server in reversed(started):
        try:
            server.stop()
        except AssertionError as exc:
            failures.append(str(exc))
    if failures:
        pytest.fail("\n\n".join(failures), pytrace=False)
    for server in started:
        server.cleanup()


@pytest.fixture
def start_servers(request):
    """Factory: ``start_servers(target_store="memory://") -> Pair`` of fresh servers.

    Everything started is stopped at teardown; the adapter must exit cleanly on SIGTERM.
    """
    require_etcd_binaries()
    started = []
    pairs = []
    request.node._etcdadapter_servers = started

    def factory(target_store="memory://"):
        etcd = servers.EtcdServer("ref")
        target = servers.make_target("target", store=target_store)
        started.extend([etcd, target])
        servers.start_all([etcd, target])   # on failure: killed here, logs kept
        pair = Pair(etcd, target)
        pairs.append(pair)
        return pair

    yield factory

    for pair in pairs:
        pair.close()
    _stop_all(started)


@pytest.fixture
def pair(target_store, start_servers):
    """A fresh reference etcd and a fresh server under test (on ``target_store``: the
    memory store unless the module sets ``TARGET_STORES``)."""
    return start_servers(target_store)


def pytest_generate_tests(metafunc):
    """A module with ``TARGET_STORES = ("memory", "sqlite", ...)`` runs each of its tests
    that use ``pair`` once per store kind: the same differential test against etcd, with
    the adapter on each store."""
    kinds = getattr(metafunc.module, "TARGET_STORES", None)
    if kinds and "target_store" in metafunc.fixturenames:
        metafunc.parametrize("target_store", kinds, indirect=True)


@pytest.fixture(scope="module")
def shared_pair(request):
    """One pair for a whole module (tests must leave the store as they found it)."""
    require_etcd_binaries()
    etcd = servers.EtcdServer("ref")
    target = servers.make_target("target")
    started = [etcd, target]
    request.module._etcdadapter_servers = started
    try:
        servers.start_all(started)
    except BaseException:
        for server in started:
            server.cleanup()
        raise
    p = Pair(etcd, target)
    yield p
    p.close()
    _stop_all(started)


@pytest.fixture(scope="module")
def adapter(request):
    """One adapter (memory store) for a whole module, without a reference etcd."""
    server = servers.AdapterServer("adapter-" + request.module.__name__.rpartition(".")[2])
    request.module._etcdadapter_servers = [server]
    server.start()
    yield server
    server.stop()
    server.cleanup()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On failure, attach the tail of the server-under-test's log to the report."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        started = (getattr(item, "_etcdadapter_servers", None)
                   or getattr(item.module, "_etcdadapter_servers", None) or [])
        for server in started:
            if server.kind == "adapter" or server.label.startswith("target"):
                report.sections.append(("%s log (%s)" % (server.kind, server.log_path),
                                        server.log_tail(80)))


@pytest.fixture
def target_store(request, tmp_path):
    """The ``--store`` URL of the server under test, from the test's parameter (a store
    kind: memory, sqlite, mariadb, postgresql; use ``indirect=["target_store"]``): a fresh
    database, dropped at teardown.  Request it before ``start_servers`` so that the
    servers stop before their database is dropped."""
    from support.stores import store_url
    kind = getattr(request, "param", "memory")
    url, cleanup = store_url(kind, tmp_path)
    yield url
    cleanup()
