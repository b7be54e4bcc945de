"""Every decoder fuzzed with hypothesis: no crash, no hang, no state change from rejected
input.  Each target runs FUZZ_EXAMPLES inputs (default 300 here; the closing note's
figures come from FUZZ_EXAMPLES=100000).

Targets: the gateway's JSON codec (random bytes and JSON-shaped documents using the real
field names), Go-compatible base64, the gogo-style protobuf validator, gRPC message
framing (with compression), the HTTP/2 server past a valid preface, HTTP/1.1 requests
through the one-port protocol, and the JSON API end to end on a real store."""

import base64
import json
import os
import zlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import defer, task
from twisted.internet.testing import StringTransport

from etcdadapter.errors import EtcdError, StatusCode
from etcdadapter.gateway import json_codec, rpc_routes
from etcdadapter.gateway.router import HttpRouter
from etcdadapter.pb.etcdserverpb import rpc_pb2 as rpc
from etcdadapter.services.identity import ServerIdentity
from etcdadapter.services.kv import KVService
from etcdadapter.services.rpc import MethodRegistry
from etcdadapter.store.memory import MemoryStore
from etcdadapter.transport import grpc_codec
from etcdadapter.transport.h2_server import H2Server
from etcdadapter.transport.http_exchange import HttpExchange
from etcdadapter.transport.proto_decode import decode
from etcdadapter.transport.protocol import EtcdFactory

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))

REQUEST_TYPES = [rpc.RangeRequest, rpc.PutRequest, rpc.DeleteRangeRequest, rpc.TxnRequest,
                 rpc.CompactionRequest, rpc.WatchRequest, rpc.LeaseGrantRequest,
                 rpc.LeaseKeepAliveRequest, rpc.LeaseTimeToLiveRequest]


def _field_names(descriptor, seen=None):
    seen = seen if seen is not None else set()
    if descriptor.full_name in seen:
        return set()
    seen.add(descriptor.full_name)
    names = set()
    for f in descriptor.fields:
        names.update((f.name, f.json_name))
        if f.message_type is not None:
            names |= _field_names(f.message_type, seen)
    return names


NAMES = sorted(set().union(*(_field_names(t.DESCRIPTOR) for t in REQUEST_TYPES)))
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(1 << 70), 1 << 70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.binary(max_size=12).map(lambda b: base64.b64encode(b).decode()),
    st.sampled_from(["DESCEND", "PUT", "NOPUT", "MOD", "EQUAL", "LEASE", "x", "1", "1.5",
                     " 7", "0x1", "YQ", "YQ=", "Y===", "-_", "\n"]))
DOCS = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.sampled_from(NAMES), inner, max_size=5)),
    max_leaves=20)


def _decodes_or_invalid(request_type, body):
    try:
        msg = json_codec.decode_request(request_type, body)
    except EtcdError as e:
        assert e.code == StatusCode.INVALID_ARGUMENT, e
        assert e.message
        return None
    assert isinstance(msg, request_type)
    json_codec.encode(msg)          # anything decoded encodes back
    return msg


@FUZZ
@given(st.sampled_from(REQUEST_TYPES), st.binary(max_size=200))
def test_json_codec_random_bytes(request_type, body):
    _decodes_or_invalid(request_type, body)


@FUZZ
@given(st.sampled_from(REQUEST_TYPES), DOCS)
def test_json_codec_json_documents(request_type, doc):
    body = json.dumps(doc).encode()
    msg = _decodes_or_invalid(request_type, body)
    if msg is not None:
        # Round trip: our own output decodes to the same message.
        assert json_codec.decode_request(request_type, json_codec.encode(msg)) == msg
    messages, error = json_codec.decode_requests(request_type, body + b"\n" + body)
    assert (error is None) == (msg is not None)
    assert len(messages) == (2 if msg is not None else 0)


@FUZZ
@given(st.text(alphabet="ABCYQZabz019+/-_=\n\r .", max_size=24))
def test_go_base64_agrees_with_strict_standard_base64(text):
    stripped = text.replace("\n", "").replace("\r", "")
    try:
        ours = json_codec.go_b64decode(text)
    except EtcdError as e:
        assert e.message.startswith("illegal base64 data at input byte ")
        ours = None
    try:
        ref = base64.b64decode(stripped, validate=True) if len(stripped) % 4 == 0 else None
    except ValueError:
        ref = None
    assert ours == ref


@FUZZ
@given(st.sampled_from(REQUEST_TYPES), st.binary(max_size=120))
def test_protobuf_validator(request_type, payload):
    try:
        msg = decode(request_type, payload)
    except EtcdError as e:
        assert e.code in (StatusCode.INTERNAL, StatusCode.INVALID_ARGUMENT,
                          StatusCode.UNKNOWN), e
        return
    assert isinstance(msg, request_type)


@FUZZ
@given(st.sampled_from(["identity", "gzip", "deflate"]),
       st.lists(st.binary(max_size=40), max_size=6), st.booleans())
def test_grpc_framing(encoding, chunks, compress_prefix):
    decoder = grpc_codec.MessageDecoder(1024, encoding)
    data = b"".join(chunks)
    if compress_prefix:         # a well-formed compressed frame, then the noise
        payload = zlib.compress(data)
        data = b"\x01" + len(payload).to_bytes(4, "big") + payload + data
    try:
        for i in range(0, len(data), 7):
            for payload in decoder.feed(data[i:i + 7]):
                assert len(payload) <= 1024
    except EtcdError as e:
        assert e.code in (StatusCode.INTERNAL, StatusCode.RESOURCE_EXHAUSTED,
                          StatusCode.UNIMPLEMENTED), e


def _registry(store):
    registry = MethodRegistry()
    for m in KVService(store, ServerIdentity()).methods():
        registry.add(m)
    return registry


PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


@FUZZ
@given(st.lists(st.binary(max_size=64), max_size=8))
def test_http2_frames_after_the_preface(chunks):
    store = MemoryStore(initial_revision=1)
    out = bytearray()
    closed = []
    server = H2Server(out.extend, lambda: closed.append(True), _registry(store),
                      HttpRouter(), task.Clock())
    server.initiate()
    server.data_received(PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
    for c in chunks:
        if closed:
            break
        server.data_received(c)
    server.connection_lost()
    assert store.revision == 1


@FUZZ
@given(st.sampled_from([b"GET /version HTTP/1.1\r\n", b"POST /v3/kv/put HTTP/1.1\r\n",
                        b"POST /v3/watch HTTP/1.1\r\nHost: x\r\n", b"G"]),
       st.lists(st.binary(max_size=64), max_size=8))
def test_http1_requests(start, chunks):
    store = MemoryStore(initial_revision=1)
    router = HttpRouter()
    registry = _registry(store)
    rpc_routes.install(router, registry, 1 << 20)
    factory = EtcdFactory(registry, router, clock=task.Clock())
    proto = factory.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    for data in [start] + chunks:
        if transport.disconnecting:
            break
        proto.dataReceived(data)
    proto.connectionLost(None)
    assert store.revision == 1


class _Exchange(HttpExchange):
    def __init__(self, path, body):
        HttpExchange.__init__(self, "POST", path, {}, context=None, body=body)
        from etcdadapter.services.rpc import CallContext
        self.context = CallContext(transport="http")
        self.status = None

    def _send_head(self, status, headers):
        self.status = status

    def _send_body(self, data, end):
        pass


@FUZZ
@given(st.sampled_from(["/v3/kv/put", "/v3/kv/deleterange", "/v3/kv/txn",
                        "/v3/kv/compaction", "/v3/kv/range"]),
       st.one_of(st.binary(max_size=80), DOCS.map(lambda d: json.dumps(d).encode())))
def test_rejected_json_changes_nothing(path, body):
    store = MemoryStore(initial_revision=1)
    store.put(rpc.PutRequest(key=b"k", value=b"v"))
    router = HttpRouter()
    rpc_routes.install(router, _registry(store), 1 << 20)
    ex = _Exchange(path, body)
    router.dispatch(ex)
    assert ex.status is not None and ex.status < 500, ex.status
    if ex.status != 200:
        assert store.revision == 2
        got = store.range(rpc.RangeRequest(key=b"k"))
        assert isinstance(got, defer.Deferred)
        assert [kv.value for kv in got.result.kvs] == [b"v"]
