"""etcd Auth: users, roles, simple tokens and their enforcement.

Unit tests drive :class:`AuthService` and the Authorizer directly on the memory store with
an injected clock; the gRPC and HTTP tests run the same calls on a real etcd 3.4 and on
the adapter and compare every status code, message and response body.
"""

import base64
import json
import threading

import grpc
import pytest
from twisted.internet import defer, task
from twisted.python.failure import Failure

from etcdadapter import errors
from etcdadapter.pb.authpb import auth_pb2 as authpb
from etcdadapter.pb.etcdserverpb import rpc_pb2 as rpc
from etcdadapter.security import auth_store as auth_store_module
from etcdadapter.security import permissions as perm
from etcdadapter.security import tokens as auth_tokens
from etcdadapter.security.auth_store import (AuthStore, _scrypt_hash, check_password,
                                             hash_password)
from etcdadapter.security.authorizer import Authorizer, token_of
from etcdadapter.security.cert_policy import CertPolicy
from etcdadapter.security.peer import PeerIdentity
from etcdadapter.services.auth import AuthService
from etcdadapter.services.identity import ServerIdentity
from etcdadapter.services.kv import KVService
from etcdadapter.services.rpc import CallContext
from etcdadapter.store.memory import MemoryStore

from support import servers
from support.auth import (cn_server, enable_cn_users, grpc_call,  # noqa: F401 (cn_server)
                          http_post, setup_steps, user_tokens)
from support.fired import error_of, result
from support.tls import client_creds, https_post, pki, tls_grpc  # noqa: F401 (pki: a fixture)

C = errors.StatusCode


def _sync(fn, *args):
    return defer.maybeDeferred(fn, *args)


class World(object):
    """A memory store, an AuthStore on a fake clock, the Auth and KV services."""

    def __init__(self, store=None, clock=None, policy=None, cert_users=False, ttl=300.0):
        self.clock = clock or task.Clock()
        self.store = store or MemoryStore(initial_revision=1, clock=self.clock)
        self.auth = AuthStore(self.store, clock=self.clock, token_ttl=ttl,
                              run_in_thread=_sync, refresh_interval=0)
        result(self.auth.start())
        self.authz = Authorizer(policy, auth=self.auth, cert_users=cert_users)
        self.identity = ServerIdentity()
        self.svc = AuthService(self.auth, self.authz, self.store, self.identity)
        self.kv = KVService(self.store, self.identity, authz=self.authz)

    def ctx(self, token=None, key="token", peer=None):
        return CallContext(metadata={key: token} if token else {}, peer_identity=peer)

    def call(self, name, request, token=None, **kw):
        return result(defer.maybeDeferred(getattr(self.svc, name), request,
                                          self.ctx(token, **kw)))

    def fail(self, name, request, token=None, **kw):
        return error_of(defer.maybeDeferred(getattr(self.svc, name), request,
                                            self.ctx(token, **kw)))

    def login(self, name, password):
        return self.call("Authenticate", rpc.AuthenticateRequest(
            name=name, password=password)).token

    def setup(self):
        """root:pw (role root), alice:apw with role r1 = readwrite /a/ prefix, read /b."""
        c = self.call
        c("UserAdd", rpc.AuthUserAddRequest(name="root", password="pw"))
        c("UserAdd", rpc.AuthUserAddRequest(name="alice", password="apw"))
        c("RoleAdd", rpc.AuthRoleAddRequest(name="r1"))
        c("RoleGrantPermission", rpc.AuthRoleGrantPermissionRequest(
            name="r1", perm=authpb.Permission(key=b"/a/", range_end=b"/a0",
                                              permType=authpb.Permission.READWRITE)))
        c("RoleGrantPermission", rpc.AuthRoleGrantPermissionRequest(
            name="r1", perm=authpb.Permission(key=b"/b", permType=authpb.Permission.READ)))
        c("UserGrantRole", rpc.AuthUserGrantRoleRequest(user="alice", role="r1"))
        c("UserGrantRole", rpc.AuthUserGrantRoleRequest(user="root", role="root"))
        c("AuthEnable", rpc.AuthEnableRequest())
        return self.login("root", "pw"), self.login("alice", "apw")


def _err(e):
    return (e.code, e.message)


# ---------------------------------------------------------------------------------------
# Unit: the service and its errors

def test_enable_needs_root_user_with_root_role():
    w = World()
    assert _err(w.fail("AuthEnable", rpc.AuthEnableRequest())) == (
        C.FAILED_PRECONDITION, "etcdserver: root user does not exist")
    w.call("UserAdd", rpc.AuthUserAddRequest(name="root", password="pw"))
    assert _err(w.fail("AuthEnable", rpc.AuthEnableRequest())) == (
        C.FAILED_PRECONDITION, "etcdserver: root user does not have root role")
    assert _err(w.fail("Authenticate", rpc.AuthenticateRequest(name="root", password="pw"))) \
        == (C.FAILED_PRECONDITION, "etcdserver: authentication is not enabled")
    # role root needs not exist to be granted (etcd)
    w.call("UserGrantRole", rpc.AuthUserGrantRoleRequest(user="root", role="root"))
    w.call("AuthEnable", rpc.AuthEnableRequest())
    root = w.login("root", "pw")
    w.call("AuthEnable", rpc.AuthEnableRequest(), root)         # twice: no-op
    assert w.call("AuthStatus", rpc.AuthStatusRequest(), root).enabled


def test_every_management_error():
    w = World()
    root, alice = w.setup()
    E = rpc
    cases = [
        ("UserAdd", E.AuthUserAddRequest(name="", password="x"),
         (C.INVALID_ARGUMENT, "etcdserver: user name is empty")),
        ("UserAdd", E.AuthUserAddRequest(name="alice", password="x"),
         (C.FAILED_PRECONDITION, "etcdserver: user name already exists")),
        ("UserGet", E.AuthUserGetRequest(name="zz"),
         (C.FAILED_PRECONDITION, "etcdserver: user name not found")),
        ("UserDelete", E.AuthUserDeleteRequest(name=""),
         (C.FAILED_PRECONDITION, "etcdserver: user name not found")),
        ("UserDelete", E.AuthUserDeleteRequest(name="root"),
         (C.INVALID_ARGUMENT, "etcdserver: invalid auth management")),
        ("UserChangePassword", E.AuthUserChangePasswordRequest(name="zz", password="x"),
         (C.FAILED_PRECONDITION, "etcdserver: user name not found")),
        ("UserGrantRole", E.AuthUserGrantRoleRequest(user="zz", role="r1"),
         (C.FAILED_PRECONDITION, "etcdserver: user name not found")),
        ("UserGrantRole", E.AuthUserGrantRoleRequest(user="alice", role="nope"),
         (C.FAILED_PRECONDITION, "etcdserver: role name not found")),
        ("UserRevokeRole", E.AuthUserRevokeRoleRequest(name="alice", role="nope"),
         (C.FAILED_PRECONDITION, "etcdserver: role is not granted to the user")),
        ("UserRevokeRole", E.AuthUserRevokeRoleRequest(name="zz", role="r1"),
         (C.FAILED_PRECONDITION, "etcdserver: user name not found")),
        ("UserRevokeRole", E.AuthUserRevokeRoleRequest(name="root", role="root"),
         (C.INVALID_ARGUMENT, "etcdserver: invalid auth management")),
        ("RoleAdd", E.AuthRoleAddRequest(name=""),
         (C.INVALID_ARGUMENT, "etcdserver: role name is empty")),
        ("RoleAdd", E.AuthRoleAddRequest(name="r1"),
         (C.FAILED_PRECONDITION, "etcdserver: role name already exists")),
        ("RoleGet", E.AuthRoleGetRequest(role="nope"),
         (C.FAILED_PRECONDITION, "etcdserver: role name not found")),
        ("RoleDelete", E.AuthRoleDeleteRequest(role="root"),
         (C.INVALID_ARGUMENT, "etcdserver: invalid auth management")),
        ("RoleDelete", E.AuthRoleDeleteRequest(role="nope"),
         (C.FAILED_PRECONDITION, "etcdserver: role name not found")),
        ("RoleGrantPermission", E.AuthRoleGrantPermissionRequest(name="r1"),
         (C.INVALID_ARGUMENT, "etcdserver: permission not given")),
        ("RoleGrantPermission", E.AuthRoleGrantPermissionRequest(
            name="nope", perm=authpb.Permission(key=b"k")),
         (C.FAILED_PRECONDITION, "etcdserver: role name not found")),
        ("RoleRevokePermission", E.AuthRoleRevokePermissionRequest(role="r1", key=b"zz"),
         (C.FAILED_PRECONDITION, "etcdserver: permission is not granted to the role")),
        ("RoleRevokePermission", E.AuthRoleRevokePermissionRequest(role="nope", key=b"k"),
         (C.FAILED_PRECONDITION, "etcdserver: role name not found")),
        ("Authenticate", E.AuthenticateRequest(name="alice", password="wrong"),
         (C.INVALID_ARGUMENT,
          "etcdserver: authentication failed, invalid user ID or password")),
        ("Authenticate", E.AuthenticateRequest(name="nobody", password="x"),
         (C.INVALID_ARGUMENT,
          "etcdserver: authentication failed, invalid user ID or password")),
    ]
    for name, request, expected in cases:
        assert _err(w.fail(name, request, root)) == expected, (name, request)
    # Admin calls: no token, a non-root user, a stale token.
    for name, request in (("UserList", E.AuthUserListRequest()),
                          ("RoleList", E.AuthRoleListRequest()),
                          ("AuthDisable", E.AuthDisableRequest()),
                          ("AuthStatus", E.AuthStatusRequest()),
                          ("UserAdd", E.AuthUserAddRequest(name="x", password="y")),
                          ("UserGet", E.AuthUserGetRequest(name="root")),
                          ("RoleGet", E.AuthRoleGetRequest(role="root"))):
        assert _err(w.fail(name, request)) == (
            C.INVALID_ARGUMENT, "etcdserver: user name is empty"), name
        assert _err(w.fail(name, request, alice)) == (
            C.PERMISSION_DENIED, "etcdserver: permission denied"), name
        assert _err(w.fail(name, request, "bogus.1")) == (
            C.UNAUTHENTICATED, "etcdserver: invalid auth token"), name
    # ...but one may read oneself and one's own roles.
    assert list(w.call("UserGet", E.AuthUserGetRequest(name="alice"), alice).roles) == ["r1"]
    assert len(w.call("RoleGet", E.AuthRoleGetRequest(role="r1"), alice).perm) == 2


def test_lists_sorted_permissions_sorted_and_revisions():
    w = World()
    root, _ = w.setup()
    kv_revision = w.store.revision
    rev = w.call("AuthStatus", rpc.AuthStatusRequest(), root).authRevision
    for name in ("zed", "bob", "carl"):
        w.call("UserAdd", rpc.AuthUserAddRequest(name=name, password="p"), root)
        w.call("RoleAdd", rpc.AuthRoleAddRequest(name="role-" + name), root)
    assert list(w.call("UserList", rpc.AuthUserListRequest(), root).users) == [
        "alice", "bob", "carl", "root", "zed"]
    assert list(w.call("RoleList", rpc.AuthRoleListRequest(), root).roles) == [
        "r1", "role-bob", "role-carl", "role-zed"]
    w.call("UserGrantRole", rpc.AuthUserGrantRoleRequest(user="bob", role="role-zed"), root)
    w.call("UserGrantRole", rpc.AuthUserGrantRoleRequest(user="bob", role="r1"), root)
    assert list(w.call("UserGet", rpc.AuthUserGetRequest(name="bob"), root).roles) == [
        "r1", "role-zed"]
    # grant again: no-op, no new auth revision
    before = w.auth.revision
    w.call("UserGrantRole", rpc.AuthUserGrantRoleRequest(user="bob", role="r1"), root)
    assert w.auth.revision == before
    grant = rpc.AuthRoleGrantPermissionRequest(
        name="r1", perm=authpb.Permission(key=b"/0", range_end=b"\0",
                                          permType=authpb.Permission.WRITE))
    w.call("RoleGrantPermission", grant, root)
    # the same key and range end again: updated in place
    grant.perm.permType = authpb.Permission.READWRITE
    w.call("RoleGrantPermission", grant, root)
    perms = w.call("RoleGet", rpc.AuthRoleGetRequest(role="r1"), root).perm
    assert [(p.key, p.range_end, p.permType) for p in perms] == [
        (b"/0", b"\0", 2), (b"/a/", b"/a0", 2), (b"/b", b"", 0)]
    # deleting a role revokes it from its users
    w.call("RoleDelete", rpc.AuthRoleDeleteRequest(role="role-zed"), root)
    assert list(w.call("UserGet", rpc.AuthUserGetRequest(name="bob"), root).roles) == ["r1"]
    assert w.auth.revision > rev
    assert w.call("AuthStatus", rpc.AuthStatusRequest(), root).header.revision == kv_revision
    assert w.store.revision == kv_revision              # never the KV revision
    w.call("AuthDisable", rpc.AuthDisableRequest(), root)
    status = w.call("AuthStatus", rpc.AuthStatusRequest())
    assert not status.enabled and status.authRevision == w.auth.revision


def test_tokens_format_sliding_ttl_and_invalidation():
    clock = task.Clock()
    w = World(clock=clock, ttl=300)
    root, alice = w.setup()
    head, dot, index = alice.partition(".")
    assert len(head) == 16 and head.isalpha() and dot and index.isdigit()
    get = rpc.RangeRequest(key=b"/a/x")
    for _ in range(3):                         # each use restarts the 300 s
        clock.advance(250)
        result(w.kv.Range(get, w.ctx(alice)))
    clock.advance(301)
    assert _err(error_of(defer.maybeDeferred(w.kv.Range, get, w.ctx(alice)))) == (
        C.UNAUTHENTICATED, "etcdserver: invalid auth token")
    # change password and delete drop the user's tokens; disable drops all
    root, alice = w.login("root", "pw"), w.login("alice", "apw")
    w.call("UserChangePassword", rpc.AuthUserChangePasswordRequest(
        name="alice", password="new"), root)
    assert w.auth.user_of_token(alice) is None
    assert _err(w.fail("Authenticate", rpc.AuthenticateRequest(
        name="alice", password="apw"))) == (
        C.INVALID_ARGUMENT, "etcdserver: authentication failed, invalid user ID or password")
    alice = w.login("alice", "new")
    w.call("UserRevokeRole", rpc.AuthUserRevokeRoleRequest(name="alice", role="r1"), root)
    assert w.auth.user_of_token(alice) == "alice"
    w.call("UserDelete", rpc.AuthUserDeleteRequest(name="alice"), root)
    assert w.auth.user_of_token(alice) is None
    w.call("AuthDisable", rpc.AuthDisableRequest(), root)
    assert w.auth.user_of_token(root) is None
    # a stale token is refused even with auth disabled (etcd)
    assert _err(error_of(defer.maybeDeferred(w.kv.Range, get, w.ctx(root)))) == (
        C.UNAUTHENTICATED, "etcdserver: invalid auth token")
    result(w.kv.Range(get, w.ctx()))


def test_enforcement_on_kv():
    w = World()
    root, alice = w.setup()

    def kv(method, request, token=None, **kw):
        d = defer.maybeDeferred(getattr(w.kv, method), request, w.ctx(token, **kw))
        out = []
        d.addBoth(out.append)
        if isinstance(out[0], Failure):
            return _err(out[0].value)
        return "ok"

    put = rpc.PutRequest(key=b"/a/1", value=b"v")
    assert kv("Put", put) == (C.INVALID_ARGUMENT, "etcdserver: user name is empty")
    assert kv("Put", put, "bogus") == (C.UNAUTHENTICATED, "etcdserver: invalid auth token")
    assert kv("Put", put, alice) == "ok"
    assert kv("Put", put, alice, key="authorization") == "ok"
    assert kv("Put", put, "Bearer " + alice, key="authorization") == "ok"
    assert kv("Put", rpc.PutRequest(key=b"/b", value=b"v"), alice) == (
        C.PERMISSION_DENIED, "etcdserver: permission denied")
    assert kv("Range", rpc.RangeRequest(key=b"/b"), alice) == "ok"
    assert kv("Range", rpc.RangeRequest(key=b"/a/", range_end=b"/b"), alice) == (
        C.PERMISSION_DENIED, "etcdserver: permission denied")
    assert kv("Txn", rpc.TxnRequest()) == "ok"          # nothing to check (etcd too)
    assert kv("Compact", rpc.CompactionRequest(revision=1), alice) == (
        C.PERMISSION_DENIED, "etcdserver: permission denied")
    assert kv("Compact", rpc.CompactionRequest(revision=1)) == (
        C.INVALID_ARGUMENT, "etcdserver: user name is empty")
    assert kv("Compact", rpc.CompactionRequest(revision=1), root) == "ok"
    assert kv("Put", rpc.PutRequest(key=b"/zzz"), root) == "ok"


def test_watch_and_lease_views():
    w = World()
    root, alice = w.setup()
    watch = w.authz.for_watch()
    assert watch.enabled
    assert not watch.permissions(w.ctx()).can_read(b"/a/1")
    assert not watch.permissions(w.ctx("bogus")).can_read(b"/a/1")
    assert watch.permissions(w.ctx(alice)).can_read(b"/a/1")
    assert watch.cancel_reason(w.ctx(alice), b"/a/1", b"") is None
    assert watch.cancel_reason(w.ctx(alice), b"/c", b"") == perm.WATCH_PERMISSION_DENIED
    assert watch.cancel_reason(w.ctx(), b"/c", b"") == (
        "rpc error: code = InvalidArgument desc = etcdserver: user name is empty")
    assert watch.cancel_reason(w.ctx("bogus"), b"/c", b"") == (
        "rpc error: code = Unauthenticated desc = etcdserver: invalid auth token")
    lease = w.authz.for_lease()
    anonymous = lease.permissions(w.ctx())
    assert anonymous.admin is False                    # a lease without keys: allowed
    with pytest.raises(errors.EtcdError) as info:
        anonymous.can_write(b"/a/1")
    assert info.value == errors.ErrUserEmpty
    assert lease.permissions(w.ctx(root)).admin


def test_client_certificate_cn_and_policy():
    policy = CertPolicy.from_json({"rules": [
        {"match": {"cn": "alice"},
         "permissions": [{"key": "/a/1", "type": "READ"}]},
        {"match": {"cn": "root"}, "permissions": "all"}], "default": "deny"})
    w = World(policy=policy, cert_users=True)
    # set up without the policy in the way
    w.authz.cert_policy = None
    w.setup()
    w.authz.cert_policy = policy
    alice_cert = PeerIdentity("alice", (), (), ())
    ctx = w.ctx(peer=alice_cert)
    perms = w.authz.permissions(ctx)                  # the CN is the user
    assert perms.can_read(b"/a/1")
    assert not perms.can_write(b"/a/1")              # the policy allows only reading
    assert not perms.can_read(b"/a/2")               # ... only /a/1
    assert _err(w.fail("UserList", rpc.AuthUserListRequest(), peer=alice_cert)) == (
        C.PERMISSION_DENIED, "etcdserver: permission denied")
    root_cert = PeerIdentity("root", (), (), ())
    assert w.call("UserList", rpc.AuthUserListRequest(), peer=root_cert).users
    # a token wins over the certificate
    bob = PeerIdentity("bob", (), (), ())
    assert not w.authz.permissions(w.ctx(peer=bob)).can_read(b"/a/1")
    assert w.authz.user_of(w.ctx(w.login("alice", "apw"), peer=bob)) == "alice"


def test_token_metadata():
    assert token_of({"token": "t"}) == "t"
    assert token_of({"authorization": "t"}) == "t"
    assert token_of({"authorization": "Bearer t"}) == "t"
    assert token_of({"token": "a", "authorization": "b"}) == "a"
    assert token_of({}) is None


def test_state_is_shared_through_the_store_without_plain_passwords():
    clock = task.Clock()
    store = MemoryStore(initial_revision=1, clock=clock)
    one = World(store=store, clock=clock)
    one.setup()
    two = World(store=store, clock=clock)             # a second adapter on the same data
    assert two.auth.enabled
    token = two.login("alice", "apw")
    assert two.auth.user_of_token(token) == "alice"
    assert one.auth.user_of_token(token) == "alice"   # signed: every adapter knows it
    blob = result(store.auth_load())
    assert b"apw" not in blob and b"pw\"" not in blob
    doc = json.loads(blob)
    assert doc["users"]["alice"]["password"].startswith("$2a$10$")     # etcd's bcrypt
    assert doc["roles"]["r1"][0]["key"] == base64.b64encode(b"/a/").decode()
    # a mutation through one adapter is seen by the other after its refresh
    root = one.login("root", "pw")
    one.call("UserAdd", rpc.AuthUserAddRequest(name="dave", password="d"), root)
    result(two.auth.refresh())
    assert "dave" in two.auth.state.users


def test_tokens_from_another_adapter():
    """A token is accepted by an adapter that has not seen it if it is genuine and was
    issued within the TTL; from then on it slides there on its own.  Password changes,
    user deletion and AuthDisable reach every adapter."""
    clock = task.Clock()
    clock.advance(1.8e9)                               # tokens carry wall-clock times
    store = MemoryStore(initial_revision=1, clock=clock)
    a = World(store=store, clock=clock, ttl=300)
    root, alice = a.setup()
    b = World(store=store, clock=clock, ttl=300)
    get = rpc.RangeRequest(key=b"/a/x")
    invalid = (C.UNAUTHENTICATED, "etcdserver: invalid auth token")

    def on(world, token):
        failed = []
        defer.maybeDeferred(world.kv.Range, get, world.ctx(token)).addErrback(
            failed.append)
        return _err(failed[0].value) if failed else "ok"

    clock.advance(299)
    assert on(b, alice) == "ok"                        # 299 s old: first seen, accepted
    clock.advance(299)
    assert on(b, alice) == "ok"                        # and sliding on b
    assert on(a, alice) == invalid                     # a: unused for 598 s
    late = a.login("alice", "apw")
    clock.advance(301)
    assert on(b, late) == invalid                      # never seen by b, 301 s old
    # Forged, garbled, truncated, someone else's name under alice's MAC.
    fresh = a.login("alice", "apw")
    head, _, digits = fresh.partition(".")
    payload = int(digits).to_bytes((int(digits).bit_length() + 7) // 8, "big")
    as_root = int.from_bytes(payload.replace(b"alice", b"root"), "big")
    forged = auth_tokens.issue(b"k" * 32, "root", a.auth.state.password_of("root"),
                               int(clock.seconds() * 1000), 1)
    for bad in (head.swapcase() + "." + digits, head + "." + digits[:-1] + "0",
                "%s.%d" % (head, as_root), forged, head + ".1", "garbage", head,
                "\u00e9" * 16 + "." + digits, "x" * 1000):
        assert on(b, bad) == invalid, bad
    assert on(b, fresh) == "ok"
    # A password change on a: the token no longer verifies, on b as well, even where
    # it was never seen.
    unseen = a.login("alice", "apw")
    root = a.login("root", "pw")
    a.call("UserChangePassword", rpc.AuthUserChangePasswordRequest(
        name="alice", password="new"), root)
    result(b.auth.refresh())
    assert on(b, fresh) == invalid and on(b, unseen) == invalid
    # Disabled and enabled again on a: b forgets every token it had.
    alice = a.login("alice", "new")
    assert on(b, alice) == "ok"
    a.call("AuthDisable", rpc.AuthDisableRequest(), root)
    a.call("AuthEnable", rpc.AuthEnableRequest())
    result(b.auth.refresh())
    assert b.auth.enabled and on(b, alice) == invalid
    # A state saved without a secret (an older adapter): Authenticate makes one.
    doc = json.loads(result(store.auth_load()))
    doc["token_secret"] = None
    result(store.auth_save(json.dumps(doc).encode()))
    alice = b.login("alice", "new")
    assert on(b, alice) == "ok"
    assert on(a, alice) == invalid                     # until a reads the new secret
    result(a.auth.refresh())
    assert on(a, alice) == "ok"


def test_auth_token_ttl_option():
    from etcdadapter.tap import Options
    options = Options()
    options.parseOptions(["--auth-token-ttl", "5m"])
    assert options.config().auth_token_ttl == 300.0
    options = Options()
    options.parseOptions([])
    assert options.config().auth_token_ttl == 300.0


def test_password_kdf():
    stored = hash_password("s3cret")
    assert stored.startswith("$2a$10$") and "s3cret" not in stored     # as etcd 3.4
    assert check_password("s3cret", stored)
    assert not check_password("s3cret!", stored)
    assert not check_password("x", "garbage")
    assert hash_password("s3cret") != stored          # salted
    # As etcd 3.4.23 (Go's bcrypt): bytes beyond the 72nd do not count.
    stored = hash_password("p" * 80)
    assert check_password("p" * 72 + "q" * 8, stored) and not check_password("p" * 71, stored)
    # scrypt hashes of older adapters still check.
    old = _scrypt_hash("s3cret")
    assert old.startswith("scrypt$") and check_password("s3cret", old)
    assert not check_password("s3cret!", old)


def test_kdf_runs_off_the_reactor_thread(monkeypatch):
    """Hashing and checking go through run_in_thread, by default deferToThread."""
    seen = []

    def in_real_thread(fn, *args):
        out = []

        def run():
            seen.append((fn.__name__, threading.current_thread()))
            out.append(fn(*args))
        t = threading.Thread(target=run)
        t.start()
        t.join()
        return defer.succeed(out[0])

    w = World()
    w.auth.run_in_thread = in_real_thread
    w.setup()
    names = {name for name, _ in seen}
    assert names == {"hash_password", "check_password"}
    assert all(t is not threading.main_thread() for _, t in seen)
    calls = []
    monkeypatch.setattr(auth_store_module.threads, "deferToThread",
                        lambda fn, *a: calls.append(fn) or defer.succeed("h"))
    store = AuthStore(MemoryStore(initial_revision=1, clock=task.Clock()),
                      clock=task.Clock())
    assert result(store.hash_password("x")) == "h"
    assert calls == [hash_password]


# ---------------------------------------------------------------------------------------
# gRPC and HTTP against a real etcd 3.4


def _run_both(pair, steps):
    sides = [pair.etcd, pair.target]
    tokens = [{}, {}]
    for n, (method, request, who) in enumerate(steps):
        service, _, name = method.rpartition(".")
        service = service or "Auth"
        got = []
        for i, server in enumerate(sides):
            if who == "login":
                tokens[i] = user_tokens(server)
                got.append("login")
                continue
            token = tokens[i].get(who, who)
            got.append(grpc_call(server, service, name, request, token,
                             pair.offset if i else 0))
        assert got[0] == got[1], "step %d %s(%s) as %s: etcd %r, ours %r" % (
            n, method, request, who, got[0], got[1])


@pytest.mark.adapter
def test_grpc_errors_match_etcd(pair):
    P = authpb.Permission
    R = rpc
    steps = setup_steps() + [("login", None, "login")] + [
        ("KV.Range", R.RangeRequest(key=b"/a/x"), None),
        ("KV.Range", R.RangeRequest(key=b"/a/x"), "bogus"),
        ("KV.Range", R.RangeRequest(key=b"/a/x"), "alice"),
        ("KV.Put", R.PutRequest(key=b"/a/x", value=b"1"), "alice"),
        ("KV.Put", R.PutRequest(key=b"/b", value=b"1"), "alice"),
        ("KV.Put", R.PutRequest(key=b"/b", value=b"1"), None),
        ("KV.Range", R.RangeRequest(key=b"/a/", range_end=b"/a0"), "alice"),
        ("KV.Range", R.RangeRequest(key=b"/", range_end=b"\0"), "alice"),
        ("KV.Txn", R.TxnRequest(), None),
        ("KV.Txn", R.TxnRequest(success=[R.RequestOp(request_put=R.PutRequest(
            key=b"/a/y"))]), "alice"),
        ("KV.Txn", R.TxnRequest(compare=[R.Compare(key=b"/c")]), "alice"),
        # A range ending before its key: allowed only with permission on the key.
        ("KV.Range", R.RangeRequest(key=b"/z", range_end=b"/a"), "alice"),
        ("KV.Range", R.RangeRequest(key=b"/z", range_end=b"/z"), "alice"),
        ("KV.Range", R.RangeRequest(key=b"/a/5", range_end=b"/a/1"), "alice"),
        ("KV.Range", R.RangeRequest(key=b"/a/5", range_end=b"/a/5"), "alice"),
        # (not [/b, /a): etcd's interval tree refuses it although /b may be read; we
        # answer it, empty -- test_permissions)
        ("KV.DeleteRange", R.DeleteRangeRequest(key=b"/b", range_end=b"/a"), "alice"),
        ("KV.DeleteRange", R.DeleteRangeRequest(key=b"/a/5", range_end=b"/a/1"), "alice"),
        ("KV.Txn", R.TxnRequest(compare=[R.Compare(key=b"/z", range_end=b"/a")]),
         "alice"),
        # A put may attach a lease only if the caller may write the lease's keys.
        ("Lease.LeaseGrant", R.LeaseGrantRequest(ID=7001, TTL=600), None),
        ("KV.Put", R.PutRequest(key=b"/secret", value=b"s", lease=7001), "root"),
        ("KV.Put", R.PutRequest(key=b"/a/l", value=b"1", lease=7001), "alice"),
        ("KV.Put", R.PutRequest(key=b"/a/l", value=b"1", lease=7001), None),
        ("Lease.LeaseGrant", R.LeaseGrantRequest(ID=7002, TTL=600), None),
        ("KV.Put", R.PutRequest(key=b"/a/l", value=b"1", lease=7002), "alice"),
        ("KV.Put", R.PutRequest(key=b"/a/m", value=b"1", lease=7002), "alice"),
        ("KV.Put", R.PutRequest(key=b"/a/n", value=b"1", lease=4242), "alice"),
        ("KV.Put", R.PutRequest(key=b"/b", value=b"1", lease=7002), "alice"),
        ("Maintenance.Status", R.StatusRequest(), None),
        ("Lease.LeaseGrant", R.LeaseGrantRequest(TTL=60), None),
        ("Authenticate", R.AuthenticateRequest(name="alice", password="x"), None),
        ("Authenticate", R.AuthenticateRequest(name="", password=""), None),
        ("UserAdd", R.AuthUserAddRequest(name="x", password="y"), None),
        ("UserAdd", R.AuthUserAddRequest(name="x", password="y"), "alice"),
        ("UserAdd", R.AuthUserAddRequest(name="x", password="y"), "bogus"),
        ("UserAdd", R.AuthUserAddRequest(name="", password="y"), "root"),
        ("UserAdd", R.AuthUserAddRequest(name="alice", password="y"), "root"),
        ("UserAdd", R.AuthUserAddRequest(name="e", password=""), "root"),
        ("Authenticate", R.AuthenticateRequest(name="e", password=""), None),
        ("UserList", R.AuthUserListRequest(), "root"),
        ("UserList", R.AuthUserListRequest(), "alice"),
        ("UserGet", R.AuthUserGetRequest(name="alice"), "alice"),
        ("UserGet", R.AuthUserGetRequest(name="root"), "alice"),
        ("UserGet", R.AuthUserGetRequest(name=""), "root"),
        ("UserDelete", R.AuthUserDeleteRequest(name="root"), "root"),
        ("UserDelete", R.AuthUserDeleteRequest(name="zz"), "root"),
        ("UserChangePassword", R.AuthUserChangePasswordRequest(name="zz", password="x"),
         "root"),
        ("UserGrantRole", R.AuthUserGrantRoleRequest(user="e", role="nope"), "root"),
        ("UserGrantRole", R.AuthUserGrantRoleRequest(user="zz", role="r1"), "root"),
        ("UserGrantRole", R.AuthUserGrantRoleRequest(user="alice", role="r1"), "root"),
        ("UserRevokeRole", R.AuthUserRevokeRoleRequest(name="e", role="r1"), "root"),
        ("UserRevokeRole", R.AuthUserRevokeRoleRequest(name="zz", role="r1"), "root"),
        ("UserRevokeRole", R.AuthUserRevokeRoleRequest(name="root", role="root"), "root"),
        ("RoleAdd", R.AuthRoleAddRequest(name=""), "root"),
        ("RoleAdd", R.AuthRoleAddRequest(name="r1"), "root"),
        ("RoleAdd", R.AuthRoleAddRequest(name="r0"), "root"),
        ("RoleList", R.AuthRoleListRequest(), "root"),
        ("RoleGet", R.AuthRoleGetRequest(role="r1"), "alice"),
        ("RoleGet", R.AuthRoleGetRequest(role="root"), "alice"),
        ("RoleGet", R.AuthRoleGetRequest(role="root"), "root"),
        ("RoleGet", R.AuthRoleGetRequest(role=""), "root"),
        ("RoleDelete", R.AuthRoleDeleteRequest(role="root"), "root"),
        ("RoleDelete", R.AuthRoleDeleteRequest(role="nope"), "root"),
        ("RoleGrantPermission", R.AuthRoleGrantPermissionRequest(
            name="nope", perm=P(key=b"k")), "root"),
        ("RoleGrantPermission", R.AuthRoleGrantPermissionRequest(
            name="r1", perm=P(key=b"/0", range_end=b"\0", permType=P.WRITE)), "root"),
        ("RoleGrantPermission", R.AuthRoleGrantPermissionRequest(
            name="r1", perm=P(key=b"/b", permType=P.READWRITE)), "root"),
        ("RoleGet", R.AuthRoleGetRequest(role="r1"), "root"),
        ("RoleRevokePermission", R.AuthRoleRevokePermissionRequest(role="r1", key=b"zz"),
         "root"),
        ("RoleRevokePermission", R.AuthRoleRevokePermissionRequest(role="no", key=b"zz"),
         "root"),
        ("RoleRevokePermission", R.AuthRoleRevokePermissionRequest(
            role="r1", key=b"/0", range_end=b"\0"), "root"),
        ("KV.Put", R.PutRequest(key=b"/b", value=b"2"), "alice"),
        ("RoleDelete", R.AuthRoleDeleteRequest(role="r1"), "root"),
        ("UserGet", R.AuthUserGetRequest(name="alice"), "root"),
        ("UserChangePassword", R.AuthUserChangePasswordRequest(name="alice", password="n"),
         "root"),
        ("KV.Range", R.RangeRequest(key=b"/a/x"), "alice"),         # token dropped
        ("AuthDisable", R.AuthDisableRequest(), None),
        ("AuthDisable", R.AuthDisableRequest(), "root"),
        ("KV.Range", R.RangeRequest(key=b"/a/x"), "root"),          # token dropped
        ("KV.Range", R.RangeRequest(key=b"/a/x"), None),
        ("Authenticate", R.AuthenticateRequest(name="root", password="pw"), None),
        ("AuthDisable", R.AuthDisableRequest(), None),
        ("UserList", R.AuthUserListRequest(), None),
        ("UserDelete", R.AuthUserDeleteRequest(name="root"), None),
        ("RoleDelete", R.AuthRoleDeleteRequest(role="root"), None),
        ("UserList", R.AuthUserListRequest(), None),
        ("RoleList", R.AuthRoleListRequest(), None),
    ]
    _run_both(pair, steps)


def _http_watch_first(server, body, token):
    """The first line of a /v3/watch stream, without header and watch_id."""
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("POST", "/v3/watch", body=json.dumps(body).encode(),
                 headers={"Authorization": token} if token else {})
    resp = conn.getresponse()
    data = b""
    while not data.endswith(b"\n"):
        data += resp.read(1)
    conn.close()
    doc = json.loads(data)
    doc["result"].pop("header", None)
    doc["result"].pop("watch_id", None)
    return resp.status, doc


@pytest.mark.adapter
def test_http_gateway_matches_etcd(pair):
    for server in (pair.etcd, pair.target):
        for method, request, _ in setup_steps():
            grpc_call(server, "Auth", method, request, None)
    results = []
    for server in (pair.etcd, pair.target):
        out = []
        status, doc = http_post(server, "/v3/auth/authenticate", {"name": "alice",
                                                              "password": "apw"})
        alice = doc["token"]
        out.append((status, sorted(doc)))
        out.append(http_post(server, "/v3/auth/authenticate", {"name": "alice",
                                                           "password": "bad"}))
        out.append(http_post(server, "/v3/kv/put", {"key": "L2EvMQ==", "value": "eA=="}))
        out.append(http_post(server, "/v3/kv/put", {"key": "L2EvMQ==", "value": "eA=="},
                             alice))
        out.append(http_post(server, "/v3/kv/range", {"key": "L2EvMQ=="}, "bogus"))
        out.append(http_post(server, "/v3/kv/range", {"key": "L2M="}, alice))
        out.append(http_post(server, "/v3/kv/range", {"key": "L2EvMQ=="}, alice,
                         header="Grpc-Metadata-Token"))
        out.append(http_post(server, "/v3/auth/user/list", {}, alice))
        out.append(http_post(server, "/v3/auth/role/get", {"role": "r1"}, alice))
        out.append(http_post(server, "/v3/auth/user/get", {"name": "alice"}, alice))
        out.append(_http_watch_first(server, {"create_request": {"key": "L2M="}}, alice))
        out.append(_http_watch_first(server, {"create_request": {"key": "L2EvMQ=="}}, alice))
        # A watch whose range ends before its key, as a Range (issue 12): refused without
        # permission on the key (/z .. /a), "watcher range is empty" with it (/a/5 .. /a/1).
        for key, end in (("L3o=", "L2E="), ("L2EvNQ==", "L2EvMQ==")):
            out.append(_http_watch_first(server, {"create_request": {
                "key": key, "range_end": end}}, alice))
        # No user / a bad token: etcd names that error in cancel_reason.
        for token, reason in ((None, "InvalidArgument desc = etcdserver: user name is "
                                     "empty"),
                              ("bogus", "Unauthenticated desc = etcdserver: invalid auth "
                                        "token")):
            status, doc = _http_watch_first(server, {"create_request": {"key": "L2M="}},
                                            token)
            said = doc["result"].pop("cancel_reason")
            assert said == "rpc error: code = " + reason, server
            out.append((status, doc))
        results.append(out)
    ref, got = results
    for a, b in zip(ref, got):
        if isinstance(a[1], dict) and "kvs" in a[1]:
            for kv in a[1]["kvs"] + b[1]["kvs"]:
                kv.pop("create_revision"), kv.pop("mod_revision")
        assert a == b
    # ours only: the 3.5 AuthStatus and a "Bearer " token (3.5.32+)
    status, doc = http_post(pair.target, "/v3/auth/authenticate", {"name": "root",
                                                               "password": "pw"})
    root = doc["token"]
    assert http_post(pair.target, "/v3/auth/status", {}, "Bearer " + root) == (
        200, {"enabled": True, "authRevision": "8"})
    assert http_post(pair.target, "/v3/auth/status", {}) == (
        400, {"error": "etcdserver: user name is empty", "code": 3,
              "message": "etcdserver: user name is empty"})


def _http_headers(server, path, body, headers):
    """POST with ``headers`` as given, names repeated -> (status, JSON without header)."""
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    data = json.dumps(body).encode()
    conn.putrequest("POST", path)
    for name, value in list(headers) + [("Content-Length", str(len(data)))]:
        conn.putheader(name, value)
    conn.endheaders(data)
    resp = conn.getresponse()
    doc = json.loads(resp.read())
    conn.close()
    doc.pop("header", None)
    return resp.status, doc


@pytest.mark.adapter
def test_a_repeated_token_header_the_first_counts(pair):
    """etcd reads the first value of a repeated token/authorization (gRPC metadata keeps
    them all; Go's Header.Get and the gateway take the first); we took the last."""
    for server in (pair.etcd, pair.target):
        for method, request, _ in setup_steps():
            grpc_call(server, "Auth", method, request, None)
    R = rpc.RangeRequest(key=b"/a/x")
    results = []
    for server in (pair.etcd, pair.target):
        alice = user_tokens(server)["alice"]
        out = []
        for key in ("token", "authorization"):
            for first, second in ((alice, "bogus"), ("bogus", alice)):
                out.append(grpc_call(server, "KV", "Range", R, None,
                                 metadata=[(key, first), (key, second)]))
        for name in ("Authorization", "Grpc-Metadata-Token"):
            for first, second in ((alice, "bogus"), ("bogus", alice)):
                out.append(_http_headers(server, "/v3/kv/range", {"key": "L2EveA=="},
                                         [(name, first), (name, second)]))
        results.append(out)
    ref, got = results
    invalid = ("error", "UNAUTHENTICATED", "etcdserver: invalid auth token")
    ranged = ("ok", rpc.RangeResponse().SerializeToString())
    denied = (401, {"error": "etcdserver: invalid auth token", "code": 16,
                    "message": "etcdserver: invalid auth token"})
    assert ref == [ranged, invalid] * 2 + [(200, {}), denied] * 2, ref
    assert got == ref


@pytest.fixture(scope="module")
def short_ttl():
    server = servers.AdapterServer("auth-ttl", extra_args=["--auth-token-ttl", "1"])
    server.start()
    yield server
    server.stop()
    server.cleanup()


@pytest.mark.adapter
def test_expired_token_over_grpc_and_http(short_ttl):
    import time
    for method, request, _ in setup_steps():
        grpc_call(short_ttl, "Auth", method, request, None)
    token = user_tokens(short_ttl)["alice"]
    get = rpc.RangeRequest(key=b"/a/x")
    assert grpc_call(short_ttl, "KV", "Range", get, token)[0] == "ok"
    time.sleep(0.6)
    assert grpc_call(short_ttl, "KV", "Range", get, token)[0] == "ok"   # slides
    time.sleep(0.6)
    assert http_post(short_ttl, "/v3/kv/range", {"key": "L2EveA=="}, token)[0] == 200
    time.sleep(1.5)
    assert grpc_call(short_ttl, "KV", "Range", get, token) == (
        "error", "UNAUTHENTICATED", "etcdserver: invalid auth token")
    token = user_tokens(short_ttl)["alice"]
    time.sleep(1.5)
    assert http_post(short_ttl, "/v3/kv/range", {"key": "L2EveA=="}, token) == (
        401, {"error": "etcdserver: invalid auth token", "code": 16,
              "message": "etcdserver: invalid auth token"})


# ---------------------------------------------------------------------------------------
# mTLS: the certificate's CN is the user when there is no token


@pytest.mark.adapter
def test_client_certificate_cn_is_the_user(cn_server, pki):
    ops = client_creds(pki, "admin")            # CN ops
    apisix = client_creds(pki, "client")        # CN apisix
    enable_cn_users(cn_server, ops, "reader", authpb.Permission.READ)
    _, err = tls_grpc(cn_server, ops, "/etcdserverpb.KV/Put",
                      rpc.PutRequest(key=b"/apisix/r", value=b"1"), rpc.PutResponse)
    assert err is None
    got, err = tls_grpc(cn_server, apisix, "/etcdserverpb.KV/Range",
                        rpc.RangeRequest(key=b"/apisix/r"), rpc.RangeResponse)
    assert err is None and got.kvs[0].value == b"1"
    _, err = tls_grpc(cn_server, apisix, "/etcdserverpb.KV/Put",
                      rpc.PutRequest(key=b"/apisix/r", value=b"2"), rpc.PutResponse)
    assert err == (grpc.StatusCode.PERMISSION_DENIED, "etcdserver: permission denied")
    _, err = tls_grpc(cn_server, apisix, "/etcdserverpb.Auth/UserList",
                      rpc.AuthUserListRequest(), rpc.AuthUserListResponse)
    assert err == (grpc.StatusCode.PERMISSION_DENIED, "etcdserver: permission denied")
    got, err = tls_grpc(cn_server, ops, "/etcdserverpb.Auth/UserList",
                        rpc.AuthUserListRequest(), rpc.AuthUserListResponse)
    assert err is None and list(got.users) == ["apisix", "ops", "root"]
    # the JSON API and watches see the same user
    status, doc = https_post(cn_server, pki, "client", "/v3/kv/range",
                              {"key": base64.b64encode(b"/apisix/r").decode()})
    assert status == 200 and doc["count"] == "1"
    status, doc = https_post(cn_server, pki, "client", "/v3/kv/put",
                              {"key": base64.b64encode(b"/apisix/r").decode()})
    assert (status, doc["message"]) == (403, "etcdserver: permission denied")
    status, doc = https_post(cn_server, pki, "client", "/v3/watch", {"create_request": {
        "key": base64.b64encode(b"/other").decode()}})
    assert doc["result"]["canceled"] and doc["result"]["cancel_reason"] == \
        perm.WATCH_PERMISSION_DENIED


# ---------------------------------------------------------------------------------------
# Two adapters on one database: tokens work on both, each slides them on its own

@pytest.mark.adapter
@pytest.mark.parametrize("kind", ["sqlite", "mariadb"])
def test_a_token_from_one_adapter_works_on_another(request, tmp_path, kind):
    import time
    from support.stores import store_url
    url, drop = store_url(kind, tmp_path)
    ttl = 2.0
    a, b = (servers.AdapterServer("auth-%s-%s" % (kind, n), store=url,
                                  extra_args=["--auth-token-ttl", str(ttl)]) for n in "ab")
    request.node._etcdadapter_servers = [a, b]
    try:
        servers.start_all([a, b])
        for method, req, _ in setup_steps():
            grpc_call(a, "Auth", method, req, None)
        get = rpc.RangeRequest(key=b"/a/x")
        put = rpc.PutRequest(key=b"/a/x", value=b"from-b")
        invalid = ("error", "UNAUTHENTICATED", "etcdserver: invalid auth token")
        # b re-reads the auth state every 2 s: until then it does not know auth is on
        # (nor the signing secret made by AuthEnable).
        time.sleep(auth_store_module.REFRESH_INTERVAL + 0.2)
        http_invalid = (401, {"error": "etcdserver: invalid auth token", "code": 16,
                              "message": "etcdserver: invalid auth token"})
        t0 = time.monotonic()
        token, idle = user_tokens(a)["alice"], user_tokens(a)["alice"]
        assert token.partition(".")[0].isalpha() and token.partition(".")[2].isdigit()
        # b never saw it: accepted (issued within the TTL), on gRPC and HTTP alike.
        assert grpc_call(b, "KV", "Put", put, token)[0] == "ok"
        assert http_post(b, "/v3/kv/range", {"key": "L2EveA=="}, token)[0] == 200
        assert grpc_call(b, "KV", "Put", rpc.PutRequest(key=b"/b", value=b"x"), token) == (
            "error", "PERMISSION_DENIED", "etcdserver: permission denied")
        # Used on b every 1.2 s, it slides there past its TTL; a, where it was last
        # used at issue, has let it expire.
        for _ in range(2):
            time.sleep(1.2)
            assert grpc_call(b, "KV", "Range", get, token)[0] == "ok"
        assert time.monotonic() - t0 > ttl
        assert grpc_call(a, "KV", "Range", get, token) == invalid
        # Unused for longer than the TTL: refused where it was never seen.
        assert grpc_call(b, "KV", "Range", get, idle) == invalid
        assert http_post(b, "/v3/kv/range", {"key": "L2EveA=="}, idle) == http_invalid
        # Garbled: etcd's errors.
        garbled = token[:-1] + ("1" if token[-1] != "1" else "2")
        assert grpc_call(b, "KV", "Range", get, garbled) == invalid
        assert http_post(b, "/v3/kv/range", {"key": "L2EveA=="}, "Bearer x" + token) == \
            http_invalid
        # A fresh root token from b runs admin calls on a.
        root = user_tokens(b)["root"]
        assert grpc_call(a, "Auth", "UserList", rpc.AuthUserListRequest(), root)[0] == "ok"
    finally:
        for server in (b, a):
            server.stop()
            server.cleanup()
        drop()


@pytest.mark.adapter
@pytest.mark.parametrize("kind", ["sqlite", "mariadb", "postgresql"])
def test_concurrent_user_changes_on_two_adapters_are_all_kept(request, tmp_path, kind):
    """Users added at the same moment through two adapters sharing one database: each
    change is compare-and-saved, so none overwrites another (etcd orders them in raft)."""
    from concurrent.futures import ThreadPoolExecutor
    from support.stores import store_url
    url, drop = store_url(kind, tmp_path)
    a, b = (servers.AdapterServer("auth-cas-%s-%s" % (kind, n), store=url)
            for n in "ab")
    request.node._etcdadapter_servers = [a, b]
    names = ["u%02d" % i for i in range(24)]
    try:
        servers.start_all([a, b])

        def add(i):
            server = (a, b)[i % 2]
            return grpc_call(server, "Auth", "UserAdd",
                         rpc.AuthUserAddRequest(name=names[i], password="p"), None)
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(add, range(len(names))))
        assert answers == [("ok", rpc.AuthUserAddResponse().SerializeToString())] * 24
        for server in (a, b):
            status, listed = grpc_call(server, "Auth", "UserList", rpc.AuthUserListRequest(),
                                   None)
            assert rpc.AuthUserListResponse.FromString(listed).users == names
        # The auth revision counts every change once.
        status = rpc.AuthStatusResponse()
        with grpc.insecure_channel(a.endpoint) as channel:
            status = channel.unary_unary(
                "/etcdserverpb.Auth/AuthStatus",
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=rpc.AuthStatusResponse.FromString)(
                    rpc.AuthStatusRequest(), timeout=10)
        assert status.authRevision == 1 + 24
    finally:
        for server in (b, a):
            server.stop()
            server.cleanup()
        drop()


def test_memory_store_auth_compare_and_save():
    store = MemoryStore()
    assert result(store.auth_save(b"one", expected=None)) is True
    assert result(store.auth_save(b"two", expected=None)) is False
    assert result(store.auth_save(b"two", expected=b"one")) is True
    assert result(store.auth_load()) == b"two"
