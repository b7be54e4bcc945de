"""The gateway's JSON codec as pure code: what etcd 3.4.23's gateway answered to the same
bodies (recorded with curl against the Debian etcd; the end-to-end comparisons live in
test_gateway_*.py)."""

import base64
import json

import pytest

from etcdadapter.errors import EtcdError, StatusCode
from etcdadapter.gateway import json_codec as jc
from etcdadapter.pb.etcdserverpb import rpc_pb2 as rpc
from etcdadapter.pb.mvccpb import kv_pb2

from support.deep_txn import PUT_ONLY_JSON, nested_txn_json

# body -> etcd's error message (all InvalidArgument, HTTP 400)
RANGE_ERRORS = [
    ('{"key":"YQ"}', "illegal base64 data at input byte 0"),
    ('{"key":"Y Q=="}', "illegal base64 data at input byte 1"),
    ('{"key":"YQ=","range_end":"AA=="}', "illegal base64 data at input byte 3"),
    ('{"key":"YQ=="', "unexpected EOF"),
    ("x", "invalid character 'x' looking for beginning of value"),
    ('{"key":}', "invalid character '}' looking for beginning of value"),
    ('{"key" "a"}', "invalid character '\"' after object key"),
    ('{"key":"YQ==",}', "invalid character '}' looking for beginning of object key string"),
    ('{"key":"YQ==","limit":01}', "invalid character '1' after object key:value pair"),
    ('{"limit":"abc"}', "invalid character 'a' looking for beginning of value"),
    ('{"key":"YQ==","revision":"0x10"}', "invalid character 'x' after top-level value"),
    ('{"sort_order":"FOO","key":"YQ=="}',
     'unknown value "FOO" for enum etcdserverpb.RangeRequest_SortOrder'),
    ('{"key":"YQ==","sort_order":"1"}',
     'unknown value "1" for enum etcdserverpb.RangeRequest_SortOrder'),
    ('{"key":"YQ==","sort_order":1.5}', "json: cannot unmarshal number 1.5 into Go value "
     "of type etcdserverpb.RangeRequest_SortOrder"),
    ("[]", "json: cannot unmarshal array into Go value of type map[string]json.RawMessage"),
    ('"abc"',
     "json: cannot unmarshal string into Go value of type map[string]json.RawMessage"),
    ('{"key":1}', "json: cannot unmarshal number into Go value of type []uint8"),
    ('{"limit":1.5,"key":"YQ=="}',
     "json: cannot unmarshal number 1.5 into Go value of type int64"),
    ('{"key":"YQ==","limit":"1.5"}',
     "json: cannot unmarshal number 1.5 into Go value of type int64"),
    ('{"key":"YQ==","limit":1e2}',
     "json: cannot unmarshal number 1e2 into Go value of type int64"),
    ('{"key":"YQ==","limit":"99999999999999999999"}',
     "json: cannot unmarshal number 99999999999999999999 into Go value of type int64"),
    ('{"key":"YQ==","limit":true}', "json: cannot unmarshal bool into Go value of type int64"),
    ('{"key":"YQ==","keys_only":"yes"}',
     "json: cannot unmarshal string into Go value of type bool"),
    ('{"key":"YQ==","keys_only":1}', "json: cannot unmarshal number into Go value of type bool"),
    # Reported by test_gateway_bad_input.py against etcd 3.4.23:
    ('{"key":"\\q"}', "invalid character 'q' in string escape code"),
    ('{"key":"\\u00"}', "invalid character '\"' in \\u hexadecimal character escape"),
    ('{"key":NaN}', "invalid character 'N' looking for beginning of value"),
    ('{"key":"YQ==","count_only": tru}', "invalid character '}' in literal true (expecting 'e')"),
    ('{"key":"\x01"}', "invalid character '\\x01' in string literal"),
    ('\ufeff{}', "invalid character '\u00ef' looking for beginning of value"),
    ('{"x":' + '[' * 10000 + ']' * 10000 + '}', "invalid character '[' exceeded max depth"),
    ('[' * 5000 + ']' * 5000,
     "json: cannot unmarshal array into Go value of type map[string]json.RawMessage"),
]

TXN_ERRORS = [
    ('{"compare":{}}', "json: cannot unmarshal object into Go value of type []json.RawMessage"),
    ('{"compare":[1]}',
     "json: cannot unmarshal number into Go value of type map[string]json.RawMessage"),
    ('{"success":[{"request_put":"x"}]}',
     "json: cannot unmarshal string into Go value of type map[string]json.RawMessage"),
]


@pytest.mark.parametrize("body,message", RANGE_ERRORS + [
    (b, m) for b, m in TXN_ERRORS])
def test_decode_errors_match_etcd(body, message):
    request_type = rpc.TxnRequest if (body, message) in TXN_ERRORS else rpc.RangeRequest
    with pytest.raises(EtcdError) as info:
        jc.decode_request(request_type, body.encode())
    assert info.value == EtcdError(StatusCode.INVALID_ARGUMENT, message)


@pytest.mark.parametrize("body,expected", [
    ("", rpc.RangeRequest()),
    ("  \n", rpc.RangeRequest()),
    ('{"key":"YQ==","limit":null}', rpc.RangeRequest(key=b"a")),
    ('{"key":"YQ==","limit":" 1"}', rpc.RangeRequest(key=b"a", limit=1)),
    ('{"key":"YQ==","limit":"-1"}', rpc.RangeRequest(key=b"a", limit=-1)),
    ('{"key":"YQ==","sort_order":7}', rpc.RangeRequest(key=b"a", sort_order=7)),
    # Names are case-sensitive: "Key" is an unknown field, ignored.
    ('{"key":"YQ==","Key":"Yg=="}', rpc.RangeRequest(key=b"a")),
    # Only the first JSON value counts.
    ('{"key":"YQ==","limit":"1"}  garbage', rpc.RangeRequest(key=b"a", limit=1)),
    ('{"key":"YWJj","rangeEnd":"YWJk","keysOnly":true,"sortOrder":"DESCEND",'
     '"sort_target":2,"minModRevision":"5","unknown":{"x":[1]}}',
     rpc.RangeRequest(key=b"abc", range_end=b"abd", keys_only=True, sort_order=2,
                      sort_target=2, min_mod_revision=5)),
    # Go nests up to 10,000 levels (Python's parser alone stops near 1,000).
    ('{"key":"YQ==","x":' + '[' * 9999 + ']' * 9999 + '}', rpc.RangeRequest(key=b"a")),
    # CR/LF inside base64 are skipped, as Go does.
    ('{"key":"YW\\nJj"}', rpc.RangeRequest(key=b"abc")),
])
def test_decode_accepts_what_etcd_accepts(body, expected):
    assert jc.decode_request(rpc.RangeRequest, body.encode()) == expected


def test_lone_surrogate_escapes_become_replacement_characters():
    # Go's decoder (and so etcd 3.4.23's gateway): each lone surrogate -> U+FFFD; a pair
    # is one character.
    for body in ('{"key":"\\ud800"}', '{"key":"YQ==","range_end":"\\udc00"}',
                 '{"key":"YQ\\ud800=="}'):
        with pytest.raises(EtcdError) as info:
            jc.decode_request(rpc.RangeRequest, body.encode())
        assert info.value.message.startswith("illegal base64 data at input byte "), body
    got = jc.decode_request(rpc.AuthUserAddRequest,
                            b'{"name":"a\\ud800b\\u0041\\udfff\\ud83d\\ude00"}')
    assert got.name == "a\ufffdbA\ufffd\U0001f600"
    msgs, err = jc.decode_requests(rpc.WatchRequest,
                                   b'{"create_request":{"key":"YQ=="}}'
                                   b'{"create_request":{"key":"\\ud800"}}')
    assert len(msgs) == 1 and err == EtcdError(3, "illegal base64 data at input byte 0")


def test_decode_names_numbers_and_oneofs():
    body = ('{"compare":[{"target":"MOD","key":"YQ==","result":"EQUAL","mod_revision":3},'
            '{"target":4,"key":"Yg==","lease":"7"}],'
            '"success":[{"requestPut":{"key":"YQ==","value":"Yg==","prevKv":true}}],'
            '"failure":[{"request_txn":{}}]}')
    got = jc.decode_request(rpc.TxnRequest, body.encode())
    want = rpc.TxnRequest(
        compare=[rpc.Compare(target=rpc.Compare.MOD, key=b"a", mod_revision=3),
                 rpc.Compare(target=rpc.Compare.LEASE, key=b"b", lease=7)],
        success=[rpc.RequestOp(request_put=rpc.PutRequest(key=b"a", value=b"b",
                                                         prev_kv=True))],
        failure=[rpc.RequestOp(request_txn=rpc.TxnRequest())])
    assert got == want
    assert got.failure[0].WhichOneof("request") == "request_txn"
    # The camelCase name wins over the proto name (jsonpb), whatever the order.
    got = jc.decode_request(rpc.LeaseGrantRequest, b'{"TTL":"5","ttl":"7","ID":9}')
    assert (got.TTL, got.ID) == (5, 9)
    got = jc.decode_request(rpc.RangeRequest, b'{"rangeEnd":"Yg==","range_end":"Yw=="}')
    assert got.range_end == b"b"


def test_go_base64_matches_the_standard_decoder_on_valid_input():
    for n in range(0, 40):
        data = bytes(range(n))
        assert jc.go_b64decode(base64.b64encode(data).decode()) == data
    for bad, offset in [("YQ", 0), ("YQ=", 3), ("Y===", 1), ("YWJj=", 4), ("YW-j", 2),
                        ("YW_j", 2), ("YQ==YQ==", 4), ("=", 0)]:
        with pytest.raises(EtcdError) as info:
            jc.go_b64decode(bad)
        assert info.value.message == "illegal base64 data at input byte %d" % offset, bad


def test_decode_stream_of_requests():
    msgs, err = jc.decode_requests(
        rpc.WatchRequest,
        b'{"create_request":{"key":"YQ==","start_revision":5}}\n'
        b'{"progress_request":{}} {"cancel_request":{"watch_id":"1"}}')
    assert err is None
    assert [m.WhichOneof("request_union") for m in msgs] == [
        "create_request", "progress_request", "cancel_request"]
    assert msgs[0].create_request.start_revision == 5
    assert msgs[2].cancel_request.watch_id == 1
    msgs, err = jc.decode_requests(rpc.WatchRequest, b'{"create_request":{}} x')
    assert len(msgs) == 1
    assert err == EtcdError(3, "invalid character 'x' looking for beginning of value")
    assert jc.decode_requests(rpc.WatchRequest, b"") == ([], None)


def test_encode_like_jsonpb():
    kv = kv_pb2.KeyValue(key=b"foo", create_revision=2, mod_revision=6, version=4)
    r = rpc.RangeResponse(kvs=[kv], more=True, count=2)
    r.header.revision = 6
    r.header.cluster_id = 2 ** 64 - 1
    assert json.loads(jc.encode(r)) == {
        "header": {"cluster_id": "18446744073709551615", "revision": "6"},
        "kvs": [{"key": "Zm9v", "create_revision": "2", "mod_revision": "6",
                 "version": "4"}],
        "more": True, "count": "2"}
    # Zero values are omitted: no kvs, no count, no more, no deleted.
    empty = rpc.RangeResponse()
    empty.header.revision = 1
    assert jc.encode(empty) == b'{"header":{"revision":"1"}}'
    assert jc.encode(rpc.DeleteRangeResponse()) == b"{}"
    # A set-but-empty message is emitted as {} (etcd's nested txn header).
    t = rpc.TxnResponse()
    t.responses.add().response_txn.header.SetInParent()
    assert jc.encode(t) == b'{"responses":[{"response_txn":{"header":{}}}]}'
    # Enum names, proto field names, 32-bit numbers as numbers.
    w = rpc.WatchResponse(watch_id=3, canceled=True, compact_revision=5)
    w.events.add(type=kv_pb2.Event.DELETE, kv=kv_pb2.KeyValue(key=b"a", mod_revision=9))
    assert json.loads(jc.encode(w)) == {
        "watch_id": "3", "canceled": True, "compact_revision": "5",
        "events": [{"type": "DELETE", "kv": {"key": "YQ==", "mod_revision": "9"}}]}
    g = rpc.LeaseTimeToLiveResponse(ID=7, TTL=-1, grantedTTL=60)
    assert jc.encode(g) == b'{"ID":"7","TTL":"-1","grantedTTL":"60"}'
    h = rpc.HashResponse(hash=5)
    assert jc.encode(h) == b'{"hash":5}'
    # Strings: UTF-8 as is, HTML characters escaped as Go does.
    m = rpc.Member(name="<ü&>")
    assert jc.encode(m) == '{"name":"\\u003cü\\u0026\\u003e"}'.encode("utf-8")


def test_error_bodies():
    err = EtcdError(StatusCode.NOT_FOUND, "etcdserver: requested lease not found")
    assert jc.error_body(err) == (b'{"error":"etcdserver: requested lease not found",'
                                  b'"code":5,"message":"etcdserver: requested lease not '
                                  b'found"}')
    assert json.loads(jc.stream_error(EtcdError(14, "etcdserver: no leader"))) == {
        "error": {"grpc_code": 14, "http_code": 503, "message": "etcdserver: no leader",
                  "http_status": "Service Unavailable"}}
    line = jc.stream_result(rpc.WatchResponse(created=True))
    assert line == b'{"result":{"created":true}}\n'


def test_nested_txns_decode_without_recursion():
    from etcdadapter import errors
    txn = jc.decode_request(rpc.TxnRequest, nested_txn_json(129, PUT_ONLY_JSON))
    n = 1
    inner = txn
    while inner.success[0].WhichOneof("request") == "request_txn":
        inner = inner.success[0].request_txn
        n += 1
    assert n == 129 and inner.success[0].request_put.key == b"deep"
    # 3,000 levels (9,000 JSON levels; Go stops at 10,000): built to level 130, left
    # empty there; the JSON below is still checked.
    txn = jc.decode_request(rpc.TxnRequest, nested_txn_json(3000, PUT_ONLY_JSON))
    n, inner = 1, txn
    while inner.success and inner.success[0].WhichOneof("request") == "request_txn":
        inner = inner.success[0].request_txn
        n += 1
    assert n == errors.MAX_TXN_LEVELS + 1 and inner == rpc.TxnRequest()
    bad = nested_txn_json(3000, '{"success":[{"request_put":{"key":"YQ"}}]}')
    try:
        jc.decode_request(rpc.TxnRequest, bad)
    except EtcdError as e:
        assert e.message == "illegal base64 data at input byte 0"
    else:
        raise AssertionError("bad base64 at level 3000 accepted")
