"""The committed etcdadapter/pb modules match proto/, and proto/ matches etcd's wire contract."""

import importlib.util
import os

import pytest
from google.protobuf.descriptor import FieldDescriptor as FD

from etcdadapter.pb.authpb import auth_pb2
from etcdadapter.pb.etcdserverpb import rpc_pb2
from etcdadapter.pb.mvccpb import kv_pb2

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PB_DIR = os.path.join(REPO_ROOT, "etcdadapter", "pb")


def _load_generate_script():
    path = os.path.join(REPO_ROOT, "proto", "generate.py")
    spec = importlib.util.spec_from_file_location("_etcdadapter_proto_generate", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _require_grpc_tools():
    try:
        import grpc_tools.protoc  # noqa: F401
    except ImportError:
        pass
    else:
        return
    if os.environ.get("CI") == "true":
        pytest.fail("grpc_tools (grpcio-tools) is required in CI to check etcdadapter/pb")
    pytest.skip("grpc_tools (grpcio-tools) is not installed")


# ---------------------------------------------------------------------------
# (a) committed generated code is up to date
# ---------------------------------------------------------------------------


def test_committed_modules_match_regenerated(tmp_path):
    _require_grpc_tools()
    gen = _load_generate_script()
    out = tmp_path / "pb"
    gen.generate(str(out))

    expected = gen.generated_files()
    produced = sorted(
        os.path.relpath(os.path.join(d, f), str(out))
        for d, _, files in os.walk(str(out))
        for f in files
    )
    assert produced == expected

    stale = []
    for rel in expected:
        committed = os.path.join(PB_DIR, rel)
        if not os.path.exists(committed):
            stale.append(rel + " (missing)")
            continue
        with open(committed, "rb") as f:
            old = f.read()
        with open(os.path.join(str(out), rel), "rb") as f:
            new = f.read()
        if old != new:
            stale.append(rel)
    assert not stale, (
        "etcdadapter/pb is out of date with proto/ (run `python proto/generate.py`): %s"
        % ", ".join(stale)
    )


def test_generated_imports_are_package_qualified():
    for mod in (rpc_pb2, kv_pb2, auth_pb2):
        with open(mod.__file__, encoding="utf-8") as f:
            text = f.read()
        assert "\nfrom mvccpb import" not in text
        assert "\nfrom authpb import" not in text
        assert "\nimport mvccpb" not in text
        assert "\nimport authpb" not in text


# ---------------------------------------------------------------------------
# (b) wire contract spot checks
# ---------------------------------------------------------------------------


def _tag(field_number, wire_type):
    """Encoded varint key for a field."""
    key = (field_number << 3) | wire_type
    out = bytearray()
    while True:
        b = key & 0x7F
        key >>= 7
        if key:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


LEN = 2
VARINT = 0


def test_compare_range_end_is_field_64():
    data = rpc_pb2.Compare(range_end=b"x").SerializeToString()
    # field 64, wire type 2 -> key 514 -> varint 0x82 0x04
    assert data == b"\x82\x04\x01x"
    assert data == _tag(64, LEN) + b"\x01x"
    fields = {f.name: f.number for f in rpc_pb2.Compare.DESCRIPTOR.fields}
    assert fields == {
        "result": 1,
        "target": 2,
        "key": 3,
        "version": 4,
        "create_revision": 5,
        "mod_revision": 6,
        "value": 7,
        "lease": 8,
        "range_end": 64,
    }
    oneof = rpc_pb2.Compare.DESCRIPTOR.oneofs_by_name["target_union"]
    assert sorted(f.name for f in oneof.fields) == sorted(
        ["version", "create_revision", "mod_revision", "value", "lease"]
    )


def test_watch_response_events_is_field_11():
    ev = kv_pb2.Event(type=kv_pb2.Event.DELETE, kv=kv_pb2.KeyValue(key=b"k"))
    data = rpc_pb2.WatchResponse(events=[ev]).SerializeToString()
    inner = ev.SerializeToString()
    assert data == _tag(11, LEN) + bytes([len(inner)]) + inner
    assert data[0] == 0x5A
    assert rpc_pb2.WatchResponse.DESCRIPTOR.fields_by_name["events"].message_type is kv_pb2.Event.DESCRIPTOR


def test_range_request_max_create_revision_is_13():
    data = rpc_pb2.RangeRequest(max_create_revision=5).SerializeToString()
    assert data == _tag(13, VARINT) + b"\x05"
    assert data == b"\x68\x05"
    assert rpc_pb2.RangeRequest.SortTarget.Value("VALUE") == 4
    assert rpc_pb2.RangeRequest.DESCEND == 2


def test_lease_grant_response_fields():
    fields = [(f.name, f.number, f.type) for f in rpc_pb2.LeaseGrantResponse.DESCRIPTOR.fields]
    assert fields == [
        ("header", 1, FD.TYPE_MESSAGE),
        ("ID", 2, FD.TYPE_INT64),
        ("TTL", 3, FD.TYPE_INT64),
        ("error", 4, FD.TYPE_STRING),
    ]


def test_etcd_spelled_field_names():
    def names(msg):
        return {f.name for f in msg.DESCRIPTOR.fields}

    assert {"ID", "TTL", "grantedTTL", "keys"} <= names(rpc_pb2.LeaseTimeToLiveResponse)
    assert {"dbSize", "raftIndex", "raftTerm", "raftAppliedIndex", "dbSizeInUse", "isLearner"} <= names(
        rpc_pb2.StatusResponse
    )
    assert {"ID", "peerURLs", "clientURLs", "isLearner"} <= names(rpc_pb2.Member)
    assert {"permType", "key", "range_end"} == names(auth_pb2.Permission)
    assert {"name", "keyPermission"} == names(auth_pb2.Role)
    assert names(rpc_pb2.AuthStatusResponse) == {"header", "enabled", "authRevision"}
    assert rpc_pb2.AuthUserAddRequest.DESCRIPTOR.fields_by_name["hashedPassword"].number == 4
    assert rpc_pb2.AuthUserChangePasswordRequest.DESCRIPTOR.fields_by_name["hashedPassword"].number == 3
    assert rpc_pb2.LeaseCheckpoint.DESCRIPTOR.fields_by_name["remaining_TTL"].number == 2


def test_enums():
    assert kv_pb2.Event.PUT == 0 and kv_pb2.Event.DELETE == 1
    assert auth_pb2.Permission.Type.Value("READWRITE") == 2
    assert rpc_pb2.AlarmType.Value("NOSPACE") == 1
    assert rpc_pb2.DESCRIPTOR.enum_types_by_name["AlarmType"].full_name == "etcdserverpb.AlarmType"
    assert rpc_pb2.AlarmRequest.AlarmAction.Value("DEACTIVATE") == 2
    assert rpc_pb2.WatchCreateRequest.FilterType.Value("NODELETE") == 1
    assert rpc_pb2.Compare.CompareResult.Value("NOT_EQUAL") == 3
    assert rpc_pb2.Compare.CompareTarget.Value("LEASE") == 4
    assert rpc_pb2.DowngradeRequest.DowngradeAction.Value("CANCEL") == 2


def test_oneofs():
    assert [f.name for f in rpc_pb2.RequestOp.DESCRIPTOR.oneofs_by_name["request"].fields] == [
        "request_range",
        "request_put",
        "request_delete_range",
        "request_txn",
    ]
    assert [f.name for f in rpc_pb2.ResponseOp.DESCRIPTOR.oneofs_by_name["response"].fields] == [
        "response_range",
        "response_put",
        "response_delete_range",
        "response_txn",
    ]
    assert [f.name for f in rpc_pb2.WatchRequest.DESCRIPTOR.oneofs_by_name["request_union"].fields] == [
        "create_request",
        "cancel_request",
        "progress_request",
    ]


def test_full_names():
    assert rpc_pb2.RangeRequest.DESCRIPTOR.full_name == "etcdserverpb.RangeRequest"
    assert kv_pb2.KeyValue.DESCRIPTOR.full_name == "mvccpb.KeyValue"
    assert auth_pb2.Permission.DESCRIPTOR.full_name == "authpb.Permission"
    assert rpc_pb2.DESCRIPTOR.name == "etcdserverpb/rpc.proto"
    assert kv_pb2.DESCRIPTOR.name == "mvccpb/kv.proto"
    assert auth_pb2.DESCRIPTOR.name == "authpb/auth.proto"


def _method(service, name):
    return rpc_pb2.DESCRIPTOR.services_by_name[service].methods_by_name[name]


def test_kv_service():
    svc = rpc_pb2.DESCRIPTOR.services_by_name["KV"]
    assert svc.full_name == "etcdserverpb.KV"
    got = {
        m.name: (m.input_type.full_name, m.output_type.full_name, m.client_streaming, m.server_streaming)
        for m in svc.methods
    }
    assert got == {
        "Range": ("etcdserverpb.RangeRequest", "etcdserverpb.RangeResponse", False, False),
        "Put": ("etcdserverpb.PutRequest", "etcdserverpb.PutResponse", False, False),
        "DeleteRange": ("etcdserverpb.DeleteRangeRequest", "etcdserverpb.DeleteRangeResponse", False, False),
        "Txn": ("etcdserverpb.TxnRequest", "etcdserverpb.TxnResponse", False, False),
        "Compact": ("etcdserverpb.CompactionRequest", "etcdserverpb.CompactionResponse", False, False),
    }


def test_streaming_methods():
    watch = _method("Watch", "Watch")
    assert watch.full_name == "etcdserverpb.Watch.Watch"
    assert watch.client_streaming and watch.server_streaming
    keepalive = _method("Lease", "LeaseKeepAlive")
    assert keepalive.client_streaming and keepalive.server_streaming
    snapshot = _method("Maintenance", "Snapshot")
    assert not snapshot.client_streaming and snapshot.server_streaming
    streaming = {
        m.full_name
        for s in rpc_pb2.DESCRIPTOR.services_by_name.values()
        for m in s.methods
        if m.client_streaming or m.server_streaming
    }
    assert streaming == {
        "etcdserverpb.Watch.Watch",
        "etcdserverpb.Lease.LeaseKeepAlive",
        "etcdserverpb.Maintenance.Snapshot",
    }


def test_service_method_sets():
    methods = {
        name: [m.name for m in svc.methods] for name, svc in rpc_pb2.DESCRIPTOR.services_by_name.items()
    }
    assert methods == {
        "KV": ["Range", "Put", "DeleteRange", "Txn", "Compact"],
        "Watch": ["Watch"],
        "Lease": ["LeaseGrant", "LeaseRevoke", "LeaseKeepAlive", "LeaseTimeToLive", "LeaseLeases"],
        "Cluster": ["MemberAdd", "MemberRemove", "MemberUpdate", "MemberList", "MemberPromote"],
        "Maintenance": [
            "Alarm",
            "Status",
            "Defragment",
            "Hash",
            "HashKV",
            "Snapshot",
            "MoveLeader",
            "Downgrade",
        ],
        "Auth": [
            "AuthEnable",
            "AuthDisable",
            "AuthStatus",
            "Authenticate",
            "UserAdd",
            "UserGet",
            "UserList",
            "UserDelete",
            "UserChangePassword",
            "UserGrantRole",
            "UserRevokeRole",
            "RoleAdd",
            "RoleGet",
            "RoleList",
            "RoleDelete",
            "RoleGrantPermission",
            "RoleRevokePermission",
        ],
    }
    assert _method("KV", "Compact").input_type.name == "CompactionRequest"
    assert _method("Auth", "UserAdd").input_type.name == "AuthUserAddRequest"
