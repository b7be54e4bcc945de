"""etcd snapshots both ways, against a real etcd 3.4.

* In: a real etcd gets a history (a multi-page bucket, a value spanning pages, a txn of
  several events, tombstones, a key deleted and created again, leases, a compaction,
  writes after it, users and roles, auth on) and ``etcdctl snapshot save`` saves it; the
  snapshot is restored into every store (``etcd-adapter snapshot restore``, or
  ``memory://?snapshot=FILE``) and an adapter on it answers every Range at every retained
  revision field by field as etcd did, the same errors below and above them, the same
  leases, users and roles, and etcd's users log in with their etcd passwords.
* Out: an adapter on every store gets the same history; ``etcdctl snapshot save``
  against it, ``snapshot status`` and ``snapshot restore`` accept the file, and a real
  etcd started on the restored directory answers as the adapter did.
* docs/etcd-snapshots.md's commands, pasted (:class:`support.docs.Paste`), do both on
  SQLite and print what the doc says.
"""

import json
import math
import os
import re
import shutil
import subprocess
import time
import uuid

import grpc
import pytest

from support import command
from support import servers
from support import stores
from support.docs import Paste, marked
from etcdadapter.pb.authpb import auth_pb2 as authpb
from etcdadapter.pb.etcdserverpb import rpc_pb2 as rpc

pytestmark = pytest.mark.adapter

KV = "/etcdserverpb.KV/"
LEASE = "/etcdserverpb.Lease/"
AUTH = "/etcdserverpb.Auth/"

ROOT_PW = "root-pw"
ALICE_PW = "alice-pw"
LEASE_KEYS = 0x1234
LEASE_EMPTY = 0x5678
BIG = b"B" * 40000                      # spans several bbolt pages


class Client(object):
    """gRPC calls with an optional auth token."""

    def __init__(self, endpoint):
        self.channel = grpc.insecure_channel(endpoint)
        self.token = None

    def close(self):
        self.channel.close()

    def _invoke(self, method, request, response_class):
        fn = self.channel.unary_unary(method, request_serializer=lambda m: m.SerializeToString(),
                                      response_deserializer=response_class.FromString)
        metadata = [("token", self.token)] if self.token else None
        return fn(request, timeout=10, metadata=metadata)

    def call(self, method, request, response_class):
        return self._invoke(method, request, response_class)

    def error(self, method, request, response_class):
        try:
            self._invoke(method, request, response_class)
        except grpc.RpcError as e:
            return e.code(), e.details()
        raise AssertionError("%s succeeded" % method)

    def login(self, name, password):
        r = self.call(AUTH + "Authenticate",
                      rpc.AuthenticateRequest(name=name, password=password),
                      rpc.AuthenticateResponse)
        self.token = r.token
        return self


def put(c, key, value=b"v", lease=0):
    return c.call(KV + "Put", rpc.PutRequest(key=key, value=value, lease=lease),
                  rpc.PutResponse).header.revision


def txn(c, ops):
    return c.call(KV + "Txn", rpc.TxnRequest(success=ops), rpc.TxnResponse).header.revision


def op_put(key, value):
    return rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value))


def write_history(c):
    """The same history on etcd and on the adapter; returns (compact revision, current
    revision)."""
    put(c, b"/a/1", b"v1")
    put(c, b"/a/2", b"v2")
    put(c, b"/a/1", b"v1b")
    txn(c, [op_put(b"/bulk/%03d" % i, b"x%03d" % i * 25) for i in range(100)])
    txn(c, [op_put(b"/b/x", b"bx"), op_put(b"/b/y", b"by"),
            rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=b"/a/2"))])
    compact = c.call(KV + "DeleteRange", rpc.DeleteRangeRequest(key=b"/b/", range_end=b"/b0"),
                     rpc.DeleteRangeResponse).header.revision
    c.call(LEASE + "LeaseGrant", rpc.LeaseGrantRequest(ID=LEASE_KEYS, TTL=600),
           rpc.LeaseGrantResponse)
    c.call(LEASE + "LeaseGrant", rpc.LeaseGrantRequest(ID=LEASE_EMPTY, TTL=900),
           rpc.LeaseGrantResponse)
    put(c, b"/l/k", b"leased", lease=LEASE_KEYS)
    put(c, b"/big", BIG)
    put(c, b"/a/1", b"v1c")
    c.call(KV + "DeleteRange", rpc.DeleteRangeRequest(key=b"/a/1"), rpc.DeleteRangeResponse)
    put(c, b"/a/1", b"v1d")                          # a new generation of the key
    c.call(KV + "Compact", rpc.CompactionRequest(revision=compact, physical=True),
           rpc.CompactionResponse)
    put(c, b"/bulk/005", b"changed")
    txn(c, [op_put(b"/bulk2/%03d" % i, b"y" * 30) for i in range(60)])
    put(c, b"/l/k2", b"leased too", lease=LEASE_KEYS)
    current = c.call(KV + "DeleteRange", rpc.DeleteRangeRequest(key=b"/big"),
                     rpc.DeleteRangeResponse).header.revision
    return compact, current


def add_users(c):
    """Users and roles, then auth on (etcdctl's way: root has the root role)."""
    c.call(AUTH + "UserAdd", rpc.AuthUserAddRequest(name="root", password=ROOT_PW),
           rpc.AuthUserAddResponse)
    c.call(AUTH + "RoleAdd", rpc.AuthRoleAddRequest(name="root"), rpc.AuthRoleAddResponse)
    c.call(AUTH + "UserGrantRole", rpc.AuthUserGrantRoleRequest(user="root", role="root"),
           rpc.AuthUserGrantRoleResponse)
    c.call(AUTH + "RoleAdd", rpc.AuthRoleAddRequest(name="r1"), rpc.AuthRoleAddResponse)
    c.call(AUTH + "RoleGrantPermission", rpc.AuthRoleGrantPermissionRequest(
        name="r1", perm=authpb.Permission(permType=authpb.Permission.READWRITE, key=b"/a/",
                                          range_end=b"/a0")),
           rpc.AuthRoleGrantPermissionResponse)
    c.call(AUTH + "UserAdd", rpc.AuthUserAddRequest(name="alice", password=ALICE_PW),
           rpc.AuthUserAddResponse)
    c.call(AUTH + "UserGrantRole", rpc.AuthUserGrantRoleRequest(user="alice", role="r1"),
           rpc.AuthUserGrantRoleResponse)
    c.call(AUTH + "AuthEnable", rpc.AuthEnableRequest(), rpc.AuthEnableResponse)


def with_history(c):
    """Writes the history and the users through client ``c`` and logs in as root:
    (what the server then answers, compact revision, current revision)."""
    compact, current = write_history(c)
    add_users(c)
    c.login("root", ROOT_PW)
    return observe(c, compact, current), compact, current


def range_at(c, revision):
    r = c.call(KV + "Range", rpc.RangeRequest(key=b"\0", range_end=b"\0", revision=revision),
               rpc.RangeResponse)
    return (r.header.revision, r.count, r.more,
            [(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease)
             for kv in r.kvs])


def _kv(kv):
    return (kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease)


def watch_events(c, start, current):
    """Every event of a watch on all keys from ``start`` (with prev_kv) up to
    ``current``."""
    import queue
    requests = queue.Queue()
    method = c.channel.stream_stream("/etcdserverpb.Watch/Watch",
                                     request_serializer=lambda m: m.SerializeToString(),
                                     response_deserializer=rpc.WatchResponse.FromString)
    call = method(iter(requests.get, None), timeout=20,
                  metadata=[("token", c.token)] if c.token else None)
    requests.put(rpc.WatchRequest(create_request=rpc.WatchCreateRequest(
        key=b"\0", range_end=b"\0", start_revision=start, prev_kv=True)))
    out = []
    try:
        for r in call:
            out.extend((ev.type, _kv(ev.kv), _kv(ev.prev_kv) if ev.HasField("prev_kv")
                        else None) for ev in r.events)
            if out and out[-1][1][3] == current:
                break
    finally:
        call.cancel()
    return out


def observe(c, compact, current):
    """Everything compared between the two sides (a root-authenticated client)."""
    ranges = {rev: range_at(c, rev) for rev in range(compact, current + 1)}
    below = c.error(KV + "Range", rpc.RangeRequest(key=b"/a/1", revision=compact - 1),
                    rpc.RangeResponse)
    above = c.error(KV + "Range", rpc.RangeRequest(key=b"/a/1", revision=current + 1),
                    rpc.RangeResponse)
    leases = sorted(s.ID for s in c.call(LEASE + "LeaseLeases", rpc.LeaseLeasesRequest(),
                                         rpc.LeaseLeasesResponse).leases)
    ttls = {}
    for lease_id in leases:
        r = c.call(LEASE + "LeaseTimeToLive", rpc.LeaseTimeToLiveRequest(ID=lease_id, keys=True),
                   rpc.LeaseTimeToLiveResponse)
        assert r.grantedTTL - 60 < r.TTL <= r.grantedTTL, r      # started afresh
        ttls[lease_id] = (r.grantedTTL, sorted(r.keys))
    users = list(c.call(AUTH + "UserList", rpc.AuthUserListRequest(),
                        rpc.AuthUserListResponse).users)
    roles = {}
    for name in c.call(AUTH + "RoleList", rpc.AuthRoleListRequest(),
                       rpc.AuthRoleListResponse).roles:
        r = c.call(AUTH + "RoleGet", rpc.AuthRoleGetRequest(role=name), rpc.AuthRoleGetResponse)
        roles[name] = [(p.permType, p.key, p.range_end) for p in r.perm]
    user_roles = {u: list(c.call(AUTH + "UserGet", rpc.AuthUserGetRequest(name=u),
                                 rpc.AuthUserGetResponse).roles) for u in users}
    return {"ranges": ranges, "below": below, "above": above, "leases": ttls,
            "users": user_roles, "roles": roles,
            "watch": watch_events(c, compact + 1, current)}


def check_history_shape(seen, compact, current):
    """The history really has what the format must carry (so the comparisons mean
    something): many keys, the big value, leases, tombstones in between."""
    rev, count, _more, kvs = seen["ranges"][current]
    assert rev == current and count == len(kvs) == 100 + 60 + 3    # /a/1, /l/k, /l/k2
    at_compact = seen["ranges"][compact][3]
    assert [kv[0] for kv in at_compact if not kv[0].startswith(b"/bulk/")] == [b"/a/1"]
    assert any(kv[0] == b"/big" and kv[1] == BIG for kv in seen["ranges"][current - 1][3])
    assert seen["below"] == (grpc.StatusCode.OUT_OF_RANGE,
                             "etcdserver: mvcc: required revision has been compacted")
    assert seen["above"] == (grpc.StatusCode.OUT_OF_RANGE,
                             "etcdserver: mvcc: required revision is a future revision")
    assert seen["leases"] == {LEASE_KEYS: (600, [b"/l/k", b"/l/k2"]), LEASE_EMPTY: (900, [])}
    assert seen["users"] == {"alice": ["r1"], "root": ["root"]}
    assert seen["roles"] == {"r1": [(authpb.Permission.READWRITE, b"/a/", b"/a0")],
                             "root": []}
    events = seen["watch"]
    assert len(events) == 8 + 60 and events[0][1][:2] == (b"/l/k", b"leased")
    assert events[-1] == (1, (b"/big", b"", 0, current, 0, 0),
                          (b"/big", BIG, current - 7, current - 7, 1, 0))


def wait_answering(server):
    """Start ``server`` and wait until it answers gRPC at all (with auth on, the usual
    readiness Range is refused)."""
    server.launch()
    deadline = time.monotonic() + server.start_timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError("%s exited; log:\n%s" % (server.describe(), server.log_tail()))
        try:
            servers._probe(server.endpoint, 1.0)
            return server
        except grpc.RpcError as e:
            if e.code() not in (grpc.StatusCode.UNAVAILABLE,
                                grpc.StatusCode.DEADLINE_EXCEEDED):
                return server
        time.sleep(0.05)
    raise RuntimeError("%s not answering; log:\n%s" % (server.describe(), server.log_tail()))


def etcdctl(*args, check=True):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL_")}
    env["ETCDCTL_API"] = "3"
    r = subprocess.run([servers.ETCDCTL_BIN] + list(args), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, env=env, timeout=60)
    if check:
        assert r.returncode == 0, (args, r.stderr.decode(errors="replace"))
    return r


def fresh_store_url(kind, tmp_path, request):
    """An empty store of ``kind`` in a database of this branch's own (snap17_...)."""
    if kind == "sqlite":
        return "sqlite://%s/%s.db" % (tmp_path, uuid.uuid4().hex[:8])
    stores._require(kind)
    name = "snap17_" + uuid.uuid4().hex[:12]
    stores._admin(kind, lambda cur: cur.execute("CREATE DATABASE " + name))
    if kind == "mariadb":
        request.addfinalizer(lambda: stores._admin(
            kind, lambda cur: cur.execute("DROP DATABASE IF EXISTS " + name)))
        return stores.MYSQL_URL + "/" + name
    request.addfinalizer(lambda: stores._admin(
        kind, lambda cur: cur.execute("DROP DATABASE IF EXISTS %s WITH (FORCE)" % name)))
    return stores.POSTGRES_URL + "/" + name


def run_adapter(label, url, request):
    adapter = servers.AdapterServer(label, store=url)
    request.node._etcdadapter_servers = [adapter]
    wait_answering(adapter)

    def stop():
        adapter.stop()
        adapter.cleanup()
    request.addfinalizer(stop)
    return adapter


# -- in ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def etcd_snapshot(tmp_path_factory):
    """(snapshot path, what etcd answered, compact revision, current revision)."""
    if servers.missing_binaries():
        pytest.skip("etcd/etcdctl not installed")
    etcd = servers.EtcdServer("snapshot-source").start()
    try:
        c = Client(etcd.endpoint)
        seen, compact, current = with_history(c)
        seen["alice-wrong"] = Client(etcd.endpoint).error(
            AUTH + "Authenticate", rpc.AuthenticateRequest(name="alice", password="nope"),
            rpc.AuthenticateResponse)
        c.close()
        where = tmp_path_factory.mktemp("etcd-snapshot")
        path = str(where / "etcd.db")
        etcdctl("--endpoints=" + etcd.endpoint, "--user", "root:" + ROOT_PW,
                "snapshot", "save", path)       # also commits etcd's backend
        etcd.stop()
        # etcd's own db file, no checksum: what --skip-hash-check is for.
        shutil.copy(os.path.join(etcd._tmp, "data", "member", "snap", "db"),
                    str(where / "raw.db"))
        return path, seen, compact, current
    finally:
        etcd.stop()
        etcd.cleanup()


@pytest.mark.parametrize("kind", stores.KINDS)
def test_etcd_snapshot_restored_into_a_store(kind, etcd_snapshot, tmp_path, request):
    path, expected, compact, current = etcd_snapshot
    check_history_shape(expected, compact, current)
    if kind == "memory":
        url = "memory://?snapshot=" + path
    else:
        url = fresh_store_url(kind, tmp_path, request)
        r = subprocess.run([command.BIN, "snapshot", "restore", path,
                            "--to", url], cwd=servers.REPO_ROOT, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=60)
        assert r.returncode == 0, r.stderr.decode(errors="replace")
        assert r.stdout.decode() == (
            "restored %s into %s: revision %d, compact revision %d, 2 lease(s), 2 user(s), "
            "2 role(s), auth enabled\n" % (path, url, current, compact))
        # A second restore into the same (now filled) store is refused, nothing changes.
        again = subprocess.run([command.BIN, "snapshot", "restore",
                                path, "--to", url], cwd=servers.REPO_ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
        assert again.returncode == 1
        assert again.stderr.decode() == (
            "etcd-adapter snapshot: the target store is not empty (keys or "
            "history): a restore fills an empty store only\n")
    adapter = run_adapter("restored-" + kind, url, request)
    c = Client(adapter.endpoint)
    # etcd's bcrypt hashes: the same passwords log in, a wrong one fails as on etcd.
    assert Client(adapter.endpoint).login("alice", ALICE_PW).token
    assert Client(adapter.endpoint).error(
        AUTH + "Authenticate", rpc.AuthenticateRequest(name="alice", password="nope"),
        rpc.AuthenticateResponse) == expected["alice-wrong"]
    c.login("root", ROOT_PW)
    got = observe(c, compact, current)
    for rev in range(compact, current + 1):
        assert got["ranges"][rev] == expected["ranges"][rev], rev
    assert got == {k: v for k, v in expected.items() if k != "alice-wrong"}
    # The restored store goes on from etcd's revision.
    assert put(c, b"/a/after", b"x") == current + 1
    c.close()


def restore_cli(*args):
    return subprocess.run([command.BIN, "snapshot", "restore"]
                          + list(args), cwd=servers.REPO_ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=60)


def test_restore_prints_the_store_without_its_password(etcd_snapshot, tmp_path, request):
    """docs/etcd-snapshots.md: the line printed names the store with its password as
    ``***`` (the local PostgreSQL trusts 127.0.0.1, so any password connects)."""
    from urllib.parse import urlsplit
    path, _expected, compact, current = etcd_snapshot
    url = fresh_store_url("postgresql", tmp_path, request)
    parts = urlsplit(url)
    if parts.password is not None:
        why = "the test PostgreSQL URL carries a password already"
        if servers.in_ci():
            pytest.fail(why + " (CI=true: failing instead of skipping)")
        pytest.skip(why)
    user, host = parts.netloc.split("@", 1)
    with_password = parts._replace(netloc="%s:secret-pw@%s" % (user, host)).geturl()
    shown = parts._replace(netloc="%s:***@%s" % (user, host)).geturl()
    r = restore_cli(path, "--to", with_password)
    assert (r.returncode, r.stderr) == (0, b"")
    assert r.stdout.decode() == (
        "restored %s into %s: revision %d, compact revision %d, 2 lease(s), 2 user(s), "
        "2 role(s), auth enabled\n" % (path, shown, current, compact))
    # A refusal names no password either.
    r = restore_cli(path, "--to", with_password)
    assert r.returncode == 1 and b"secret-pw" not in r.stdout + r.stderr, r


def test_a_db_file_without_checksum_needs_skip_hash_check(etcd_snapshot, tmp_path):
    from twisted.internet.task import Clock
    from etcdadapter.snapshot.restore import imported, open_snapshot
    from etcdadapter.store.memory import MemoryStore
    path, expected, compact, current = etcd_snapshot
    raw = os.path.join(os.path.dirname(path), "raw.db")
    url = "sqlite://%s/raw.db" % tmp_path
    r = restore_cli(raw, "--to", url)
    assert (r.returncode, r.stdout) == (1, b"")
    assert r.stderr.decode() == (
        "etcd-adapter snapshot: the file has no SHA-256 at its end (a db file "
        "copied from an etcd data directory?): pass --skip-hash-check to restore it "
        "anyway\n")
    r = restore_cli(raw, "--to", url, "--skip-hash-check")
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().startswith("restored %s into %s: revision %d, compact "
                                        "revision %d, 2 lease(s)" % (raw, url, current,
                                                                     compact))
    # The same history as etcd answered (read in-process from a memory store).
    f, snapshot = open_snapshot(raw, skip_hash_check=True)
    store = MemoryStore(clock=Clock())
    with f:
        store.import_history(imported(snapshot))
    for rev in range(compact, current + 1):
        got = []
        store.range(rpc.RangeRequest(key=b"\0", range_end=b"\0", revision=rev)
                    ).addCallback(got.append)
        r = got[0]
        assert (r.header.revision, r.count, r.more,
                [(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version,
                  kv.lease) for kv in r.kvs]) == expected["ranges"][rev]


def test_restore_refuses_a_damaged_file(etcd_snapshot, tmp_path):
    path = etcd_snapshot[0]
    with open(path, "rb") as f:
        data = bytearray(f.read())
    data[9000] ^= 0xFF
    bad = tmp_path / "bad.db"
    bad.write_bytes(bytes(data))
    url = "sqlite://%s/never.db" % tmp_path
    r = subprocess.run([command.BIN, "snapshot", "restore", str(bad),
                        "--to", url], cwd=servers.REPO_ROOT, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=60)
    assert (r.returncode, r.stdout) == (1, b"")
    assert r.stderr.decode() == (
        "etcd-adapter snapshot: snapshot file integrity check failed: the "
        "SHA-256 at its end does not match its contents\n")
    r = subprocess.run([command.BIN, "snapshot", "restore", path,
                        "--to", "memory://"], cwd=servers.REPO_ROOT, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=60)
    assert r.returncode == 2
    assert r.stderr.decode() == (
        "etcd-adapter snapshot: the memory store lives inside the adapter "
        "process: start the adapter with --store 'memory://?snapshot=%s' instead\n" % path)


# -- out --------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", stores.KINDS)
def test_etcdctl_snapshot_save_from_the_adapter(kind, tmp_path, request):
    if servers.missing_binaries():
        pytest.skip("etcd/etcdctl not installed")
    url = "memory://" if kind == "memory" else fresh_store_url(kind, tmp_path, request)
    adapter = run_adapter("snapshot-out-" + kind, url, request)
    c = Client(adapter.endpoint)
    expected, compact, current = with_history(c)
    check_history_shape(expected, compact, current)
    c.close()
    # Admin only, as on etcd.
    r = etcdctl("--endpoints=" + adapter.endpoint, "--user", "alice:" + ALICE_PW,
                "snapshot", "save", str(tmp_path / "refused.db"), check=False)
    assert r.returncode == 5 and r.stderr.endswith(b"Error: etcdserver: permission denied\n")
    path = str(tmp_path / "adapter.db")
    etcdctl("--endpoints=" + adapter.endpoint, "--user", "root:" + ROOT_PW,
            "snapshot", "save", path)
    status = json.loads(etcdctl("snapshot", "status", path, "-w", "json").stdout)
    assert status["revision"] == current
    assert status["totalSize"] == os.path.getsize(path) - 32
    # key bucket: the versions kept from the compact revision on; plus meta, lease,
    # auth, users, roles and cluster entries.
    etcd = servers.RestoredEtcd("from-adapter-" + kind, path)
    request.node._etcdadapter_servers.append(etcd)
    wait_answering(etcd)
    request.addfinalizer(etcd.cleanup)
    request.addfinalizer(etcd.stop)
    e = Client(etcd.endpoint).login("root", ROOT_PW)          # the adapter's bcrypt hash
    assert Client(etcd.endpoint).login("alice", ALICE_PW).token
    got = observe(e, compact, current)
    for rev in range(compact, current + 1):
        assert got["ranges"][rev] == expected["ranges"][rev], rev
    assert got == expected
    e.close()


def test_snapshot_over_the_json_gateway(tmp_path, request):
    """/v3/maintenance/snapshot as etcd's gateway streams it: one JSON result per chunk,
    remaining_bytes counting the database bytes still to come, the SHA-256 last."""
    import base64
    import hashlib
    adapter = run_adapter("snapshot-json", "memory://?initial_revision=1", request)
    c = Client(adapter.endpoint)
    for i in range(300):
        put(c, b"/k/%03d" % i, b"v" * 200)
    c.close()
    resp, body = servers.http_request(adapter, "POST", "/v3/maintenance/snapshot", b"{}",
                                      timeout=30)
    assert resp.status == 200
    lines = [json.loads(line)["result"] for line in body.decode().splitlines()]
    blobs = [base64.b64decode(m["blob"]) for m in lines]
    db = b"".join(blobs[:-1])
    assert all(len(b) == 32 * 1024 for b in blobs[:-2]) and len(db) % 4096 == 0
    sent = 0
    for m, blob in zip(lines[:-1], blobs[:-1]):
        sent += len(blob)
        assert int(m.get("remaining_bytes", "0")) == len(db) - sent
    assert "remaining_bytes" not in lines[-1]
    assert blobs[-1] == hashlib.sha256(db).digest()
    path = tmp_path / "gateway.db"
    path.write_bytes(db + blobs[-1])
    status = json.loads(etcdctl("snapshot", "status", str(path), "-w", "json").stdout)
    assert status["revision"] == 301


def test_main_takes_argv_and_a_program_name(capsys):
    """``main(argv, prog=...)`` as another command wires it (``etcd-adapter snapshot``);
    usage errors return 2 instead of exiting."""
    import io
    from etcdadapter.snapshot.restore import main
    assert main(["restore", "x.db"], prog="etcd-adapter snapshot") == 2
    assert capsys.readouterr().err.endswith(
        "etcd-adapter snapshot restore: error: the following arguments are required: "
        "--to\n")
    err = io.StringIO()
    assert main(["restore", "x.db", "--to", "memory://"], err=err,
                prog="etcd-adapter snapshot") == 2
    assert err.getvalue() == (
        "etcd-adapter snapshot: the memory store lives inside the adapter process: start "
        "the adapter with --store 'memory://?snapshot=x.db' instead\n")


# -- docs/etcd-snapshots.md, pasted -------------------------------------------------------

SH = marked("sh")


def humanized(size):
    """go-humanize's Bytes, as etcdctl prints TOTAL SIZE (SI units, one decimal below
    10)."""
    if size < 10:
        return "%d B" % size
    e = int(math.floor(math.log(size) / math.log(1000)))
    value = math.floor(size / 1000 ** e * 10 + 0.5) / 10
    return ("%.0f %s" if value >= 10 else "%.1f %s") % (value, ["B", "kB", "MB", "GB"][e])


def status_table(text):
    """The rows of ``etcdctl snapshot status -w table``, cells stripped."""
    return [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in text.splitlines() if line.startswith("|")]


def test_backing_up_and_leaving_as_the_doc_says(tmp_path):
    """"Backing up / leaving": an adapter on SQLite with the history, auth on; the doc's
    ``snapshot save`` and ``snapshot status -w table`` print the file and its revision;
    the adapter stops and the doc's ``snapshot restore`` + ``etcd`` serve, at the same
    address, what the adapter served, and go on at its revision + 1."""
    servers.require_etcd_binaries()
    paste = Paste(tmp_path)
    paste.replace = {"root:PASSWORD": "root:" + ROOT_PW}
    try:
        paste.start(["--store", "sqlite://%s/adapter.db" % tmp_path])
        endpoint = "127.0.0.1:%d" % paste.port
        c = Client(endpoint)
        expected, compact, current = with_history(c)
        check_history_shape(expected, compact, current)
        c.close()

        assert paste.run(SH["snapshot-save"]) == "Snapshot saved at backup.db\n"
        path = os.path.join(paste.cwd, "backup.db")
        header, row = status_table(paste.run(SH["snapshot-status"]))
        assert header == ["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"]
        # The key bucket: each key's version live at the compact revision, then every
        # event after it; meta: consistent_index and the two compaction marks; auth:
        # enabled and its revision; cluster: its version.
        keys = (len(expected["ranges"][compact][3]) + len(expected["watch"])
                + 3 + len(expected["leases"]) + 2 + len(expected["users"])
                + len(expected["roles"]) + 1)
        assert row[1:] == [str(current), str(keys), humanized(os.path.getsize(path) - 32)]
        assert re.match(r"^[0-9a-f]{1,8}$", row[0]), row

        paste.stop()                    # leaving: etcd takes the adapter's address
        assert paste.run(SH["snapshot-to-etcd"]) == ""
        _serves_as_observed(endpoint, expected, compact, current)  # the adapter's bcrypt
    finally:
        paste.kill()


def _serves_as_observed(endpoint, expected, compact, current):
    """The server on ``endpoint`` (started from a snapshot) lets alice log in with her
    password, answers what was ``observe``d at every retained revision, and writes on at
    ``current`` + 1."""
    assert Client(endpoint).login("alice", ALICE_PW).token
    c = Client(endpoint).login("root", ROOT_PW)
    got = observe(c, compact, current)
    for rev in range(compact, current + 1):
        assert got["ranges"][rev] == expected["ranges"][rev], rev
    assert got == expected
    assert put(c, b"/a/after", b"x") == current + 1
    c.close()


def test_arriving_as_the_doc_says(tmp_path):
    """"Restoring an etcd snapshot into a store": the doc's ``snapshot save`` from a real
    etcd with the history, its ``etcd-adapter snapshot restore`` (into SQLite) printing
    the revisions, then its adapter serving what etcd served."""
    servers.require_etcd_binaries()
    etcd = servers.EtcdServer("doc-arriving").start()
    paste = Paste(tmp_path)
    store = "sqlite://%s/restored.db" % tmp_path
    paste.replace = {"https://etcd:2379": etcd.client_url,
                     "root:PASSWORD": "root:" + ROOT_PW,
                     "'mysql://user:pw@db/apisix'": "'%s'" % store}
    try:
        c = Client(etcd.endpoint)
        expected, compact, current = with_history(c)
        c.close()
        assert paste.run(SH["etcd-snapshot-save"]) == "Snapshot saved at etcd.db\n"
        etcd.stop()

        assert paste.run(SH["snapshot-restore"]) == (
            "restored etcd.db into %s: revision %d, compact revision %d, 2 lease(s), "
            "2 user(s), 2 role(s), auth enabled\n" % (store, current, compact))
        assert paste.run(SH["snapshot-restored-adapter"]) == ""
        _serves_as_observed("127.0.0.1:%d" % paste.port, expected, compact,
                            current)                              # etcd's bcrypt
        paste.stop()
    finally:
        paste.kill()
        etcd.stop()
        etcd.cleanup()
