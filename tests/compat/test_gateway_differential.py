"""The HTTP/JSON gateway, request by request: etcd and the server under test must answer
alike (status, Content-Type, JSON body after normalising IDs and revisions).

Every request goes to both servers over plain HTTP/1.1 (tests/support/gateway_client.py); the
reference is etcd 3.4.23's grpc-gateway.  Known, intentional differences (we answer in
etcd 3.5's shapes) are handled where they occur, each with a comment; everything else
must match exactly:

* error bodies: 3.4 orders the keys error, message, code and 3.5 error, code, message --
  bodies are compared parsed, never as text;
* FailedPrecondition: the Debian 3.4.23 build answers 412, upstream 400 (we do);
* ``/version`` values and ``/health``'s ``"reason":""`` (3.5);
* unknown ``/v3`` paths: etcd answers a text/plain 404, we answer JSON (APISIX crashes
  on a non-JSON body).
"""

import json
import re

import pytest

from support.gateway_client import (PerSide, Rev, STATUS_MASK, TARGET_IS_ETCD, b64,
                                    error_body, module_differ_fixture, prefix_end, unb64,
                                    watch_body)

pytestmark = pytest.mark.adapter

KEY_NOT_PROVIDED = error_body("etcdserver: key is not provided", 3)

module_differ = module_differ_fixture()


@pytest.fixture
def gw(module_differ, request):
    """The module's :class:`Differ`, re-synchronised; ``gw.p`` is this test's key prefix,
    removed from both servers afterwards (with every lease) so the stores stay alike."""
    module_differ.resync()
    module_differ.p = "gwdiff/%s/" % request.node.name
    yield module_differ
    module_differ.cleanup([module_differ.p])


def k(gw, name):
    """This test's key ``name``, base64."""
    return b64(gw.p + name)


def put(gw, name, value, **fields):
    body = {"key": k(gw, name), "value": b64(value)}
    body.update(fields)
    return gw.same("/v3/kv/put", body)


def rev_of(outcome):
    """header.revision of etcd's answer (etcd numbering)."""
    return int(outcome.json()["header"]["revision"])


# ---------------------------------------------------------------------------------------
# KV

def _seed(gw):
    """Keys a, b (empty value), c (twice), d/1, d/2, \\xff\\x00; returns the revisions."""
    revs = [rev_of(put(gw, "a", "1"))]
    revs.append(rev_of(put(gw, "b", "")))
    revs.append(rev_of(put(gw, "c", "3")))
    revs.append(rev_of(put(gw, "c", "33")))
    revs.append(rev_of(put(gw, "d/1", "x")))
    revs.append(rev_of(put(gw, "d/2", "y")))
    revs.append(rev_of(gw.same("/v3/kv/put", {"key": b64(gw.p.encode() + b"\xff\x00"),
                                              "value": b64(b"\x00\xff")})))
    return revs


def test_put_answer_shape(gw):
    out = put(gw, "a", "1")
    body = out.json()
    # etcd: only a header, int64s as strings.
    assert set(body) == {"header"}
    assert set(body["header"]) == {"cluster_id", "member_id", "revision", "raft_term"}
    assert all(isinstance(v, str) for v in body["header"].values())
    assert out.ref.content_type == "application/json"
    assert out.got.content_type == "application/json"


def test_range_variants(gw):
    revs = _seed(gw)
    end = b64(prefix_end(gw.p))
    cases = [
        {"key": k(gw, "a")},
        {"key": k(gw, "b")},                       # empty value: no "value"
        {"key": k(gw, "nope")},                     # nothing: no kvs, no count
        {"key": k(gw, ""), "range_end": end},
        {"key": k(gw, "d/"), "range_end": b64(prefix_end(gw.p + "d/"))},
        {"key": k(gw, ""), "range_end": end, "keys_only": True},
        {"key": k(gw, ""), "range_end": end, "count_only": True},
        {"key": k(gw, ""), "range_end": end, "limit": 2},
        {"key": k(gw, ""), "range_end": end, "limit": "2"},
        {"key": k(gw, ""), "range_end": end, "limit": 2, "keys_only": True,
         "sort_order": "DESCEND"},
        {"key": k(gw, ""), "range_end": end, "sort_order": "DESCEND"},
        {"key": k(gw, ""), "range_end": end, "sort_order": 2},
        {"key": k(gw, ""), "range_end": end, "sort_order": "ASCEND",
         "sort_target": "VERSION"},
        {"key": k(gw, ""), "range_end": end, "sort_order": "DESCEND",
         "sort_target": "MOD", "limit": 3},
        {"key": k(gw, ""), "range_end": end, "sort_order": 1, "sort_target": 2},
        {"key": k(gw, ""), "range_end": end, "sort_order": "ASCEND",
         "sort_target": "VALUE"},
        {"key": k(gw, ""), "range_end": end, "sort_target": "VALUE"},   # order NONE
        {"key": k(gw, ""), "range_end": end, "revision": Rev(revs[2])},
        {"key": k(gw, ""), "range_end": end, "revision": Rev(revs[2], as_string=True)},
        {"key": k(gw, "c"), "revision": Rev(revs[2])},
        {"key": k(gw, ""), "range_end": end, "min_mod_revision": Rev(revs[3])},
        {"key": k(gw, ""), "range_end": end, "max_mod_revision": Rev(revs[3])},
        {"key": k(gw, ""), "range_end": end, "min_create_revision": Rev(revs[4]),
         "max_create_revision": Rev(revs[5])},
        {"key": k(gw, ""), "range_end": end, "serializable": True},
        {"key": k(gw, ""), "range_end": b64("\0")},          # every key >= key
        {"key": k(gw, "d/1"), "range_end": k(gw, "d/1")},     # empty interval
    ]
    gw.same_each([("/v3/kv/range", body, 200) for body in cases])
    # A read at a past revision sees the past value (etcd's own answer, spelled out).
    past = gw.same("/v3/kv/range", {"key": k(gw, "c"), "revision": Rev(revs[2])}).json()
    assert unb64(past["kvs"][0]["value"]) == b"3" and past["count"] == "1"
    limited = gw.same("/v3/kv/range", {"key": k(gw, ""), "range_end": end,
                                       "limit": 2}).json()
    assert limited["more"] is True and limited["count"] == "6" and len(limited["kvs"]) == 2


def test_range_errors(gw):
    revs = _seed(gw)
    gw.same("/v3/kv/range", {"key": ""}, status=400)
    gw.same("/v3/kv/range", {}, status=400)
    out = gw.same("/v3/kv/range", {"key": k(gw, "a"), "revision": Rev(revs[-1] + 1000)},
                  status=400)
    assert out.json() == error_body(
        "etcdserver: mvcc: required revision is a future revision", 11)


def test_put_variants(gw):
    out = put(gw, "p", "1", prev_kv=True)
    assert "prev_kv" not in out.json()                 # new key: no prev_kv at all
    out = put(gw, "p", "2", prev_kv=True)
    assert unb64(out.json()["prev_kv"]["value"]) == b"1"
    gw.same("/v3/kv/put", {"key": k(gw, "p"), "ignore_value": True, "prev_kv": True})
    gw.same("/v3/kv/range", {"key": k(gw, "p")})       # value kept, version 3
    gw.same("/v3/kv/put", {"key": k(gw, "p"), "value": b64("v"), "ignore_lease": True})
    gw.same("/v3/kv/put", {"key": k(gw, "p"), "value": b64("v"), "lease": "0"})
    gw.same("/v3/kv/put", {"key": k(gw, "p"), "value": b64("")})
    gw.same("/v3/kv/range", {"key": k(gw, "p")})
    # Errors.
    gw.same("/v3/kv/put", {"key": k(gw, "missing"), "ignore_value": True}, status=400)
    gw.same("/v3/kv/put", {"key": k(gw, "p"), "value": b64("v"), "ignore_value": True},
            status=400)
    gw.same("/v3/kv/put", {"key": k(gw, "p"), "lease": 1234, "ignore_lease": True},
            status=400)
    out = gw.same("/v3/kv/put", {"key": k(gw, "p"), "value": b64("v"), "lease": 999999},
                  status=404)
    assert out.json() == error_body("etcdserver: requested lease not found", 5)
    out = gw.same("/v3/kv/put", {"value": b64("v")}, status=400)
    assert out.json() == KEY_NOT_PROVIDED


def test_deleterange(gw):
    _seed(gw)
    out = gw.same("/v3/kv/deleterange", {"key": k(gw, "a")})
    assert out.json()["deleted"] == "1" and "prev_kvs" not in out.json()
    out = gw.same("/v3/kv/deleterange", {"key": k(gw, "a")})
    assert "deleted" not in out.json()                  # nothing deleted: no field
    out = gw.same("/v3/kv/deleterange", {"key": k(gw, "c"), "prev_kv": True})
    assert unb64(out.json()["prev_kvs"][0]["value"]) == b"33"
    out = gw.same("/v3/kv/deleterange", {"key": k(gw, "missing"), "prev_kv": True})
    assert set(out.json()) == {"header"}
    out = gw.same("/v3/kv/deleterange", {"key": k(gw, "d/"),
                                         "range_end": b64(prefix_end(gw.p + "d/")),
                                         "prev_kv": True})
    assert out.json()["deleted"] == "2"
    gw.same("/v3/kv/deleterange", {"key": k(gw, ""), "range_end": b64(prefix_end(gw.p))})
    gw.same("/v3/kv/range", {"key": k(gw, ""), "range_end": b64(prefix_end(gw.p)),
                             "count_only": True})
    gw.same("/v3/kv/deleterange", {"key": ""}, status=400)


# ---------------------------------------------------------------------------------------
# Txn

def test_txn_compare_mod_equal_apisix_style(gw):
    rev = rev_of(put(gw, "t", "old"))
    # APISIX's atomic_set: snake_case mod_revision, camelCase requestPut, no failure.
    body = {"compare": [{"key": k(gw, "t"), "target": "MOD", "result": "EQUAL",
                         "mod_revision": Rev(rev)}],
            "success": [{"requestPut": {"key": k(gw, "t"), "value": b64("new")}}]}
    out = gw.same("/v3/kv/txn", body)
    assert out.json()["succeeded"] is True
    assert list(out.json()["responses"][0]) == ["response_put"]
    out = gw.same("/v3/kv/txn", body)                   # stale now: fails
    assert set(out.json()) == {"header"}                # no succeeded, no responses


def test_txn_snake_and_camel_case_bodies(gw):
    put(gw, "x", "1")
    snake = {"compare": [{"key": k(gw, "s"), "target": "CREATE", "result": "EQUAL",
                          "create_revision": "0"}],
             "success": [{"request_put": {"key": k(gw, "s"), "value": b64("v"),
                                          "prev_kv": True}},
                         {"request_range": {"key": k(gw, "s"), "keys_only": True}}],
             "failure": [{"request_delete_range": {"key": k(gw, "x"), "prev_kv": True}}]}
    camel = {"compare": [{"key": k(gw, "c"), "target": "CREATE", "result": "EQUAL",
                          "createRevision": 0}],
             "success": [{"requestPut": {"key": k(gw, "c"), "value": b64("v"),
                                         "prevKv": True}},
                         {"requestRange": {"key": k(gw, "c"), "keysOnly": True}}],
             "failure": [{"requestDeleteRange": {"key": k(gw, "x"), "prevKv": True}}]}
    a = gw.same("/v3/kv/txn", snake).json()
    b = gw.same("/v3/kv/txn", camel).json()
    assert a["succeeded"] is True and b["succeeded"] is True
    # Second time both fail: the failure branch deletes x (prev_kv), then nothing.
    gw.same("/v3/kv/txn", snake)
    out = gw.same("/v3/kv/txn", camel).json()
    assert "succeeded" not in out
    assert out["responses"] == [{"response_delete_range": {
        "header": {"revision": out["header"]["revision"]}}}]


def test_txn_nested_and_failure_branch(gw):
    put(gw, "a", "1")
    put(gw, "b", "2")
    body = {"compare": [{"key": k(gw, "a"), "target": "VALUE", "result": "EQUAL",
                         "value": b64("no")}],
            "success": [{"request_put": {"key": k(gw, "never"), "value": b64("x")}}],
            "failure": [{"request_range": {"key": k(gw, ""), "limit": 1,
                                           "range_end": b64(prefix_end(gw.p))}},
                        {"request_txn": {
                            "compare": [{"key": k(gw, "b"), "target": "VERSION",
                                         "result": "GREATER", "version": 0}],
                            "success": [{"request_put": {"key": k(gw, "n"),
                                                         "value": b64("in")}},
                                        {"request_txn": {}}],
                            "failure": []}}]}
    out = gw.same("/v3/kv/txn", body).json()
    inner = out["responses"][1]["response_txn"]
    assert inner["header"] == {}                        # set but empty: emitted
    assert inner["succeeded"] is True
    assert inner["responses"][1] == {"response_txn": {"header": {}, "succeeded": True}}
    gw.same("/v3/kv/range", {"key": k(gw, "n")})


def test_txn_compare_targets_and_results(gw):
    put(gw, "a", "5")
    put(gw, "a", "6")
    lease = gw.same("/v3/lease/grant", {"TTL": 60, "ID": 8101}, keep_ids=[8101])
    put(gw, "l", "x", lease=8101)
    compares = [
        {"target": "VERSION", "result": "EQUAL", "version": 2},
        {"target": 0, "result": 1, "version": "1"},              # numbers: VERSION GREATER
        {"target": "VALUE", "result": "NOT_EQUAL", "value": b64("5")},
        {"target": "VALUE", "result": "LESS", "value": b64("7")},
        {"target": "MOD", "result": "GREATER", "mod_revision": 1},
        {"target": "CREATE", "result": "NOT_EQUAL", "create_revision": 0},
        {"target": "LEASE", "result": "EQUAL", "lease": 0},
        {"target": "VERSION", "result": "EQUAL", "version": 0, "key": k(gw, "nokey")},
        {"target": "LEASE", "result": "EQUAL", "lease": "8101", "key": k(gw, "l")},
        {"target": "VALUE", "result": "EQUAL", "value": b64("x"), "key": k(gw, "l")},
        # A compare over a range: every key in it must satisfy it.
        {"target": "VERSION", "result": "GREATER", "version": 0, "key": k(gw, ""),
         "range_end": b64(prefix_end(gw.p))},
        {"target": "VERSION", "result": "EQUAL", "version": 1, "key": k(gw, ""),
         "range_end": b64(prefix_end(gw.p))},
    ]
    for compare in compares:
        compare = dict(compare)
        compare.setdefault("key", k(gw, "a"))
        gw.same("/v3/kv/txn", {"compare": [compare]}, keep_ids=[8101])
    assert lease.json()["ID"] == "8101"


def test_txn_errors(gw):
    put(gw, "a", "1")
    out = gw.same("/v3/kv/txn", {"success": [{}]}, status=400)
    assert out.json() == error_body("etcdserver: key not found", 3)
    out = gw.same("/v3/kv/txn", {"success": [
        {"request_put": {"key": k(gw, "d"), "value": b64("1")}},
        {"request_put": {"key": k(gw, "d"), "value": b64("2")}}]}, status=400)
    assert out.json() == error_body("etcdserver: duplicate key given in txn request", 3)
    out = gw.same("/v3/kv/txn", {"success": [
        {"request_put": {"key": k(gw, "m%d" % i), "value": b64("v")}}
        for i in range(129)]}, status=400)
    assert out.json() == error_body("etcdserver: too many operations in txn request", 3)
    gw.same("/v3/kv/txn", {"compare": [{"target": "VALUE", "value": b64("1")}]},
            status=400)
    gw.same("/v3/kv/txn", {"success": [{"request_put": {"value": b64("1")}}]}, status=400)
    # Nothing was written by any of them.
    gw.same("/v3/kv/range", {"key": k(gw, ""), "range_end": b64(prefix_end(gw.p))})


# ---------------------------------------------------------------------------------------
# Compaction

def test_compaction(gw):
    r1 = rev_of(put(gw, "c", "1"))
    r2 = rev_of(put(gw, "c", "2"))
    r3 = rev_of(put(gw, "c", "3"))
    gw.same("/v3/kv/compaction", {"revision": Rev(r2)})
    compacted = error_body("etcdserver: mvcc: required revision has been compacted", 11)
    assert gw.same("/v3/kv/compaction", {"revision": Rev(r2)}, status=400).json() \
        == compacted
    assert gw.same("/v3/kv/compaction", {"revision": Rev(r1)}, status=400).json() \
        == compacted
    assert gw.same("/v3/kv/range", {"key": k(gw, "c"), "revision": Rev(r1)},
                   status=400).json() == compacted
    gw.same("/v3/kv/range", {"key": k(gw, "c"), "revision": Rev(r2)})
    gw.same("/v3/kv/compaction", {"revision": Rev(r3 + 100, as_string=True)}, status=400)
    gw.same("/v3/kv/compaction", {"revision": Rev(r3, as_string=True), "physical": True})
    gw.same("/v3/kv/range", {"key": k(gw, "c"), "revision": Rev(r3)})


# ---------------------------------------------------------------------------------------
# Lease

def test_lease_grant_variants(gw):
    keep = [8201, 8202]
    out = gw.same("/v3/lease/grant", {"TTL": 60, "ID": 8201}, keep_ids=keep)
    assert out.json()["ID"] == "8201" and out.json()["TTL"] == "60"
    gw.same("/v3/lease/grant", {"TTL": "30", "ID": "8202"}, keep_ids=keep)
    out = gw.same("/v3/lease/grant", {"TTL": 60, "ID": 0})       # server-chosen ID
    assert int(out.json()["ID"]) > 0
    gw.same("/v3/lease/grant", {"TTL": 1})                       # raised to etcd's minimum
    # Already exists: FailedPrecondition (412 on Debian's etcd, 400 upstream and ours).
    out = gw.same("/v3/lease/grant", {"TTL": 60, "ID": 8201}, keep_ids=keep, status=412)
    assert out.json() == error_body("etcdserver: lease already exists", 9)
    out = gw.same("/v3/lease/grant", {"TTL": 9000000001}, status=400)
    assert out.json() == error_body("etcdserver: too large lease TTL", 11)


def test_lease_timetolive_leases_revoke_and_alias_paths(gw):
    keep = [8301, 8302]
    gw.same("/v3/lease/grant", {"TTL": 60, "ID": 8301}, keep_ids=keep)
    gw.same("/v3/lease/grant", {"TTL": 120, "ID": 8302}, keep_ids=keep)
    put(gw, "l1", "x", lease=8301)
    put(gw, "l2", "y", lease="8301")
    # TTL counts down in whole seconds on each server's own clock: compared apart.
    for path in ("/v3/lease/timetolive", "/v3/kv/lease/timetolive"):
        for body in ({"ID": 8301, "keys": True}, {"ID": "8301"},
                     {"ID": 8302, "keys": False}):
            out = gw.same(path, body, keep_ids=keep, mask=["TTL"])
            for reply in (out.ref, out.got):
                granted = int(reply.json()["grantedTTL"])
                assert granted - 3 <= int(reply.json()["TTL"]) <= granted
    out = gw.same("/v3/lease/timetolive", {"ID": 8301, "keys": True}, keep_ids=keep,
                  mask=["TTL"])
    assert sorted(unb64(x) for x in out.json()["keys"]) == [
        (gw.p + "l1").encode(), (gw.p + "l2").encode()]
    # Unknown lease: not an error, TTL -1.
    gw.same("/v3/lease/timetolive", {"ID": 999999})
    # Leases (etcd's map order: compared sorted).
    for path, body in (("/v3/lease/leases", None), ("/v3/kv/lease/leases", {}),
                       ("/v3/lease/leases", "")):
        out = gw.same(path, body, keep_ids=keep)
        assert out.ref_norm["leases"] == [{"ID": "8301"}, {"ID": "8302"}]
    out = gw.same("/v3/kv/lease/revoke", {"ID": 8301}, keep_ids=keep)
    gw.same("/v3/kv/range", {"key": k(gw, "l1")})                # gone with its lease
    gw.same("/v3/lease/revoke", {"ID": "8302"}, keep_ids=keep)
    out = gw.same("/v3/lease/revoke", {"ID": 8302}, keep_ids=keep, status=404)
    assert out.json() == error_body("etcdserver: requested lease not found", 5)
    gw.same("/v3/kv/lease/revoke", {"ID": 8301}, keep_ids=keep, status=404)
    gw.same("/v3/lease/leases", {})


def test_lease_keepalive_stream(gw):
    out = gw.same("/v3/lease/grant", {"TTL": 60, "ID": 0})
    lease = out.per_side("ID")
    # One request in the body: one result line, then etcd ends the answer.
    streams = gw.streams("/v3/lease/keepalive", {"ID": lease})
    for stream in streams:
        assert stream.status == 200
        assert stream.header("transfer-encoding") == "chunked"
    ref = gw.same_messages(streams, 1, "keepalive")
    assert ref[0]["result"]["TTL"] == "60"
    for stream in streams:
        assert stream.read_to_end(5) == []
        assert stream.ended and stream.tail == b""
    # Unknown lease: no TTL (zero omitted), still a result.
    streams = gw.streams("/v3/lease/keepalive", {"ID": 424242})
    ref = gw.same_messages(streams, 1, "keepalive of an unknown lease", keep_ids=[424242])
    assert "TTL" not in ref[0]["result"]
    # Two requests in one body (ID as a number, then as a string): two answers.
    body = PerSide(*['{"ID":%s}\n{"ID":"%s"}' % (v, v) for v in lease.values])
    streams = gw.streams("/v3/lease/keepalive", body)
    gw.same_messages(streams, 2, "two keepalives in one body")


# ---------------------------------------------------------------------------------------
# Watch

def test_watch_stream_shapes(gw):
    streams = gw.streams("/v3/watch", watch_body(gw.p + "w", prev_kv=True))
    for stream in streams:
        assert stream.status == 200
        assert stream.content_type == "application/json"
        assert stream.header("transfer-encoding") == "chunked"
    created = gw.same_messages(streams, 1, "created")
    assert created[0]["result"]["created"] is True
    put(gw, "w", "1")
    put(gw, "w", "2")
    gw.same("/v3/kv/deleterange", {"key": k(gw, "w")})
    msgs = gw.same_messages(streams, 3, "put, put, delete with prev_kv")
    assert "type" not in msgs[0]["result"]["events"][0]
    delete = msgs[2]["result"]["events"][0]
    assert delete["type"] == "DELETE" and "value" not in delete["kv"]
    assert set(delete["kv"]) == {"key", "mod_revision"}
    for stream in streams:
        assert all(chunk.endswith(b"\n") for chunk in stream.chunks)
        assert stream.quiet(0.3)


def test_watch_create_options(gw):
    p = gw.p
    # Two creates in one body: filters by name (NOPUT) and by number (1 = NODELETE),
    # snake_case and camelCase, an explicit watch ID as a string.
    body = "\n".join([
        '{"create_request":{"key":"%s","range_end":"%s","filters":["NOPUT"]}}'
        % (b64(p + "f/"), b64(prefix_end(p + "f/"))),
        '{"createRequest":{"key":"%s","rangeEnd":"%s","filters":[1],"watchId":"7"}}'
        % (b64(p + "f/"), b64(prefix_end(p + "f/"))),
    ])
    streams = gw.streams("/v3/watch", body)
    msgs = gw.same_messages(streams, 2, "two created")
    assert msgs[1]["result"]["watch_id"] == "7"
    put(gw, "f/1", "x")
    gw.same("/v3/kv/deleterange", {"key": k(gw, "f/1")})
    # Watcher 0 filters PUTs, watcher 7 filters DELETEs.
    msgs = gw.same_messages(streams, 2, "filtered events")
    assert {m["result"].get("watch_id", "0") for m in msgs} == {"0", "7"}
    # A duplicate watch ID and an empty range: created and canceled at once.
    body = "\n".join(['{"create_request":{"key":"%s","watch_id":7}}' % b64(p + "dup"),
                      '{"create_request":{"key":"%s","watch_id":7}}' % b64(p + "dup")])
    msgs = gw.same_messages(gw.streams("/v3/watch", body), 2, "duplicate watch ID")
    assert msgs[1]["result"]["cancel_reason"] == \
        "mvcc: duplicate watch ID provided on the WatchStream"
    body = watch_body(p + "b", p + "a")
    msgs = gw.same_messages(gw.streams("/v3/watch", body), 1, "empty range")
    assert msgs[0]["result"]["cancel_reason"] == "mvcc: watcher range is empty"


def test_watch_progress_request(gw):
    # With a synced watcher: one progress reply, watch_id -1, current revision.
    body = '%s\n{"progress_request":{}}' % json.dumps(watch_body(gw.p + "pr"))
    streams = gw.streams("/v3/watch", body)
    msgs = gw.same_messages(streams, 2, "created, then the progress reply")
    assert msgs[1]["result"]["watch_id"] == "-1"
    assert "events" not in msgs[1]["result"]
    # Without any watcher, 3.4 (< 3.4.25) still replies; 3.5.8+ sends nothing (no
    # watcher is unsynced, and there is none to send on).  Either is accepted of ours.
    ref, got = gw.streams("/v3/watch", '{"progress_request":{}}')
    ref_msg = ref.next(5)
    assert ref_msg["result"]["watch_id"] == "-1"
    if not got.quiet(0.5):
        norm_ref, norm_got = gw.normalisers()
        assert norm_got(got.next(1)) == norm_ref(ref_msg)


def test_watch_start_revision_replays_in_one_message(gw):
    r1 = rev_of(put(gw, "h", "1"))
    put(gw, "h", "2")
    gw.same("/v3/kv/deleterange", {"key": k(gw, "h")})
    streams = gw.streams("/v3/watch", watch_body(gw.p + "h", start_revision=Rev(r1)))
    msgs = gw.same_messages(streams, 2, "created + history")
    assert len(msgs[1]["result"]["events"]) == 3


# ---------------------------------------------------------------------------------------
# Maintenance, cluster, version, health, metrics

def test_maintenance_status(gw):
    # Storage and raft figures differ per server by nature; their presence must not.
    out = gw.same("/v3/maintenance/status", {}, mask=STATUS_MASK)
    for reply in (out.ref, out.got):
        body = reply.json()
        assert re.match(r"^3\.[45]\.\d+$", body["version"]), body
        assert int(body["dbSize"]) > 0 and int(body["dbSizeInUse"]) > 0
        assert body["leader"] == body["header"]["member_id"]
        assert int(body["raftIndex"]) > 0 and int(body["raftTerm"]) > 0
    gw.same("/v3/maintenance/status", None, mask=STATUS_MASK)


def test_member_list(gw):
    # peerURLs name the peer port etcd listens on; we have none to compare with.
    out = gw.same("/v3/cluster/member/list", {}, mask=["peerURLs"])
    body = out.ref_norm
    assert "revision" not in body["header"]          # MemberList: no revision
    assert body["members"][0]["clientURLs"] == ["http://<ENDPOINT>"]
    for reply in (out.ref, out.got):
        member = reply.json()["members"][0]
        assert member["ID"] == reply.json()["header"]["member_id"]
        assert member["peerURLs"] and all(u.startswith("http") for u in member["peerURLs"])


def test_version(gw):
    out = gw.both("/version", method="GET")
    for reply in (out.ref, out.got):
        assert reply.status == 200 and reply.content_type == "application/json"
        body = reply.json()
        assert set(body) == {"etcdserver", "etcdcluster"}
        m = re.match(r"^(\d+)\.(\d+)\.(\d+)$", body["etcdserver"])
        assert m, body
        assert body["etcdcluster"] == "%s.%s.0" % m.groups()[:2]
    # Intentional difference: we report etcd 3.5 (APISIX only needs etcdcluster >= 3.4.0).
    assert out.ref.json()["etcdcluster"] == "3.4.0"
    if TARGET_IS_ETCD:
        assert out.got.json() == out.ref.json()
    else:
        assert out.got.json()["etcdcluster"] == "3.5.0"
    ref = gw.ref.post("/version", "{}")
    got = gw.got.post("/version", "{}")
    assert ref.status == got.status == 405


def test_health(gw):
    out = gw.both("/health", method="GET")
    assert out.ref.status == out.got.status == 200
    assert out.ref.json() == {"health": "true"}
    # Intentional difference: 3.5 adds "reason".
    want = {"health": "true"} if TARGET_IS_ETCD else {"health": "true", "reason": ""}
    assert out.got.json() == want


def _sample(text, name):
    """The value of an unlabelled sample in Prometheus text ("1" and "1.0" alike)."""
    m = re.search(r"^%s (\S+)$" % re.escape(name), text, re.M)
    assert m, "no %s in /metrics:\n%s" % (name, text[:500])
    return float(m.group(1))


def test_metrics(gw):
    rev = gw.resync()
    out = gw.both("/metrics", method="GET")
    for reply, offset in ((out.ref, 0), (out.got, gw.got.offset)):
        assert reply.status == 200
        assert reply.content_type.startswith("text/plain; version=0.0.4"), \
            reply.content_type
        text = reply.body.decode("utf-8")
        assert re.search(r"^# TYPE etcd_server_has_leader gauge$", text, re.M), text[:500]
        assert _sample(text, "etcd_server_has_leader") == 1
        assert _sample(text, "etcd_mvcc_db_total_size_in_bytes") > 0
        assert _sample(text, "etcd_debugging_mvcc_current_revision") == rev + offset


def test_cors_and_options(gw):
    out = gw.both("/v3/kv/range", {"key": k(gw, "a")})
    for reply in (out.ref, out.got):
        assert reply.header("access-control-allow-origin") == "*"
        assert reply.header("access-control-allow-headers") == \
            "accept, content-type, authorization"
        assert reply.header("access-control-allow-methods") == \
            "POST, GET, OPTIONS, PUT, DELETE"
    out = gw.both("/v3/kv/range", method="OPTIONS")
    assert out.ref.status == out.got.status == 200
    assert out.ref.body == out.got.body == b""


def test_grpc_code_to_http_status_table():
    # Most codes cannot be provoked through the gateway; the table itself is the
    # contract (grpc-gateway's HTTPStatusFromCode, upstream builds: 9 -> 400).
    from etcdadapter.errors import HTTP_STATUS
    assert HTTP_STATUS == {0: 200, 1: 408, 2: 500, 3: 400, 4: 504, 5: 404, 6: 409,
                           7: 403, 8: 429, 9: 400, 10: 409, 11: 400, 12: 501, 13: 500,
                           14: 503, 15: 500, 16: 401}


# ---------------------------------------------------------------------------------------
# Paths

def test_v3beta_is_rewritten_to_v3(gw):
    gw.same("/v3beta/kv/put", {"key": k(gw, "beta"), "value": b64("1")})
    gw.same("/v3beta/kv/range", {"key": k(gw, "beta")})
    gw.same("/v3beta/lease/leases", {})
    streams = gw.streams("/v3beta/watch", watch_body(gw.p + "beta", start_revision=1))
    gw.same_messages(streams, 2, "v3beta watch")


def test_unknown_paths_and_methods(gw):
    for path in ("/v3/kv/nope", "/v3alpha/kv/range", "/v3/", "/v3/kv/range/x",
                 "/v4/kv/range"):
        out = gw.both(path, {"key": k(gw, "a")})
        assert out.ref.status == 404, (path, out.ref)
        assert out.got.status == 404, (path, out.got)
        # Intentional difference: etcd's 404 is text/plain; ours is JSON, because
        # APISIX decodes every answer as JSON (api7/etcd-adapter#31).
        if not TARGET_IS_ETCD:
            assert out.got.content_type == "application/json"
            assert set(out.got.json()) == {"error", "code", "message"}
    for path in ("/v3/kv/range", "/v3/watch", "/v3/lease/grant"):
        for method in ("GET", "PUT", "DELETE"):
            out = gw.both(path, method=method)
            assert out.ref.status == 405, (method, path, out.ref)
            assert out.got.status == 405, (method, path, out.got)


# ---------------------------------------------------------------------------------------
# Inputs: what etcd's decoder accepts

def test_input_spellings(gw):
    _seed(gw)
    p, end = gw.p, b64(prefix_end(gw.p))
    a, c = b64(p + "a"), b64(p + "c")
    # Each list holds equivalent bodies: all must give etcd's answer.
    raw_cases = [
        # APISIX's exact readdir body: every field, explicit zeros, no Content-Type.
        '{"key":"%s","range_end":"%s","limit":0,"revision":0,"sort_order":0,'
        '"sort_target":0,"serializable":false,"keys_only":false,"count_only":false,'
        '"min_mod_revision":0,"max_mod_revision":0,"min_create_revision":0,'
        '"max_create_revision":0}' % (b64(p), end),
        # Spaces after commas and colons, newlines, leading whitespace (CLI-built).
        ' \n{ "key" : "%s", "range_end" : "%s" }\n' % (b64(p), end),
        # camelCase names, ints as strings, enums by name and by number.
        '{"key":"%s","rangeEnd":"%s","limit":"2","sortOrder":"DESCEND","sortTarget":3}'
        % (b64(p), end),
        '{"key":"%s","range_end":"%s","limit":2,"sort_order":2,"sort_target":"MOD"}'
        % (b64(p), end),
        '{"key":"%s","range_end":"%s","limit":" 2","sort_order":2,"sort_target":"MOD"}'
        % (b64(p), end),
        # Unknown fields (flat and nested) are ignored; null means unset.
        '{"key":"%s","bogus":1,"nested":{"a":[1,{"b":null}]},"limit":null,'
        '"keys_only":null}' % a,
        # The same field twice: the last wins.
        '{"key":"%s","key":"%s"}' % (a, c),
        # Both spellings of one field: jsonpb prefers the camelCase one.
        '{"key":"%s","range_end":"%s","rangeEnd":"%s","count_only":true}'
        % (a, c, end),
        '{"key":"%s","rangeEnd":"%s","range_end":"%s","count_only":true}'
        % (a, end, c),
        '{"key":"%s","count_only":true,"countOnly":false}' % a,
        # Names are case-sensitive: "Count_only" is an unknown field.
        '{"key":"%s","Count_only":true}' % a,
        # Only the first JSON value counts: trailing bytes are ignored.
        '{"key":"%s"} trailing garbage' % a,
        '{"key":"%s"}{"key":"%s"}' % (a, c),
        # Base64 with line breaks inside (Go skips \r and \n).
        '{"key":"%s"}' % (a[:4] + "\\n" + a[4:] + "\\r\\n"),
        # int64 given as a string with a JSON null inside.
        '{"key":"%s","limit":"null"}' % a,
    ]
    gw.same_each([("/v3/kv/range", body, 200) for body in raw_cases])
    # An unknown enum number passes the decoder.  etcd 3.4 then ignores it; 3.5 rejects
    # it (checkRangeRequest: "invalid sort option") and so do we.
    invalid_sort = (400, error_body("etcdserver: invalid sort option", 3))
    for body in ('{"key":"%s","range_end":"%s","sort_order":7}' % (b64(p), end),
                 '{"key":"%s","sort_order":-1}' % a):
        if TARGET_IS_ETCD:
            gw.same("/v3/kv/range", body)
        else:
            out = gw.both("/v3/kv/range", body)
            assert out.ref.status == 200, out.ref
            assert (out.got.status, out.got.json()) == invalid_sort
    # An unknown sort *target* makes etcd 3.4.23 panic and exit (nil sorter): not sent
    # to etcd; ours must answer like 3.5.
    if not TARGET_IS_ETCD:
        got = gw.got.post("/v3/kv/range", '{"key":"%s","sort_target":5}' % a)
        assert (got.status, got.json()) == invalid_sort
    # Content-Type is not looked at.
    for content_type in (None, "application/json", "text/plain",
                         "application/x-www-form-urlencoded", "application/grpc"):
        gw.same("/v3/kv/range", {"key": a}, content_type=content_type)
    # Puts: the value as the CLI sends it, lease 0 as a number and a string.
    for lease in ('0', '"0"'):
        gw.same("/v3/kv/put", '{"value":"aW5pdF9kaXI=", "key":"%s", "lease": %s}'
                % (b64(p + "i"), lease))
    # Watch filters by name and by number in one list.
    streams = gw.streams("/v3/watch", '{"create_request":{"key":"%s",'
                         '"filters":["NOPUT",1]}}' % b64(p + "nothing"))
    gw.same_messages(streams, 1, "created with both filters")
    assert streams[0].quiet(0.2)


def test_request_framing(gw):
    a = k(gw, "a")
    put(gw, "a", "1")
    # A chunked request body, in 3-byte pieces.
    gw.same("/v3/kv/range", {"key": a}, chunk_size=3)
    # Expect: 100-continue (the body follows at once here).
    gw.same("/v3/kv/range", {"key": a}, headers=[("Expect", "100-continue")])
    # An empty body is an empty request.
    assert gw.same("/v3/kv/range", b"", status=400).json() == KEY_NOT_PROVIDED
    # Keep-alive: all of this went over one connection per server.
    assert gw.ref.connects == gw.got.connects


def test_keys_and_values_are_bytes(gw):
    raw = [b"\x00", b"\xff\xfe\xfd", "ключ/ü".encode("utf-8"), b"with space", b"a+b/c=",
           b"<tag>&amp;"]
    for key in raw:
        gw.same("/v3/kv/put", {"key": b64(gw.p.encode() + key), "value": b64(key * 3)})
    out = gw.same("/v3/kv/range", {"key": k(gw, ""), "range_end": b64(prefix_end(gw.p))})
    assert sorted(unb64(kv["key"])[len(gw.p):] for kv in out.json()["kvs"]) == sorted(raw)
    # A lease ID beyond 2^53 survives as a string (cjson would round a number).
    big = 2 ** 62 + 12345
    out = gw.same("/v3/lease/grant", {"TTL": 60, "ID": str(big)}, keep_ids=[big])
    assert out.json()["ID"] == str(big)
    gw.same("/v3/lease/timetolive", {"ID": str(big)}, keep_ids=[big], mask=["TTL"])
    gw.same("/v3/lease/revoke", {"ID": str(big)}, keep_ids=[big])
