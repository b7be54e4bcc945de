"""``etcd-adapter migrate``: a running etcd 3.4 moved into SQLite, MariaDB and PostgreSQL
at etcd's revisions, while a writer keeps writing to etcd and APISIX-like watchers move
from etcd to the adapter mid-stream.

One scenario per store: APISIX-shaped data (hundreds of routes and upstreams, a txn, a
lease with keys, a deleted key) in a real etcd; ``etcd-adapter migrate --from --to``
copies it; an adapter started on the store answers Range exactly as etcd (keys, values,
create/mod revisions, versions, leases; at the copied revision R and R - 1, ErrCompacted
below) and refuses writes with the migration error; an HTTP/JSON watch (APISIX's way), a
gRPC watch and an ``etcdctl watch`` started against etcd are moved to the adapter with
start_revision = last seen + 1 and, together, see every event of a reference watch on
etcd exactly once, with etcd's revisions and prev_kv (so does a watch from R itself);
the follower is stopped (SIGTERM, or SIGKILL on MariaDB) and resumed without copying
again; ``migrate --cut-over`` hands over at etcd's revision F, a write through the
adapter then gets revision F + 1, which the moved watchers see, and a compaction leaves
etcd's keys.

Then: users and roles (auth on), the README's steps as pasted, TLS with client
certificates, a database that refuses writes for a while, etcd compacted under a
stopped follower, a copied revision that is a txn out of key order, usage errors, a
lease kept alive on etcd and one expiring there while following.
"""

import base64
import json
import os
import queue
import re
import shlex
import sqlite3
import subprocess
import threading
import time

import grpc
import pytest
from google.protobuf import json_format

from support import command
from support import docs
from support import servers
from support import stores
from support.gateway_client import GatewayClient, b64, watch_body
from etcdadapter.pb.authpb import auth_pb2 as authpb
from etcdadapter.pb.etcdserverpb import rpc_pb2 as rpc
from etcdadapter.pb.mvccpb import kv_pb2 as mvccpb

pytestmark = pytest.mark.adapter

KV = "/etcdserverpb.KV/"
LEASE = "/etcdserverpb.Lease/"
AUTH = "/etcdserverpb.Auth/"
MIGRATING = "etcdserver: migration in progress: writes go to etcd until cut-over"
PREFIX = b"/apisix/"
PREFIX_END = b"/apisix0"
# The leases test_live_migration grants on the module's etcd outlive the module: one
# expiring there later deletes its keys at a revision the later tests, which expect
# etcd to stay where they left it, did not write.
LEASE_TTL = 900


@pytest.fixture(scope="module")
def etcd():
    missing = servers.missing_binaries()
    if missing:
        pytest.skip("etcd binaries not found: %s" % ", ".join(missing))
    server = servers.EtcdServer("migrate-etcd")
    server.start()
    client = servers.GrpcClient(server.endpoint)
    try:
        yield server, client
    finally:
        client.close()
        server.stop()
        server.cleanup()


def ok(result):
    assert result.ok, result
    return result.response


def put(c, key, value, lease=0):
    return ok(c.call(KV + "Put", rpc.PutRequest(key=key, value=value, lease=lease),
                     rpc.PutResponse)).header.revision


def txn_puts(c, pairs):
    ops = [rpc.RequestOp(request_put=rpc.PutRequest(key=k, value=v)) for k, v in pairs]
    return ok(c.call(KV + "Txn", rpc.TxnRequest(success=ops), rpc.TxnResponse))


def delete(c, key):
    return ok(c.call(KV + "DeleteRange", rpc.DeleteRangeRequest(key=key),
                     rpc.DeleteRangeResponse))


def grant(c, lease_id, ttl):
    return ok(c.call(LEASE + "LeaseGrant", rpc.LeaseGrantRequest(ID=lease_id, TTL=ttl),
                     rpc.LeaseGrantResponse))


def revoke(c, lease_id):
    return ok(c.call(LEASE + "LeaseRevoke", rpc.LeaseRevokeRequest(ID=lease_id),
                     rpc.LeaseRevokeResponse))


def lease_ids(c):
    r = ok(c.call(LEASE + "LeaseLeases", rpc.LeaseLeasesRequest(), rpc.LeaseLeasesResponse))
    return sorted(lease.ID for lease in r.leases)


def revision_of(c):
    return ok(c.call(KV + "Range", rpc.RangeRequest(key=b"\0", count_only=True),
                     rpc.RangeResponse)).header.revision


def kvs_at(c, revision):
    r = ok(c.call(KV + "Range", rpc.RangeRequest(key=b"\0", range_end=b"\0",
                                                 revision=revision), rpc.RangeResponse))
    return [(kv.key, kv.create_revision, kv.mod_revision, kv.version, kv.value, kv.lease)
            for kv in r.kvs]


def event_tuple(e):
    prev = None
    if e.HasField("prev_kv"):
        p = e.prev_kv
        prev = (p.create_revision, p.mod_revision, p.version, p.value, p.lease)
    kv = e.kv
    return (e.type, kv.key, kv.create_revision, kv.mod_revision, kv.version, kv.value,
            kv.lease, prev)


class Writer(object):
    """Writes to etcd until stopped: puts, a two-key txn, deletes, a lease."""

    def __init__(self, client, lease_id):
        self.client = client
        self.lease_id = lease_id
        self.stop = threading.Event()
        self.count = 0
        self.error = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        c = self.client
        try:
            i = 0
            while not self.stop.is_set():
                i += 1
                key = b"/apisix/routes/w%03d" % (i % 40)
                if i % 5 == 0:
                    txn_puts(c, [(key, b"t%d" % i), (b"/apisix/upstreams/w%d" % i, b"u")])
                elif i % 7 == 0:
                    delete(c, key)
                elif i == 3:
                    grant(c, self.lease_id, LEASE_TTL)
                    put(c, b"/apisix/data_plane/server_info/w", b"live",
                        lease=self.lease_id)
                else:
                    put(c, key, b"v%d" % i)
                self.count += 1
                time.sleep(0.01)
        except Exception as e:        # reported by finish()
            self.error = e

    def finish(self):
        self.stop.set()
        self.thread.join(10)
        assert self.error is None, self.error
        assert self.count > 20, self.count


class JsonWatch(object):
    """APISIX's watch: POST /v3/watch on the HTTP/JSON gateway, events since a
    revision."""

    def __init__(self, endpoint, start):
        self.stream = GatewayClient(endpoint).stream("/v3/watch", watch_body(
            PREFIX, PREFIX_END, start_revision=start, prev_kv=True))
        created = self.stream.next(10)
        assert created["result"]["created"] is True, created

    def events(self, quiet=0.4, until=None):
        """Events until nothing comes for ``quiet`` s (or the last reaches ``until``)."""
        out = []
        while until is None or not out or out[-1][3] < until:
            try:
                msg = self.stream.next(quiet if until is None else 10)
            except OSError:
                break
            assert msg is not None and "result" in msg, msg
            r = json_format.ParseDict(msg["result"], rpc.WatchResponse(),
                                      ignore_unknown_fields=True)
            out.extend(event_tuple(e) for e in r.events)
        return out

    def close(self):
        self.stream.close()


class GrpcWatch(object):
    def __init__(self, endpoint, start):
        self.channel = grpc.insecure_channel(endpoint)
        self.watch = servers.GrpcWatch(self.channel)
        self.watch.create(key=PREFIX, range_end=PREFIX_END, start_revision=start,
                          prev_kv=True)

    def events(self, quiet=0.4, until=None):
        out = []
        while until is None or not out or out[-1][3] < until:
            try:
                r = self.watch.next(quiet if until is None else 10)
            except queue.Empty:
                break
            out.extend(event_tuple(e) for e in r.events)
        return out

    def close(self):
        self.watch.close()
        self.channel.close()


class EtcdctlWatch(object):
    """``etcdctl watch --rev=START --prev-kv -w json`` on the prefix, as an operator or
    a script would run it; its output lines (one WatchResponse each) read in a thread."""

    def __init__(self, endpoint, start):
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL_")}
        env["ETCDCTL_API"] = "3"
        self.proc = subprocess.Popen(
            [servers.ETCDCTL_BIN, "--endpoints=" + endpoint, "watch", PREFIX.decode(),
             PREFIX_END.decode(), "--rev=%d" % start, "--prev-kv", "-w", "json"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
        self.lines = queue.Queue()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line)

    def events(self, quiet=0.4, until=None):
        out = []
        while until is None or not out or out[-1][3] < until:
            try:
                line = self.lines.get(timeout=quiet if until is None else 10)
            except queue.Empty:
                break
            for e in json.loads(line).get("Events") or ():
                out.append(event_tuple(json_format.ParseDict(e, mvccpb.Event())))
        return out

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self.proc.stdout.close()


def migrate(url, etcd_server):
    return command.Running(["migrate", "--from", "http://" + etcd_server.endpoint,
                            "--to", url])


def load_apisix(c):
    """Hundreds of routes and upstreams, a txn, a lease with keys, a deleted key."""
    for i in range(200):
        put(c, b"/apisix/routes/%03d" % i, b'{"id":"%d","uri":"/r%d"}' % (i, i))
    for i in range(100):
        put(c, b"/apisix/upstreams/%03d" % i, b'{"nodes":{"127.0.0.1:%d":1}}' % i)
    put(c, b"/apisix/routes/000", b'{"id":"0","uri":"/changed"}')
    txn_puts(c, [(b"/apisix/ssls/1", b"s1"), (b"/apisix/ssls/2", b"s2"),
                 (b"/apisix/services/1", b"svc")])
    grant(c, 0x77, LEASE_TTL)
    put(c, b"/apisix/data_plane/server_info/a", b"a", lease=0x77)
    put(c, b"/apisix/data_plane/server_info/b", b"b", lease=0x77)
    delete(c, b"/apisix/routes/199")


def assert_compacted_below(client, revision):
    """Reads below ``revision`` answer ErrCompacted, as after etcd's own compaction."""
    below = client.call(KV + "Range", rpc.RangeRequest(key=b"\0", range_end=b"\0",
                                                       revision=revision - 1),
                        rpc.RangeResponse)
    assert below.error() == ("OUT_OF_RANGE",
                             "etcdserver: mvcc: required revision has been compacted")


@pytest.mark.parametrize("kind", stores.SQL_KINDS)
def test_live_migration(etcd, kind, tmp_path):
    etcd_server, ec = etcd
    url, drop = stores.store_url(kind, tmp_path)
    adapter = None
    follower = None
    watches = []
    try:
        if revision_of(ec) < 300:
            load_apisix(ec)
        r0 = revision_of(ec) + 1
        reference = GrpcWatch(etcd_server.endpoint, r0)
        json_watch = JsonWatch(etcd_server.endpoint, r0)
        grpc_watch = GrpcWatch(etcd_server.endpoint, r0)
        ctl_watch = EtcdctlWatch(etcd_server.endpoint, r0)
        watches += [reference, json_watch, grpc_watch, ctl_watch]
        writer = Writer(ec, 0x880 + stores.SQL_KINDS.index(kind))

        follower = migrate(url, etcd_server)
        follower.wait_log("following etcd from revision")
        copied = int(follower.stdout().split(" at revision ")[1].split()[0])
        assert copied >= r0 - 1
        adapter = servers.AdapterServer("migrate-adapter", store=url)
        adapter.start()
        ac = servers.GrpcClient(adapter.endpoint)

        # The copy: the very keys, revisions, versions and leases of etcd.
        at = revision_of(ac)
        assert at >= copied
        assert kvs_at(ac, at) == kvs_at(ec, at)
        assert kvs_at(ac, copied) == kvs_at(ec, copied)
        # Compacted at copied - 1, the copied revision's own events exact.
        assert kvs_at(ac, copied - 1) == kvs_at(ec, copied - 1)
        assert_compacted_below(ac, copied - 1)
        ttl = ok(ac.call(LEASE + "LeaseTimeToLive", rpc.LeaseTimeToLiveRequest(
            ID=0x77, keys=True), rpc.LeaseTimeToLiveResponse))
        etcd_ttl = ok(ec.call(LEASE + "LeaseTimeToLive", rpc.LeaseTimeToLiveRequest(
            ID=0x77), rpc.LeaseTimeToLiveResponse))
        assert ttl.grantedTTL == LEASE_TTL and abs(ttl.TTL - etcd_ttl.TTL) <= 1, \
            (ttl, etcd_ttl)
        assert list(ttl.keys) == [b"/apisix/data_plane/server_info/a",
                                  b"/apisix/data_plane/server_info/b"]

        # A watcher resuming at the copied revision itself gets etcd's events.
        from_copied = [GrpcWatch(etcd_server.endpoint, copied),
                       GrpcWatch(adapter.endpoint, copied)]
        watches += from_copied

        # Writes go to etcd until the cut-over.
        refused = ac.call(KV + "Put", rpc.PutRequest(key=b"/apisix/x", value=b"x"),
                          rpc.PutResponse)
        assert refused.error() == ("UNAVAILABLE", MIGRATING)
        refused = ac.call(LEASE + "LeaseGrant", rpc.LeaseGrantRequest(TTL=10),
                          rpc.LeaseGrantResponse)
        assert refused.error() == ("UNAVAILABLE", MIGRATING)
        reply = GatewayClient(adapter.endpoint).post(
            "/v3/kv/put", {"key": b64(b"/apisix/x"), "value": b64(b"x")})
        assert (reply.status, reply.json()["code"], reply.json()["message"]) == (
            503, 14, MIGRATING)

        # A lease granted (a key on it) and one revoked on etcd while following: the
        # adapters have both within the follower's lease poll, before any cut-over.
        kept = 0x990 + 2 * stores.SQL_KINDS.index(kind)
        gone = kept + 1
        grant(ec, kept, LEASE_TTL)
        put(ec, b"/apisix/data_plane/server_info/kept", b"k", lease=kept)
        grant(ec, gone, LEASE_TTL)
        put(ec, b"/apisix/data_plane/server_info/gone", b"g", lease=gone)
        assert gone in lease_ids(ec)
        revoke(ec, gone)
        assert gone not in lease_ids(ec)
        servers.wait_until(lambda: lease_ids(ac) == lease_ids(ec), timeout=5,
                           what="etcd's grant and revoke on the adapter")

        def kept_ttl(c):
            r = ok(c.call(LEASE + "LeaseTimeToLive", rpc.LeaseTimeToLiveRequest(
                ID=kept, keys=True), rpc.LeaseTimeToLiveResponse))
            return r.grantedTTL, list(r.keys)
        assert kept_ttl(ac) == kept_ttl(ec) == (
            LEASE_TTL, [b"/apisix/data_plane/server_info/kept"])

        # The watchers move from etcd to the adapter, from what they saw + 1.
        now = revision_of(ec)
        seen_json = json_watch.events(until=now)
        seen_grpc = grpc_watch.events(until=now)
        seen_ctl = ctl_watch.events(until=now)
        assert seen_json and seen_grpc and seen_ctl
        json_watch.close()
        grpc_watch.close()
        ctl_watch.close()
        last = max(seen_json[-1][3], seen_grpc[-1][3], seen_ctl[-1][3])
        servers.wait_until(lambda: revision_of(ac) >= last, what="adapter at %d" % last)
        json_watch = JsonWatch(adapter.endpoint, seen_json[-1][3] + 1)
        grpc_watch = GrpcWatch(adapter.endpoint, seen_grpc[-1][3] + 1)
        ctl_watch = EtcdctlWatch(adapter.endpoint, seen_ctl[-1][3] + 1)
        watches += [json_watch, grpc_watch, ctl_watch]

        # Interrupted and resumed: no second copy.  SIGTERM stops it cleanly; SIGKILL
        # (MariaDB's run) may cut a transaction short, which the database rolls back.
        if kind == "mariadb":
            follower.kill()
        else:
            assert follower.terminate() == 0
            assert "stopped at revision" in follower.stdout(), follower.stdout()
        follower = migrate(url, etcd_server)
        follower.wait_log("following etcd from revision")
        out = follower.stdout()
        assert out.startswith("resuming the migration at revision "), out
        assert "(copied at revision %d)" % copied in out and "key(s)" not in out, out
        time.sleep(0.3)

        # The writer stops; the cut-over hands over at etcd's revision.
        writer.finish()
        final = revision_of(ec)
        status, out, err = command.run(["migrate", "--cut-over", "--to", url])
        assert (status, err) == (0, ""), (out, err, follower.stdout())
        assert out == "cut over at revision %d: the store accepts writes\n" % final
        assert follower.proc.wait(10) == 0
        assert ("cut over at revision %d: adapters on the store accept writes from "
                "revision %d on" % (final, final + 1)) in follower.stdout()

        expected = reference.events(until=final)
        assert expected[-1][3] == final
        assert seen_json + json_watch.events(until=final) == expected
        assert seen_grpc + grpc_watch.events(until=final) == expected
        assert seen_ctl + ctl_watch.events(until=final) == expected
        etcd_from_copied = from_copied[0].events(until=final)
        assert etcd_from_copied[0][3] == copied
        assert from_copied[1].events(until=final) == etcd_from_copied
        middle = (copied + final) // 2
        assert kvs_at(ac, middle) == kvs_at(ec, middle)
        assert kvs_at(ac, final) == kvs_at(ec, final)
        assert writer.lease_id in lease_ids(ac)
        assert lease_ids(ac) == lease_ids(ec)

        # Writes through the adapter continue at etcd's revision + 1.
        def accepted():
            r = ac.call(KV + "Put", rpc.PutRequest(key=b"/apisix/routes/after",
                                                   value=b"a"), rpc.PutResponse)
            if r.error() == ("UNAVAILABLE", MIGRATING):
                return None
            return ok(r).header.revision
        assert servers.wait_until(accepted, timeout=3, what="writes accepted") == final + 1
        after = (0, b"/apisix/routes/after", final + 1, final + 1, 1, b"a", 0, None)
        assert json_watch.events(until=final + 1) == [after]
        assert grpc_watch.events(until=final + 1) == [after]
        assert ctl_watch.events(until=final + 1) == [after]

        # The followed history compacts like the adapter's own: what is left is etcd's.
        ok(ac.call(KV + "Compact", rpc.CompactionRequest(revision=final, physical=True),
                   rpc.CompactionResponse))
        assert kvs_at(ac, final) == kvs_at(ec, final)
        ac.close()
    finally:
        for w in watches:
            w.close()
        if follower is not None:
            follower.kill()
        if adapter is not None:
            adapter.stop()
            adapter.cleanup()
        drop()


def test_refusals(tmp_path):
    status, out, err = command.run(["migrate", "--from", "http://127.0.0.1:1",
                                    "--to", "memory://"])
    assert status == 2
    assert err.startswith("etcd-adapter migrate: the memory store lives inside one "
                          "adapter process: migrate into a SQL store"), err
    status, out, err = command.run(["migrate", "--to", "sqlite:///%s/a.db" % tmp_path])
    assert (status, err) == (2, "etcd-adapter migrate: --from (etcd endpoints) is "
                                "required, or --cut-over\n")
    url = "sqlite:///%s/b.db" % tmp_path
    status, out, err = command.run(["migrate", "--cut-over", "--to", url])
    assert (status, err) == (1, "etcd-adapter migrate: no migration is in progress on "
                                "%s\n" % url)
    status, out, err = command.run(["migrate", "--from", "http://127.0.0.1:1",
                                    "--to", url])
    assert status == 1
    assert err.startswith("etcd-adapter migrate: cannot reach etcd (http://127.0.0.1:1: "), err


class AuthClient(object):
    """gRPC calls carrying a token once logged in."""

    def __init__(self, endpoint):
        self.channel = grpc.insecure_channel(endpoint)
        self.token = None

    def call(self, method, request, response_class):
        fn = self.channel.unary_unary(method, request_serializer=lambda m: m.SerializeToString(),
                                      response_deserializer=response_class.FromString)
        try:
            return fn(request, timeout=10,
                      metadata=[("token", self.token)] if self.token else None)
        except grpc.RpcError as e:
            return (e.code().name, e.details())

    def login(self, name, password):
        r = self.call(AUTH + "Authenticate", rpc.AuthenticateRequest(
            name=name, password=password), rpc.AuthenticateResponse)
        if isinstance(r, tuple):
            return r
        self.token = r.token
        return "ok"

    def close(self):
        self.channel.close()


def users_and_roles(c):
    users = c.call(AUTH + "UserList", rpc.AuthUserListRequest(), rpc.AuthUserListResponse)
    out = {}
    for name in users.users:
        out[name] = list(c.call(AUTH + "UserGet", rpc.AuthUserGetRequest(name=name),
                                rpc.AuthUserGetResponse).roles)
    for name in c.call(AUTH + "RoleList", rpc.AuthRoleListRequest(),
                       rpc.AuthRoleListResponse).roles:
        perms = c.call(AUTH + "RoleGet", rpc.AuthRoleGetRequest(role=name),
                       rpc.AuthRoleGetResponse).perm
        out["role:" + name] = [(p.permType, p.key, p.range_end) for p in perms]
    return out


def test_auth_copied(tmp_path):
    """Users, roles and permissions come along; the --user logs in with its password,
    the others have none until it is set again after the cut-over."""
    missing = servers.missing_binaries()
    if missing:
        pytest.skip("etcd binaries not found: %s" % ", ".join(missing))
    etcd_server = servers.EtcdServer("migrate-auth-etcd")
    etcd_server.start()
    adapter = follower = None
    url = "sqlite:///%s/auth.db" % tmp_path
    ec = AuthClient(etcd_server.endpoint)
    ac = None
    try:
        A = AUTH
        ec.call(A + "UserAdd", rpc.AuthUserAddRequest(name="root", password="root-pw"),
                rpc.AuthUserAddResponse)
        ec.call(A + "UserGrantRole", rpc.AuthUserGrantRoleRequest(user="root", role="root"),
                rpc.AuthUserGrantRoleResponse)
        ec.call(A + "RoleAdd", rpc.AuthRoleAddRequest(name="reader"), rpc.AuthRoleAddResponse)
        ec.call(A + "RoleGrantPermission", rpc.AuthRoleGrantPermissionRequest(
            name="reader", perm=authpb.Permission(permType=authpb.Permission.READ,
                                                  key=b"/apisix/", range_end=b"/apisix0")),
            rpc.AuthRoleGrantPermissionResponse)
        ec.call(A + "UserAdd", rpc.AuthUserAddRequest(name="alice", password="alice-pw"),
                rpc.AuthUserAddResponse)
        ec.call(A + "UserGrantRole", rpc.AuthUserGrantRoleRequest(user="alice",
                                                                  role="reader"),
                rpc.AuthUserGrantRoleResponse)
        put(servers.GrpcClient(etcd_server.endpoint), b"/apisix/routes/1", b"r1")
        ec.call(A + "AuthEnable", rpc.AuthEnableRequest(), rpc.AuthEnableResponse)
        assert ec.login("root", "root-pw") == "ok"
        expected = users_and_roles(ec)
        assert expected["alice"] == ["reader"]

        follower = command.Running(["migrate", "--from", "http://" + etcd_server.endpoint,
                                    "--to", url, "--user", "root:root-pw"])
        follower.wait_log("following etcd from revision")
        assert "users and roles" in follower.stdout()
        port = command.free_port()
        adapter = command.Running(["--listen", "127.0.0.1:%d" % port, "--store", url])
        adapter.wait_http(port)         # the gRPC probe of AdapterServer needs a token
        endpoint = "127.0.0.1:%d" % port
        ac = AuthClient(endpoint)
        assert ac.call(KV + "Range", rpc.RangeRequest(key=b"/apisix/routes/1"),
                       rpc.RangeResponse) == ("INVALID_ARGUMENT",
                                              "etcdserver: user name is empty")
        assert ac.login("alice", "alice-pw") == (
            "INVALID_ARGUMENT", "etcdserver: authentication failed, invalid user ID or "
            "password")
        assert ac.login("root", "root-pw") == "ok"
        assert users_and_roles(ac) == expected
        r = ac.call(KV + "Range", rpc.RangeRequest(key=b"/apisix/routes/1"),
                    rpc.RangeResponse)
        assert [kv.value for kv in r.kvs] == [b"r1"]
        refused = ac.call(A + "UserChangePassword", rpc.AuthUserChangePasswordRequest(
            name="alice", password="alice-pw"), rpc.AuthUserChangePasswordResponse)
        assert refused == ("UNAVAILABLE", MIGRATING)

        # Made on etcd during the migration: copied at the cut-over.
        ec.call(A + "UserAdd", rpc.AuthUserAddRequest(name="bob", password="bob-pw"),
                rpc.AuthUserAddResponse)
        ec.call(A + "RoleAdd", rpc.AuthRoleAddRequest(name="writer"), rpc.AuthRoleAddResponse)
        ec.call(A + "UserGrantRole", rpc.AuthUserGrantRoleRequest(user="bob", role="writer"),
                rpc.AuthUserGrantRoleResponse)
        expected = users_and_roles(ec)
        assert expected["bob"] == ["writer"] and users_and_roles(ac) != expected

        status, out, err = command.run(["migrate", "--cut-over", "--to", url])
        assert status == 0, (out, err)
        assert follower.proc.wait(10) == 0
        servers.wait_until(lambda: users_and_roles(ac) == expected, timeout=5,
                           what="users and roles of the cut-over")

        def changed():
            r = ac.call(A + "UserChangePassword", rpc.AuthUserChangePasswordRequest(
                name="alice", password="alice-pw"), rpc.AuthUserChangePasswordResponse)
            return r != ("UNAVAILABLE", MIGRATING) and r
        assert not isinstance(servers.wait_until(changed, timeout=3), tuple)
        alice = AuthClient(endpoint)
        assert alice.login("alice", "alice-pw") == "ok"
        alice.close()
    finally:
        ec.close()
        if ac is not None:
            ac.close()
        if follower is not None:
            follower.kill()
        if adapter is not None:
            assert adapter.terminate() == 0
        etcd_server.stop()
        etcd_server.cleanup()


def test_readme_steps(etcd):
    """README's "Live, at etcd's revisions" steps, pasted (MariaDB, etcd's address and
    the adapter's port substituted), do what the text says."""
    etcd_server, ec = etcd
    url, drop = stores.create_database("mariadb")
    port = command.free_port()

    def args(name):
        text = docs.marked("sh")[name].strip()
        text = text.replace("'mysql://etcd_adapter:change-me@127.0.0.1:3306/etcd_adapter'",
                            url).replace("http://etcd.internal:2379",
                                         "http://" + etcd_server.endpoint)
        words = shlex.split(text)
        assert words[0] == "etcd-adapter", text
        return words[1:]
    follower = adapter = None
    try:
        put(ec, b"/apisix/routes/readme", b"before")
        follower = command.Running(args("live-migrate-follow"))
        follower.wait_log("following etcd from revision")
        copied = re.match(r"copied (\d+) key\(s\), (\d+) lease\(s\) at revision (\d+) in "
                          r"[0-9.]+s\nfollowing etcd from revision (\d+)\n$",
                          follower.stdout())
        assert copied, follower.stdout()
        assert int(copied.group(4)) == int(copied.group(3)) + 1
        adapter = command.Running(args("live-migrate-adapter"),
                                  {"ETCD_ADAPTER_LISTEN": "127.0.0.1:%d" % port})
        adapter.wait_http(port)
        gateway = GatewayClient("127.0.0.1:%d" % port)
        reply = gateway.post("/v3/kv/put", {"key": b64(b"/apisix/x"), "value": b64(b"x")})
        assert (reply.status, reply.json()["code"], reply.json()["message"]) == (
            503, 14, MIGRATING)
        written = put(ec, b"/apisix/routes/readme", b"during")

        def seen():
            r = gateway.post("/v3/kv/range", {"key": b64(b"/apisix/routes/readme")}).json()
            return r.get("kvs") and r["kvs"][0]
        servers.wait_until(lambda: seen()["mod_revision"] == str(written), what="copied")
        assert base64.b64decode(seen()["value"]) == b"during"

        status, out, err = command.run(args("live-migrate-cut-over"))
        final = revision_of(ec)
        assert (status, out, err) == (
            0, "cut over at revision %d: the store accepts writes\n" % final, ""), follower.stdout()
        assert follower.proc.wait(10) == 0

        def accepted():
            r = gateway.post("/v3/kv/put", {"key": b64(b"/apisix/y"), "value": b64(b"y")})
            return r.status == 200 and int(r.json()["header"]["revision"])
        assert servers.wait_until(accepted, timeout=3, what="writes accepted") == final + 1
    finally:
        if follower is not None:
            follower.kill()
        if adapter is not None:
            assert adapter.terminate() == 0
        drop()


def test_tls_client_certificate(tmp_path):
    """--from https://... with --cacert, --cert and --key: an etcd that requires client
    certificates is copied and followed; without the certificate it is a one-line
    error."""
    import subprocess
    from support import certs
    from etcdadapter.migrate.etcd_client import EtcdClient
    if servers.missing_binaries():
        pytest.skip("etcd binaries not found")
    ca = certs.CA(tmp_path)
    server_cert, server_key, _ = ca.issue("server", "etcd", "server+client",
                                            ips=["127.0.0.1"])
    client_cert, client_key, _ = ca.issue("client", "migrate", "client")
    port, peer = command.free_port(), command.free_port()
    url = "https://127.0.0.1:%d" % port
    peer_url = "http://127.0.0.1:%d" % peer
    with open(str(tmp_path / "etcd.log"), "wb") as log:
        etcd_proc = subprocess.Popen(
            [servers.ETCD_BIN, "--name", "default", "--data-dir", str(tmp_path / "data"),
             "--listen-client-urls", url, "--advertise-client-urls", url,
             "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
             "--initial-cluster", "default=" + peer_url, "--cert-file", server_cert,
             "--key-file", server_key, "--trusted-ca-file", ca.path,
             "--client-cert-auth"], stdout=log, stderr=log)
    store = "sqlite:///%s/tls.db" % tmp_path
    follower = None
    try:
        client = EtcdClient(url, ca.path, client_cert, client_key)

        def put_ok(key):
            try:
                return client.call("/v3/kv/put", rpc.PutRequest(key=key, value=b"v"),
                                   rpc.PutResponse).header.revision
            except Exception:
                return None
        servers.wait_until(lambda: put_ok(b"/apisix/routes/tls"), timeout=20,
                           what="etcd with TLS")
        status, out, err = command.run(["migrate", "--from", url, "--to", store,
                                        "--cacert", ca.path])
        assert status == 1 and err.startswith(
            "etcd-adapter migrate: cannot reach etcd (%s: " % url), err
        follower = command.Running(["migrate", "--from", url, "--to", store, "--cacert",
                                    ca.path, "--cert", client_cert, "--key", client_key])
        follower.wait_log("following etcd from revision")
        assert follower.stdout().startswith("copied 1 key(s), 0 lease(s) at revision ")
        later = put_ok(b"/apisix/routes/tls2")
        status, out, err = command.run(["migrate", "--cut-over", "--to", store])
        assert (status, out, err) == (
            0, "cut over at revision %d: the store accepts writes\n" % later, "")
        assert follower.proc.wait(10) == 0
        status, out, err = command.run(["migrate", "--from", url, "--to", store, "--cacert",
                                        ca.path, "--cert", client_cert, "--key", client_key])
        assert (status, err) == (1, "etcd-adapter migrate: %s holds data and no migration "
                                    "is in progress there: migrate into an empty store\n"
                                 % store)
    finally:
        if follower is not None:
            follower.kill()
        etcd_proc.kill()
        etcd_proc.wait(10)


def test_database_busy_then_back(etcd, tmp_path):
    """A write the database cannot take (SQLite locked by another process past the
    busy timeout) loses nothing: the follower says so, watches etcd again from the
    store's revision + 1, and catches up once the lock is gone."""
    etcd_server, ec = etcd
    path = str(tmp_path / "busy.db")
    url = "sqlite://%s?busy_timeout=0.2" % path
    follower = command.Running(["migrate", "--from", "http://" + etcd_server.endpoint,
                                "--to", url])
    try:
        follower.wait_log("following etcd from revision")
        status, out, err = command.run(["migrate", "--status", "--to", url])
        copied = int(follower.stdout().split(" at revision ")[1].split()[0])
        assert (status, out, err) == (0, "migration in progress on %s: copied at revision "
                                         "%d, now at revision %d\n" % (url, copied, copied),
                                      "")
        lock = sqlite3.connect(path, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")
        written = [put(ec, b"/apisix/routes/busy%d" % i, b"b%d" % i) for i in range(3)]
        follower.wait_log("interrupted (database: etcdserver: request timed out); "
                          "watching etcd again from revision ")
        lock.execute("ROLLBACK")
        lock.close()
        db = sqlite3.connect(path)

        def store_revision():
            return db.execute("SELECT revision FROM etcd_meta WHERE id = 1").fetchone()[0]
        servers.wait_until(lambda: store_revision() == written[-1], what="caught up")
        rows = db.execute("SELECT name, revision, version FROM etcd_log WHERE revision "
                          ">= ? ORDER BY revision", (written[0],)).fetchall()
        assert [(bytes(n), r) for n, r, _v in rows] == [
            (b"/apisix/routes/busy%d" % i, written[i]) for i in range(3)]
        db.close()
        status, out, err = command.run(["migrate", "--cut-over", "--to", url])
        assert status == 0, (out, err)
        assert follower.proc.wait(10) == 0
        status, out, err = command.run(["migrate", "--status", "--to", url])
        assert (status, out, err) == (3, "no migration in progress on %s (revision %d)\n"
                                      % (url, written[-1]), "")
    finally:
        follower.kill()


def test_resume_after_etcd_compacted(etcd, tmp_path):
    """Resumed after etcd compacted revisions the store has not read: a one-line error
    saying to start again, not a store with a hole; started again, a copy compacted at
    etcd's revision.  (--from lists a dead endpoint
    first.)"""
    etcd_server, ec = etcd
    url = "sqlite:///%s/compacted.db" % tmp_path
    # A dead endpoint first: every request goes on to the next.
    dead = "http://127.0.0.1:%d" % command.free_port()
    args = ["migrate", "--from", dead + ",http://" + etcd_server.endpoint, "--to", url]
    follower = command.Running(args)
    try:
        follower.wait_log("following etcd from revision")
        assert follower.terminate() == 0
        at = int(follower.stdout().split("stopped at revision ")[1].split(":")[0])
        put(ec, b"/apisix/routes/compacted", b"1")
        latest = put(ec, b"/apisix/routes/compacted", b"2")
        ok(ec.call(KV + "Compact", rpc.CompactionRequest(revision=latest),
                   rpc.CompactionResponse))
        status, out, err = command.run(args)
        assert status == 1, (out, err)
        assert err == ("etcd-adapter migrate: etcd compacted revision %d before the "
                       "migration read it (the store is at %d): start again on an empty "
                       "store\n" % (latest, at)), err

        # Starting again: etcd compacted at its revision R, so R's previous values are
        # gone and the copy is compacted at R (reads at R - 1: ErrCompacted).
        follower = command.Running(["migrate", "--from", "http://" + etcd_server.endpoint,
                                    "--to", "sqlite:///%s/again.db" % tmp_path])
        follower.wait_log("following etcd from revision %d" % (latest + 1))
        status, out, err = command.run(["migrate", "--cut-over", "--to",
                                        "sqlite:///%s/again.db" % tmp_path])
        assert status == 0, (out, err)
        assert follower.proc.wait(10) == 0
        db = sqlite3.connect(str(tmp_path / "again.db"))
        assert db.execute("SELECT revision, compact_revision FROM etcd_meta").fetchall() \
            == [(latest, latest)]
        db.close()
    finally:
        follower.kill()


def test_copied_revision_is_exact(etcd, tmp_path):
    """The copied revision R is a txn (keys out of key order, a deletion): a watcher
    resuming at R on the adapter gets R's events as etcd sends them -- order, deletion,
    prev_kv --, a read at R - 1 answers as etcd, R - 2 is compacted."""
    etcd_server, ec = etcd
    put(ec, b"/apisix/exact/m", b"m0")
    put(ec, b"/apisix/exact/z", b"z0")
    ops = [rpc.RequestOp(request_put=rpc.PutRequest(key=b"/apisix/exact/z", value=b"z1")),
           rpc.RequestOp(request_put=rpc.PutRequest(key=b"/apisix/exact/a", value=b"a1")),
           rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(
               key=b"/apisix/exact/m"))]
    r = ok(ec.call(KV + "Txn", rpc.TxnRequest(success=ops), rpc.TxnResponse))
    copied = r.header.revision
    url = "sqlite:///%s/exact.db" % tmp_path
    follower = command.Running(["migrate", "--from", "http://" + etcd_server.endpoint,
                                "--to", url])
    adapter = None
    watches = []
    try:
        follower.wait_log("following etcd from revision %d" % (copied + 1))
        adapter = servers.AdapterServer("migrate-exact-adapter", store=url)
        adapter.start()
        ac = servers.GrpcClient(adapter.endpoint)
        watches = [GrpcWatch(etcd_server.endpoint, copied),
                   GrpcWatch(adapter.endpoint, copied)]
        expected = watches[0].events(until=copied)
        assert [(e[0], e[1]) for e in expected] == [
            (0, b"/apisix/exact/z"), (0, b"/apisix/exact/a"), (1, b"/apisix/exact/m")]
        assert watches[1].events(until=copied) == expected
        assert kvs_at(ac, copied - 1) == kvs_at(ec, copied - 1)
        assert_compacted_below(ac, copied - 1)
        ac.close()
    finally:
        for w in watches:
            w.close()
        follower.kill()
        if adapter is not None:
            adapter.stop()
            adapter.cleanup()


def test_leases_kept_alive_and_expiring_while_following(etcd, tmp_path):
    """While following: a 3 s lease kept alive on etcd (``etcdctl lease keep-alive``)
    for 8 s never runs out on the adapter, whose LeaseTimeToLive stays within 2 s of
    etcd's; a 2 s lease left to expire on etcd takes its keys with it -- the DELETE
    events reach the adapter's watchers at etcd's revisions -- and is gone on the
    adapter too (TTL -1).  Both leases end within the test: the module's etcd must not
    change under the later tests."""
    etcd_server, ec = etcd
    alive, expiring = 0x1701, 0x1702
    url = "sqlite:///%s/leases.db" % tmp_path
    follower = migrate(url, etcd_server)
    adapter = keepalive = None
    watches = []

    def time_to_live(c, lease_id):
        r = ok(c.call(LEASE + "LeaseTimeToLive", rpc.LeaseTimeToLiveRequest(
            ID=lease_id, keys=True), rpc.LeaseTimeToLiveResponse))
        return r.TTL, r.grantedTTL, list(r.keys)
    try:
        follower.wait_log("following etcd from revision")
        adapter = servers.AdapterServer("migrate-leases-adapter", store=url)
        adapter.start()
        ac = servers.GrpcClient(adapter.endpoint)

        start = revision_of(ec) + 1
        watches = [GrpcWatch(etcd_server.endpoint, start),
                   GrpcWatch(adapter.endpoint, start)]
        grant(ec, alive, 3)
        put(ec, b"/apisix/data_plane/server_info/alive", b"a", lease=alive)
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL_")}
        env["ETCDCTL_API"] = "3"
        keepalive = subprocess.Popen(
            [servers.ETCDCTL_BIN, "--endpoints=" + etcd_server.endpoint, "lease",
             "keep-alive", "%x" % alive], stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, env=env)
        grant(ec, expiring, 2)
        put(ec, b"/apisix/data_plane/server_info/x1", b"1", lease=expiring)
        put(ec, b"/apisix/data_plane/server_info/x2", b"2", lease=expiring)
        servers.wait_until(lambda: expiring in lease_ids(ac), timeout=3,
                           what="the leases on the adapter")

        # Kept alive for 8 s, longer than the follower's 5 s refresh: etcd's answer
        # and the adapter's, side by side.
        samples = []
        until = time.monotonic() + 8
        while time.monotonic() < until:
            samples.append((time_to_live(ec, alive)[0], time_to_live(ac, alive)[0]))
            time.sleep(0.25)
        assert keepalive.poll() is None
        assert all(e >= 0 and a >= 0 and abs(e - a) <= 2 for e, a in samples), samples
        assert time_to_live(ac, alive)[1:] == (3, [b"/apisix/data_plane/server_info/alive"])

        # The 2 s lease expired on etcd meanwhile: its keys' deletions, at etcd's
        # revision, on both watches; the lease gone on both.
        assert time_to_live(ec, expiring) == (-1, 0, [])
        servers.wait_until(lambda: expiring not in lease_ids(ac), timeout=3,
                           what="the expired lease gone from the adapter")
        assert time_to_live(ac, expiring) == (-1, 0, [])
        now = revision_of(ec)
        expected = watches[0].events(until=now)
        deletions = [e for e in expected if e[0] == mvccpb.Event.DELETE]
        assert [(e[1], e[3]) for e in deletions] == [
            (b"/apisix/data_plane/server_info/x1", now),
            (b"/apisix/data_plane/server_info/x2", now)], expected
        assert watches[1].events(until=now) == expected
        servers.wait_until(lambda: revision_of(ac) == now, what="adapter at %d" % now)
        assert kvs_at(ac, now) == kvs_at(ec, now)
        assert lease_ids(ac) == lease_ids(ec)

        # Revoked on etcd, the kept lease goes from the adapter too, with its key.
        keepalive.kill()
        keepalive.wait(10)
        revoked = revoke(ec, alive).header.revision
        servers.wait_until(lambda: revision_of(ac) == revoked and alive not in
                           lease_ids(ac), timeout=3, what="the revoke on the adapter")
        assert kvs_at(ac, revoked) == kvs_at(ec, revoked)
        ac.close()
    finally:
        for w in watches:
            w.close()
        if keepalive is not None and keepalive.poll() is None:
            keepalive.kill()
            keepalive.wait(10)
        if alive in lease_ids(ec):
            revoke(ec, alive)
        follower.kill()
        if adapter is not None:
            adapter.stop()
            adapter.cleanup()
