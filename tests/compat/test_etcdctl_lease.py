"""etcdctl lease commands against etcd and against our server: same sequence, same output.

One scenario runs the same etcdctl (ETCDCTL_API=3) command sequence against a fresh etcd and
a fresh server under test and compares exit status, stdout and stderr of every step, after
the normalisation of support/etcdctl.py (cluster/member IDs, revisions shifted by the
offset between the two stores, stderr timestamps) plus:

* lease IDs: both servers pick random IDs, so each server's granted IDs are collected in
  grant order (from the grant output) and replaced by ``<L0>``, ``<L1>``, ... wherever
  they appear, in hex (``%016x``, simple output) or decimal (JSON).  ``{L0}`` in a command
  stands for the server's own first ID.  An ID the server did not grant stays as it is,
  so it cannot match;
* ``remaining(Ns)`` / ``"ttl": N`` of TimeToLive: the clocks of the two servers tick
  independently, so a value between granted-2 and granted becomes ``<~granted>``; anything
  else is kept and must then match exactly;
* key lists (``attached keys([...])``, ``"keys"``) and ``lease list`` are sorted: etcd
  returns them in map order.

The streaming ``lease keep-alive`` runs concurrently on both servers, is read for a few
lines and killed; ``watch --prefix`` (simple and ``-w json --prev-kv``) runs throughout
the revoke and the expiry and must print the same DELETE events.
"""

import base64
import json
import queue
import re
import threading
import time

import pytest

from support import servers
from support.etcdctl import etcdctl, normalise_stderr, normalise_stdout
from support.etcdctl_watch import etcdctl_watch, normalise_watch_output, stop_watch

pytestmark = pytest.mark.adapter

# Every test here runs with the adapter on each store (tests/conftest.py).
TARGET_STORES = ("memory", "sqlite", "mariadb", "postgresql")

_GRANT = re.compile(r"^lease ([0-9a-f]{16}) granted with TTL\(\d+s\)$")
_REMAINING = re.compile(r"granted with TTL\((\d+)s\), remaining\((-?\d+)s\)")
_ATTACHED = re.compile(r"attached keys\(\[([^\]]*)\]\)")
EXPIRY_WAIT = 20.0

# What ``watch --prefix k`` prints: the puts (revisions 2-7), the revoke of L0 (k1 and k2
# in one revision, sorted), the revoke of L1 (k0 and k3), the put of k5 with L3 and the
# expiry of L3.
WATCH_SIMPLE = "".join("PUT\n%s\n%s\n" % kv for kv in (
    ("k1", "v1"), ("k2", "v2"), ("k3", "v3"), ("k0", "v0"), ("k4", "v4"),
    ("k0", "v0-moved"))) + "".join("DELETE\n%s\n\n" % k for k in ("k1", "k2", "k0", "k3")) \
    + "PUT\nk5\nv5\nDELETE\nk5\n\n"


def _ttl_placeholder(granted, remaining):
    """``<~G>`` if ``remaining`` is what a server may report for granted TTL G (its clock
    may have ticked up to two seconds), else the number itself (must match exactly)."""
    if granted - 2 <= remaining <= granted:
        return "<~%d>" % granted
    return remaining


class LeaseRun(object):
    """One server's side of the scenario: its lease IDs in grant order."""

    def __init__(self, server, offset):
        self.server = server
        self.offset = offset
        self.ids = []

    def args(self, args):
        return [re.sub(r"\{L(\d+)\}", lambda m: "%016x" % self.ids[int(m.group(1))], a)
                for a in args]

    def learn(self, stdout):
        """Collect the IDs granted in ``stdout`` (simple or JSON grant output)."""
        for line in stdout.splitlines():
            m = _GRANT.match(line)
            if m:
                self.ids.append(int(m.group(1), 16))
            elif line.startswith("{"):
                self.ids.append(json.loads(line)["ID"])

    def sub_ids(self, text):
        for n, lease_id in enumerate(self.ids):
            text = re.sub(r"(?<![0-9a-f])%016x(?![0-9a-f])" % lease_id, "<L%d>" % n, text)
            text = re.sub(r"(?<![0-9])%d(?![0-9])" % lease_id, '"<L%d>"' % n, text)
        return text

    def norm(self, stdout, sort_lines=False):
        text = self.sub_ids(stdout)
        lines = []
        for line in text.split("\n"):
            if line.startswith("{"):
                try:
                    doc = json.loads(line)
                except ValueError:
                    pass
                else:
                    if "granted-ttl" in doc:
                        doc["ttl"] = _ttl_placeholder(doc["granted-ttl"], doc["ttl"])
                    if isinstance(doc.get("keys"), list):
                        doc["keys"].sort()
                    if isinstance(doc.get("leases"), list):
                        doc["leases"].sort(key=lambda x: json.dumps(x, sort_keys=True))
                    line = json.dumps(doc, sort_keys=True)
            line = _REMAINING.sub(lambda m: "granted with TTL(%ss), remaining(%s)" % (
                m.group(1), _ttl_placeholder(int(m.group(1)), int(m.group(2)))), line)
            line = _ATTACHED.sub(lambda m: "attached keys([%s])" % " ".join(
                sorted(m.group(1).split())), line)
            lines.append(line)
        if sort_lines:
            body = [line for line in lines[1:] if line]
            lines = lines[:1] + sorted(body) + [""] * (len(lines) - 1 - len(body))
        return normalise_stdout("\n".join(lines), self.server, self.offset)


def _step(sides, args, sort_lines=False, log=()):
    """Run ``etcdctl args`` on both sides, learn granted IDs, compare; return outputs."""
    outs = []
    for side in sides:
        rc, out, err = etcdctl(side.server, side.args(args))
        if args[:2] == ["lease", "grant"]:
            side.learn(out)
        outs.append((rc, side.norm(out, sort_lines),
                     normalise_stderr(side.sub_ids(err), side.server), out))
    ref, got = outs
    if ref[:3] != got[:3]:
        pytest.fail("etcdctl %s differs\n--- etcd: exit %d\n%s\n%s\n"
                    "--- ours: exit %d\n%s\n%s\n--- ours (raw):\n%s\nprevious steps:\n%s"
                    % (" ".join(args), ref[0], ref[1], ref[2], got[0], got[1], got[2],
                       got[3], "\n".join(log)), pytrace=False)
    if isinstance(log, list):
        log.append("  etcdctl %s -> exit %d" % (" ".join(args), ref[0]))
    return ref


class _Lines(object):
    """A long-running etcdctl whose stdout lines are read by a thread."""

    def __init__(self, proc):
        self.proc = proc
        self.lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for raw in iter(self.proc.stdout.readline, b""):
            self.lines.put(raw.decode("utf-8", "replace").rstrip("\n"))

    def take(self, n, timeout):
        out, deadline = [], time.monotonic() + timeout
        while len(out) < n and time.monotonic() < deadline:
            try:
                out.append(self.lines.get(timeout=max(0.01, deadline - time.monotonic())))
            except queue.Empty:
                break
        return out

    def kill(self):
        self.proc.kill()
        self.proc.communicate()


def test_etcdctl_lease_sequence(pair):
    # Watches from the first revision on (so it does not matter when they are up).
    watches = []
    try:
        for args, as_json in ((["--prefix", "k"], False),
                              (["--prefix", "--prev-kv", "-w", "json", "k"], True)):
            watches.append(([etcdctl_watch(s, ["--rev", str(s.base_revision + 1)] + args)
                             for s in (pair.etcd, pair.target)], as_json))
        _lease_sequence(pair, watches)
    finally:
        for procs, _ in watches:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.communicate()


def _lease_sequence(pair, watches):
    sides = [LeaseRun(pair.etcd, 0), LeaseRun(pair.target, pair.offset)]
    ref, tgt = sides
    log = []

    def step(line, sort_lines=False):
        """Run on both, compare; the normalised stdout without its final newline."""
        return _step(sides, line.split(), sort_lines, log)[1].rstrip("\n")

    step("lease grant 600")                                   # L0
    step("lease grant 300 -w json")                           # L1
    step("lease grant 1")                                     # L2: raised to 2 s
    assert len(ref.ids) == len(tgt.ids) == 3
    step("lease revoke {L2}")                                 # no keys: no revision
    for line in ("put --lease={L0} k1 v1", "put --lease={L0} k2 v2",
                 "put --lease={L1} k3 v3", "put --lease={L0} k0 v0", "put k4 v4",
                 "put --lease={L1} k0 v0-moved", "put --lease=7e57 k9 nope"):
        step(line)
    out = step("lease keep-alive --once {L0}")
    assert out == "lease <L0> keepalived with TTL(600)", out
    step("lease keep-alive --once {L1} -w json")
    step("lease keep-alive --once 7e57")                      # unknown lease
    out = step("lease timetolive {L0}")
    assert out == "lease <L0> granted with TTL(600s), remaining(<~600>)", out
    out = step("lease timetolive --keys {L0}")
    assert out == "lease <L0> granted with TTL(600s), remaining(<~600>), attached keys(" \
                  "[k1 k2])", out
    step("lease timetolive --keys {L1} -w json")
    step("lease timetolive {L1} -w json")
    step("lease timetolive 7e57")
    step("lease timetolive --keys 7e57 -w json")
    out = step("lease list", sort_lines=True)
    assert out == "found 2 leases\n<L0>\n<L1>", out
    step("lease list -w json")

    step("lease revoke {L0}")                                 # deletes k1, k2
    step("lease revoke {L0}")                                 # not found
    step("lease revoke {L1} -w json")                         # deletes k0, k3
    step("lease timetolive {L0}")                             # already expired
    step("lease timetolive --keys {L1} -w json")

    # Streaming keep-alive of a 3 s lease with a key, concurrently on both servers: etcdctl
    # renews at once, then whenever TTL/3 s have passed since the last answer; read four
    # answers (over 3 s: the lease is still there only because the renewals worked), kill.
    step("lease grant 3")                                     # L3
    granted_at = time.monotonic()
    step("put --lease={L3} k5 v5")
    procs = [_Lines(servers.spawn_etcdctl(s.server, ["lease", "keep-alive"]
                                          + s.args(["{L3}"]))) for s in sides]
    try:
        got = [p.take(4, 20.0) for p in procs]
        alive = [servers.lease_ttl(c, s.ids[3])
                 for c, s in ((pair.etcd_client, ref), (pair.target_client, tgt))]
        elapsed = time.monotonic() - granted_at
    finally:
        for p in procs:
            p.kill()
    normed = [[s.sub_ids(line) for line in lines] for s, lines in zip(sides, got)]
    assert normed[0] == ["lease <L3> keepalived with TTL(3)"] * 4, got[0]
    assert normed[1] == normed[0], got
    assert elapsed > 3.0 and alive[0] > 0 and alive[1] > 0, (elapsed, alive)
    # Now L3 expires: wait until it is gone on both and its DELETE (revision 11: 1 + six
    # puts, two revokes, one put) is committed.
    deadline = time.monotonic() + EXPIRY_WAIT
    want = [(-1, s.server.base_revision + 10) for s in sides]
    while True:
        state = [(servers.lease_ttl(c, s.ids[3]), servers.store_revision(c))
                 for c, s in ((pair.etcd_client, ref), (pair.target_client, tgt))]
        if state == want:
            break
        assert time.monotonic() < deadline, ("lease did not expire", state, want)
        time.sleep(0.1)
    step("lease timetolive {L3}")
    out = step("lease list", sort_lines=True)
    assert out == "found 0 leases", out
    step("get --prefix k -w json")
    time.sleep(0.5)                     # let the watchers print the last events

    for procs, as_json in watches:
        outs = [stop_watch(p) for p in procs]
        texts = [normalise_watch_output(s.sub_ids(o[0]), s.offset, as_json)
                 for s, o in zip(sides, outs)]
        assert texts[1] == texts[0], "etcdctl watch%s differs:\n--- etcd:\n%s\n" \
            "--- ours:\n%s" % (" -w json" if as_json else "", texts[0], texts[1])
        assert [normalise_stderr(o[1], s.server) for s, o in zip(sides, outs)] == \
            [normalise_stderr(outs[0][1], ref.server)] * 2
        if not as_json:
            assert texts[0] == WATCH_SIMPLE, texts[0]
        else:
            docs = [json.loads(line) for line in texts[0].split("\n") if line]
            deletes = [(base64.b64decode(e["kv"]["key"]).decode(), e["kv"]["mod_revision"],
                        d["Header"]["revision"], e["prev_kv"]["lease"])
                       for d in docs for e in d["Events"] if e.get("type") == 1]
            assert deletes == [("k1", 8, 8, "<L0>"), ("k2", 8, 8, "<L0>"),
                               ("k0", 9, 9, "<L1>"), ("k3", 9, 9, "<L1>"),
                               ("k5", 11, 11, "<L3>")], texts[0]
            assert len(docs) == 10, texts[0]
