"""The embedding examples, run as their users would: ``examples/embed_twisted.py`` and
``examples/embed_asyncio.py`` each embed the adapter on the memory store; etcdctl and
APISIX-style HTTP clients (range, streaming watch, base64 keys) see what the host writes
through its in-process client, with the revisions the host saw, and the host's own
in-process watch sees what they write.  SIGTERM stops the host cleanly.

Also: importing any etcdadapter module leaves Twisted's global reactor alone (an asyncio
host installs its own first)."""

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time

import pytest

from support import servers
from support.servers import require_etcd_binaries
from support.gateway_client import GatewayClient, b64, prefix_end, unb64, watch_body

pytestmark = pytest.mark.adapter

EXAMPLES = os.path.join(servers.REPO_ROOT, "examples")


class Lines(object):
    """A pipe read line by line by a thread; every line is kept."""

    def __init__(self, pipe):
        self.queue = queue.Queue()
        self.seen = []
        self.read = 0
        threading.Thread(target=self._read, args=(pipe,), daemon=True).start()

    def _read(self, pipe):
        for line in iter(pipe.readline, b""):
            self.queue.put(line.decode("utf-8", "replace").rstrip("\n"))
        self.queue.put(None)

    def next(self, timeout=20):
        """The next line not read yet (by ``next``; ``wait`` does not consume)."""
        while self.read >= len(self.seen):
            try:
                line = self.queue.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError("no line within %ss; got:\n%s"
                                     % (timeout, "\n".join(self.seen)))
            if line is None:
                raise AssertionError("the stream ended; got:\n%s" % "\n".join(self.seen))
            self.seen.append(line)
        self.read += 1
        return self.seen[self.read - 1]

    def wait(self, predicate, timeout=20):
        """The first line (seen or to come) for which ``predicate`` holds."""
        for line in self.seen:
            if predicate(line):
                return line
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.queue.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError("no such line within %ss; got:\n%s"
                                     % (timeout, "\n".join(self.seen)))
            if line is None:
                raise AssertionError("the stream ended; got:\n%s" % "\n".join(self.seen))
            self.seen.append(line)
            if predicate(line):
                return line


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = servers.REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    return {k: v for k, v in env.items() if not k.startswith("ETCDCTL_")}


def etcdctl(endpoint, *args):
    env = _env()
    env["ETCDCTL_API"] = "3"
    out = subprocess.run([servers.ETCDCTL_BIN, "--endpoints=" + endpoint,
                          "--dial-timeout=3s"] + list(args), capture_output=True,
                         timeout=30, env=env)
    assert out.returncode == 0, out
    return out.stdout.decode()


class Host(object):
    """One example program, running."""

    def __init__(self, script):
        self.proc = subprocess.Popen([sys.executable, os.path.join(EXAMPLES, script), "0"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, cwd=servers.REPO_ROOT,
                                     env=_env(), start_new_session=True)
        self.out = Lines(self.proc.stdout)

    def ready(self):
        """(endpoint, revision) from the "ready http://HOST:PORT revision=N" line."""
        line = self.out.wait(lambda l: l.startswith("ready "), timeout=60)
        url, rev = line.split()[1:3]
        return url[len("http://"):], int(rev[len("revision="):])

    def event(self, etype, key):
        """(revision, value) of the host's printed watch event for ``key``."""
        line = self.out.wait(lambda l: l.startswith("event %s %s " % (etype, key)))
        parts = line.split(" ", 4)
        return int(parts[3][len("rev="):]), parts[4] if len(parts) > 4 else ""

    def send(self, doc):
        self.proc.stdin.write((json.dumps(doc) + "\n").encode())
        self.proc.stdin.flush()

    def kill(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def _etcdctl_events(lines, n):
    """The next ``n`` events of ``etcdctl watch -w json`` output as (type, key, value,
    mod_revision)."""
    out = []
    while len(out) < n:
        for e in json.loads(lines.next())["Events"]:
            kv = e["kv"]
            out.append(("DELETE" if e.get("type") == 1 else "PUT", unb64(kv["key"]),
                        unb64(kv.get("value", "")), kv["mod_revision"]))
    return out


def _http_events(stream, n):
    out = []
    while len(out) < n:
        msg = stream.next(timeout=20)
        assert msg is not None, "HTTP watch ended"
        for e in msg["result"].get("events", []):
            kv = e["kv"]
            out.append((e.get("type", "PUT"), unb64(kv["key"]), unb64(kv.get("value", "")),
                        int(kv["mod_revision"])))
    return out


def _readdir_body(key):
    """lua-resty-etcd's range body for a prefix."""
    return ('{"key":"%s","range_end":"%s","limit":0,"revision":0,"sort_order":0,'
            '"sort_target":0,"serializable":false,"keys_only":false,"count_only":false,'
            '"min_mod_revision":0,"max_mod_revision":0,"min_create_revision":0,'
            '"max_create_revision":0}' % (b64(key), b64(prefix_end(key))))


@pytest.mark.parametrize("script", ["embed_twisted.py", "embed_asyncio.py"])
def test_example_serves_etcdctl_and_apisix(script):
    require_etcd_binaries()
    host = Host(script)
    watcher = None
    try:
        endpoint, ready_rev = host.ready()
        # The host's start-up writes, as its own in-process watch printed them.
        r1, v1 = host.event("PUT", "/apisix/routes/1")
        r2, _ = host.event("PUT", "/apisix/routes/2")
        ru, _ = host.event("PUT", "/apisix/upstreams/1")
        assert r1 == r2 == ru - 1 and ru == ready_rev        # the resync: one revision
        assert json.loads(v1)["uri"] == "/hello"

        # etcdctl and an APISIX-style range see them, with those revisions.
        got = json.loads(etcdctl(endpoint, "get", "--prefix", "/apisix", "-w", "json"))
        assert got["header"]["revision"] == ready_rev
        mine = [(unb64(kv["key"]), kv["mod_revision"]) for kv in got["kvs"]]
        assert mine == [(b"/apisix/routes/1", r1), (b"/apisix/routes/2", r1),
                        (b"/apisix/upstreams/1", ru)]
        http = GatewayClient(endpoint)
        reply = http.call("/v3/kv/range", _readdir_body("/apisix"))
        assert int(reply["header"]["revision"]) == ready_rev
        assert [(unb64(kv["key"]), int(kv["mod_revision"]), unb64(kv["value"]))
                for kv in reply["kvs"]] == [
            (unb64(kv["key"]), kv["mod_revision"], unb64(kv["value"])) for kv in got["kvs"]]

        # Watches from the first revision: etcdctl and a streaming HTTP watch.
        env = _env()
        env["ETCDCTL_API"] = "3"
        watcher = subprocess.Popen(
            [servers.ETCDCTL_BIN, "--endpoints=" + endpoint, "watch", "--prefix", "/apisix",
             "--rev=%d" % r1, "-w", "json"], stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, env=env, start_new_session=True)
        watched = Lines(watcher.stdout)
        stream = http.stream("/v3/watch", watch_body("/apisix", prefix_end("/apisix"),
                                                     start_revision=r1))
        assert "created" in stream.next(timeout=20)["result"]
        initial = [("PUT", b"/apisix/routes/1", r1), ("PUT", b"/apisix/routes/2", r1),
                   ("PUT", b"/apisix/upstreams/1", ru)]
        assert [(t, k, r) for t, k, _v, r in _etcdctl_events(watched, 3)] == initial
        assert [(t, k, r) for t, k, _v, r in _http_events(stream, 3)] == initial

        # The host writes (stdin -> in-process put): everyone sees it live.
        host.send({"id": "3", "uri": "/c"})
        r3, v3 = host.event("PUT", "/apisix/routes/3")
        assert r3 == ru + 1 and json.loads(v3) == {"id": "3", "uri": "/c"}
        live = [("PUT", b"/apisix/routes/3", v3.encode(), r3)]
        assert _etcdctl_events(watched, 1) == live
        assert _http_events(stream, 1) == live

        # Remote writes reach the host's in-process watch: etcdctl, then APISIX's Admin
        # style JSON put.
        assert etcdctl(endpoint, "put", "/apisix/routes/9", '{"uri":"/z"}').strip() == "OK"
        assert host.event("PUT", "/apisix/routes/9") == (r3 + 1, '{"uri":"/z"}')
        put = http.call("/v3/kv/put", '{"key":"%s","value":"%s","prev_kv":true}' % (
            b64("/apisix/routes/10"), b64('{"uri":"/y"}')))
        assert int(put["header"]["revision"]) == r3 + 2
        assert host.event("PUT", "/apisix/routes/10") == (r3 + 2, '{"uri":"/y"}')

        # The host deletes a route.
        host.send({"id": "1", "delete": True})
        assert host.event("DELETE", "/apisix/routes/1")[0] == r3 + 3
        assert _etcdctl_events(watched, 3)[1:] == [
            ("PUT", b"/apisix/routes/10", b'{"uri":"/y"}', r3 + 2),
            ("DELETE", b"/apisix/routes/1", b"", r3 + 3)]
        assert _http_events(stream, 3)[2] == ("DELETE", b"/apisix/routes/1", b"", r3 + 3)
        got = json.loads(etcdctl(endpoint, "get", "--prefix", "/apisix", "--keys-only",
                                 "-w", "json"))
        assert got["header"]["revision"] == r3 + 3
        assert [unb64(kv["key"]) for kv in got["kvs"]] == [
            b"/apisix/routes/10", b"/apisix/routes/2", b"/apisix/routes/3",
            b"/apisix/routes/9", b"/apisix/upstreams/1"]
        stream.close()
        http.close()

        # SIGTERM: the host stops the adapter and exits 0.
        host.proc.send_signal(signal.SIGTERM)
        assert host.proc.wait(15) == 0
        host.out.wait(lambda l: l == "stopped", timeout=5)
    finally:
        if watcher is not None and watcher.poll() is None:
            os.killpg(watcher.pid, signal.SIGKILL)
            watcher.wait(10)
        host.kill()


def test_importing_etcdadapter_leaves_the_reactor_alone():
    code = """
import pkgutil, importlib, sys
import etcdadapter
names = [m.name for m in pkgutil.walk_packages(etcdadapter.__path__, "etcdadapter.")]
for name in names:
    importlib.import_module(name)
assert "etcdadapter.embed" in names and "etcdadapter.store.sql.generic" in names
print(len(names), "twisted.internet.reactor" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, env=_env(),
                         cwd=servers.REPO_ROOT, timeout=60)
    assert out.returncode == 0, out.stderr.decode()
    count, imported = out.stdout.decode().split()
    assert int(count) > 40 and imported == "False"
