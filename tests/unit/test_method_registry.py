"""The method registry against rpc.proto: every etcd method is served or answered
Unimplemented with a reason, with the message types and kinds the proto declares."""

from twisted.internet import task

from etcdadapter.errors import StatusCode
from etcdadapter.pb.etcdserverpb import rpc_pb2
from etcdadapter.server import AdapterConfig, AdapterService
from etcdadapter.services.rpc import BIDI_STREAM, NOT_IMPLEMENTED, SERVER_STREAM, UNARY


# In rpc.proto (etcd 3.5's) but not in etcd 3.4, which answers grpc-go's "unknown method".
NOT_IN_ETCD_34 = {"/etcdserverpb.Maintenance/Downgrade"}


def registry():
    return AdapterService(AdapterConfig(store="memory://"), reactor=task.Clock()).registry


def test_every_proto_method_is_served_or_refused_with_a_reason():
    reg = registry()
    served = {m.path: m for m in reg}
    for service in rpc_pb2.DESCRIPTOR.services_by_name.values():
        for m in service.methods:
            path = "/%s/%s" % (service.full_name, m.name)
            if path in NOT_IN_ETCD_34:
                assert path not in served
                assert reg.unknown_method_error(path).message == (
                    "unknown method %s for service %s" % (m.name, service.full_name))
                continue
            if path in NOT_IMPLEMENTED:
                assert path not in served
                error = reg.unknown_method_error(path)
                assert error.code == StatusCode.UNIMPLEMENTED
                assert error.message == NOT_IMPLEMENTED[path]
                continue
            method = served.pop(path)
            assert method.request_type.DESCRIPTOR is m.input_type, path
            assert method.response_type.DESCRIPTOR is m.output_type, path
            kind = (BIDI_STREAM if m.client_streaming
                    else SERVER_STREAM if m.server_streaming else UNARY)
            assert method.kind == kind, path
    assert served == {}          # nothing registered that rpc.proto does not declare
    # The in-process client's ReplacePrefix is registered, but reachable by no face.
    assert reg.lookup_local("/etcdadapter.KV/ReplacePrefix") is not None
    assert reg.lookup("/etcdadapter.KV/ReplacePrefix") is None
    assert reg.unknown_method_error("/etcdadapter.KV/ReplacePrefix").message == (
        "unknown service etcdadapter.KV")


def test_kinds_of_the_streaming_methods():
    kinds = {m.path: m.kind for m in registry()}
    assert kinds["/etcdserverpb.Watch/Watch"] == BIDI_STREAM
    assert kinds["/etcdserverpb.Lease/LeaseKeepAlive"] == BIDI_STREAM
    assert kinds["/etcdserverpb.Maintenance/Snapshot"] == SERVER_STREAM
    assert kinds["/etcdserverpb.KV/Range"] == UNARY
    assert len(kinds) == 5 + 1 + 5 + 6 + 1 + 17
