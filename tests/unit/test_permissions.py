"""Key-range permissions (etcd's coverage rules) and the client-certificate policy file."""

import json

import pytest

from etcdadapter.errors import EtcdError
from etcdadapter.pb.etcdserverpb import rpc_pb2 as rpc
from etcdadapter.security import permissions as perm
from etcdadapter.security.cert_policy import CertPolicy, PolicyError
from etcdadapter.security.peer import PeerIdentity
from etcdadapter.security.permissions import Permission, PermissionSet


def test_coverage_rules():
    p = PermissionSet([Permission(b"/apisix/", b"/apisix0", True, False),
                       Permission(b"/a/x", b"", True, True),
                       Permission(b"/z/", b"\0", False, True),
                       Permission(b"/m/", b"/m/5", True, False),
                       Permission(b"/m/5", b"/m/9", True, False)])
    assert p.can_read(b"/apisix/routes/1")
    assert p.can_read(b"/apisix/", b"/apisix0")          # the whole prefix
    assert not p.can_read(b"/apisix/", b"/apisiy")       # one key beyond it
    assert not p.can_read(b"/apisix", b"")               # the bare name is outside
    assert not p.can_write(b"/apisix/routes/1")
    assert p.can_read(b"/a/x") and p.can_write(b"/a/x")
    assert not p.can_read(b"/a/x", b"/a/y")              # a range around a single key
    assert p.can_write(b"/z/", b"\0") and p.can_write(b"\xff\xff")
    assert not p.can_read(b"/z/q")
    assert p.can_read(b"/m/1", b"/m/8")                  # covered by two adjacent grants
    assert not p.can_read(b"/m/1", b"/m/a")
    # A range ending before its key needs the key itself (etcd 3.4's interval tree).
    assert not p.can_read(b"/q", b"/p") and not p.can_read(b"/q", b"/q")
    assert p.can_read(b"/apisix/z", b"/apisix/a") and p.can_read(b"/a/x", b"/a/x")
    assert p.can_read(b"/a/x", b"/a") and not p.can_write(b"/m/1", b"/m/0")
    assert p.can_write(b"/z/q", b"/z/") and not p.can_read(b"/z/q", b"/z/")
    # etcd 3.4.23 refuses this one (its interval tree misses the grant on /b); we do not.
    assert PermissionSet([Permission(b"/a/", b"/a0", True, True),
                          Permission(b"/b", b"", True, False)]).can_read(b"/b", b"/a")
    assert not PermissionSet().can_read(b"k")
    assert perm.ALL.can_write(b"", b"\0")


def _txn(compare_key, put_key, range_key=b"/apisix/a"):
    return rpc.TxnRequest(
        compare=[rpc.Compare(key=compare_key, target=rpc.Compare.MOD)],
        success=[rpc.RequestOp(request_put=rpc.PutRequest(key=put_key))],
        failure=[rpc.RequestOp(request_txn=rpc.TxnRequest(success=[rpc.RequestOp(
            request_range=rpc.RangeRequest(key=range_key))]))])


def test_request_checks_follow_etcd():
    p = PermissionSet([Permission(b"/apisix/", b"/apisix0", True, True),
                       Permission(b"/w/", b"/w0", False, True)])
    perm.check_put(p, rpc.PutRequest(key=b"/w/1"))
    with pytest.raises(EtcdError) as info:
        perm.check_put(p, rpc.PutRequest(key=b"/w/1", prev_kv=True))   # prev_kv reads
    assert info.value == perm.ErrPermissionDenied
    assert (info.value.code, info.value.message) == (7, "etcdserver: permission denied")
    perm.check_delete(p, rpc.DeleteRangeRequest(key=b"/w/", range_end=b"/w0"))
    with pytest.raises(EtcdError):
        perm.check_delete(p, rpc.DeleteRangeRequest(key=b"/w/", range_end=b"/w0",
                                                    prev_kv=True))
    perm.check_txn(p, _txn(b"/apisix/a", b"/w/1"))
    with pytest.raises(EtcdError):
        perm.check_txn(p, _txn(b"/w/1", b"/w/1"))          # compares need read
    with pytest.raises(EtcdError):
        perm.check_txn(p, _txn(b"/apisix/a", b"/w/1", range_key=b"/w/2"))  # nested range
    with pytest.raises(EtcdError):
        perm.check_admin(p)
    perm.check_admin(perm.ALL)


POLICY = {
    "rules": [
        {"match": {"cn": "apisix"},
         "permissions": [{"key": "/apisix/", "prefix": True, "type": "READ"}]},
        {"match": {"dns": "admin.example"}, "permissions": "all"},
        {"match": {"uri": "spiffe://prod/gw", "cn": "gw"},
         "permissions": [{"key": "/gw/", "range_end": "/gw0", "type": "READWRITE"}]},
    ],
    "default": "deny",
}


def _ident(cn="", dns=(), uris=(), ips=()):
    return PeerIdentity(cn, tuple(dns), tuple(uris), tuple(ips))


def test_policy_matching(tmp_path):
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(POLICY))
    pol = CertPolicy.load(str(path))
    reader = pol.permissions_for(_ident("apisix"))
    assert reader.can_read(b"/apisix/x") and not reader.can_write(b"/apisix/x")
    assert pol.permissions_for(_ident("x", dns=["admin.example"])).admin
    gw = pol.permissions_for(_ident("gw", uris=["spiffe://prod/gw"]))
    assert gw.can_write(b"/gw/1") and not gw.can_read(b"/apisix/x")
    # Every key of a match must hold; no match and no certificate -> default.
    for ident in (_ident("gw"), _ident("other"), None):
        p = pol.permissions_for(ident)
        assert not p.admin and not p.can_read(b"/apisix/x")
    assert CertPolicy.from_json({"rules": [], "default": "all"}).permissions_for(None).admin


@pytest.mark.parametrize("bad", [
    [], {"rules": {}}, {"rules": [{"permissions": "all"}]},
    {"rules": [{"match": {"o": "x"}, "permissions": "all"}]},
    {"rules": [{"match": {"cn": "x"}, "permissions": [{"key": ""}]}]},
    {"rules": [{"match": {"cn": "x"}, "permissions": [{"key": "/a", "type": "ALL"}]}]},
    {"rules": [{"match": {"cn": "x"}, "permissions": [
        {"key": "/a", "prefix": True, "range_end": "/b"}]}]},
    {"rules": [], "default": "allow"},
])
def test_policy_errors(bad):
    with pytest.raises(PolicyError):
        CertPolicy.from_json(bad)
