"""The adapter as a tree of services (etcdadapter/service_tree.py): children start one
after another and stop in reverse, each waiting for the one before; the daemon stops on
SIGTERM with status 0, also while it is still waiting for its database."""

import os
import signal
import subprocess
import sys
import time

from twisted.application import service
from twisted.internet import defer, task

from support import servers
from etcdadapter import service_tree
from etcdadapter.server import AdapterConfig, AdapterService
from etcdadapter.store.memory import MemoryStore


class Step(service.Service):
    """Records its start and stop in ``log``; each returns ``pending`` if set."""

    def __init__(self, name, log, fail=False):
        self.setName(name)
        self.log = log
        self.fail = fail
        self.pending = None

    def startService(self):
        service.Service.startService(self)
        self.log.append("start " + self.name)
        if self.fail:
            raise RuntimeError("%s cannot start" % self.name)
        return self.pending

    def stopService(self):
        service.Service.stopService(self)
        self.log.append("stop " + self.name)
        return self.pending


def tree(log, *steps):
    parent = service_tree.InOrder()
    for step in steps:
        step.setServiceParent(parent)
    return parent


def test_children_start_in_order_each_waiting_for_the_one_before():
    log = []
    a, b = Step("a", log), Step("b", log)
    a.pending = defer.Deferred()
    parent = tree(log, a, b)
    started = parent.startService()
    assert log == ["start a"] and not started.called
    a.pending.callback(None)
    assert log == ["start a", "start b"] and started.called
    a.pending = defer.Deferred()
    stopped = parent.stopService()
    assert log[2:] == ["stop b", "stop a"] and not stopped.called
    a.pending.callback(None)
    assert stopped.called


def test_a_failed_start_leaves_the_later_children_unstarted():
    log = []
    parent = tree(log, Step("a", log), Step("b", log, fail=True), Step("c", log))
    failures = []
    parent.startService().addErrback(failures.append)
    assert [str(f.value) for f in failures] == ["b cannot start"]
    assert log == ["start a", "start b"]
    parent.stopService()
    # b may hold part of what it opened: it is stopped too; c never started.
    assert log[2:] == ["stop b", "stop a"]


def test_a_stop_while_starting_starts_nothing_more():
    log = []
    a, b = Step("a", log), Step("b", log)
    a.pending = defer.Deferred()
    parent = tree(log, a, b)
    parent.startService()
    a.pending = None
    parent.stopService()
    assert log == ["start a", "stop a"]


def test_the_adapter_tree():
    adapter = AdapterService(AdapterConfig(), store=MemoryStore(), reactor=task.Clock())
    assert [child.name for child in adapter] == [
        "store", "auth", "lease-expiry", "compactor", "drain", "listeners", "metrics-port"]
    daemon = AdapterService(AdapterConfig(), store=MemoryStore(), reactor=task.Clock(),
                            handle_signals=True)
    assert [child.name for child in daemon][:2] == ["signal-stop", "store"]


def test_sigterm_while_waiting_for_the_database_exits_0(tmp_path):
    """The signal handlers are in place before the store is awaited: the stop drains,
    closes the store and exits 0 (not -15, what twistd's own handlers would give)."""
    log_path = tmp_path / "adapter.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n",
             "--pidfile=", "etcd-adapter", "--listen", "127.0.0.1:%d" % servers.free_port(),
             # Nothing listens on port 1: refused, tried again until the timeout.
             "--store", "mysql://root@127.0.0.1:1/nothing", "--store-start-timeout", "5m"],
            env=dict(os.environ, PYTHONPATH=servers.REPO_ROOT), cwd=servers.REPO_ROOT,
            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while b"store-wait" not in log_path.read_bytes() \
                and b"not reachable" not in log_path.read_bytes():
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = log_path.read_text()
    assert proc.returncode == 0, out
    assert "etcd-adapter stopped" in out and "etcd-adapter ready" not in out
