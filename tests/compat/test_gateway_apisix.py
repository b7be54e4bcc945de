"""Apache APISIX's conversations with etcd over the HTTP/JSON gateway, flow by flow.

Each flow sends exactly what APISIX (lua-resty-etcd, the ``apisix init_etcd`` CLI) sends
-- raw bodies built like theirs, no Content-Type -- to the reference etcd and to the
server under test, and compares what comes back, normalised (tests/support/gateway_client.py).
On top of the comparison, the properties APISIX relies on are asserted of etcd's answers
(so the harness cannot drift) and hence of ours: zero values omitted (no ``deleted`` when
nothing was deleted, no ``kvs`` when nothing matched, no ``succeeded`` on a failed txn, no
``prev_kv`` for a new key), DELETE events without ``value``, one watch message per line
with ``header.revision``, created first, history replayed from any retained start
revision, compaction reported as ``canceled`` + ``compact_revision``.

The full sync reads 5,000 keys (> 4 MiB of JSON) in one range.  etcd gateways before
3.4.17 failed such reads ("grpc: received message larger than max (N vs. 4194304)",
apisix#3073); the reference here, 3.4.23, returns them whole, so both servers are
compared (the test asserts the reference's answer really is over 4 MiB).
"""

import json

import pytest

from support.gateway_client import (Rev, b64, module_differ_fixture, parse_reply,
                                    prefix_end, raw_exchange, unb64, watch_body)

pytestmark = pytest.mark.adapter

PREFIX = "/apisix"
DIRS = ["/routes", "/upstreams", "/services", "/consumers", "/ssls", "/global_rules",
        "/plugin_metadata", "/plugins", "/protos", "/plugin_configs", "/consumer_groups",
        "/secrets", "/stream_routes"]
INIT_DIR = "aW5pdF9kaXI="          # base64("init_dir")

module_differ = module_differ_fixture()


@pytest.fixture
def gw(module_differ):
    """The module's :class:`Differ`, re-synchronised; afterwards everything APISIX-ish
    (``/apisix``, ``/apache``) and every lease is removed from both servers."""
    module_differ.resync()
    yield module_differ
    module_differ.cleanup([PREFIX, "/apache"])


def rev_of(outcome):
    return int(outcome.json()["header"]["revision"])


def readdir_body(key):
    """lua-resty-etcd's range body for a prefix: all 13 fields, explicit defaults."""
    return ('{"key":"%s","range_end":"%s","limit":0,"revision":0,"sort_order":0,'
            '"sort_target":0,"serializable":false,"keys_only":false,"count_only":false,'
            '"min_mod_revision":0,"max_mod_revision":0,"min_create_revision":0,'
            '"max_create_revision":0}' % (b64(key), b64(prefix_end(key))))


def get_body(key):
    """lua-resty-etcd's single-key get: the same fields, no range_end."""
    return ('{"key":"%s","limit":0,"revision":0,"sort_order":0,"sort_target":0,'
            '"serializable":false,"keys_only":false,"count_only":false,'
            '"min_mod_revision":0,"max_mod_revision":0,"min_create_revision":0,'
            '"max_create_revision":0}' % b64(key))


def set_body(key, value, lease=None):
    """lua-resty-etcd's set: cjson-encoded value, prev_kv (Admin PUT 201 vs 200)."""
    body = '{"key":"%s","value":"%s","prev_kv":true' % (
        b64(key), b64(json.dumps(value, separators=(",", ":"))))
    if lease is not None:
        body += ',"lease":"%s"' % lease
    return body + "}"


def init_etcd(gw):
    """``apisix init_etcd``: 13 placeholder puts, string-built bodies, CLI headers."""
    for d in DIRS:
        body = '{"value":"%s", "key":"%s"}' % (INIT_DIR, b64(PREFIX + d + "/"))
        out = gw.same("/v3/kv/put", body, headers=[("Connection", "close, TE"),
                                                   ("TE", "trailers")])
        # The CLI fails on any occurrence of "error" in the answer.
        for reply in (out.ref, out.got):
            assert b"error" not in reply.body, reply


def check_watch_message(msg):
    """What APISIX's watch consumer needs of every data message."""
    result = msg["result"]
    assert int(result["header"]["revision"]) > 0, msg
    for event in result.get("events", []):
        kv = event["kv"]
        if event.get("type") == "DELETE":
            assert set(kv) == {"key", "mod_revision"}, event
        else:
            assert "type" not in event and "value" in kv, event
        assert int(kv["mod_revision"]) <= int(result["header"]["revision"]), msg


def check_framing(stream):
    """Newline framing as lua-resty-etcd parses it: no blank lines, no bytes after
    the last newline."""
    data = b"".join(stream.chunks)
    assert data.endswith(b"\n"), data[-200:]
    assert b"\n\n" not in data and not data.startswith(b"\n"), data[:200]


# ---------------------------------------------------------------------------------------

CLI_HEADERS = b"Host: x\r\nConnection: close, TE\r\nTE: trailers\r\n" \
              b"User-Agent: LuaSocket 3.0\r\n"


def test_version_check(gw):
    # The CLI's GET /version: a JSON object whose etcdcluster is strict X.Y.Z >= 3.4.0.
    request = b"GET /version HTTP/1.1\r\n" + CLI_HEADERS + b"\r\n"
    for endpoint in (gw.pair.etcd.endpoint, gw.pair.target.endpoint):
        reply = parse_reply(raw_exchange(endpoint, request, 3, until_reply=True)[0])
        assert reply.status == 200 and reply.content_type == "application/json", reply
        doc = reply.json()
        major, minor, patch = (int(x) for x in doc["etcdcluster"].split("."))
        assert (major, minor, patch) >= (3, 4, 0) and patch == 0, doc
        assert doc["etcdserver"].startswith(doc["etcdcluster"][:4]), doc


def test_cli_connection_close_is_honoured(gw):
    # The CLI sends "Connection: close, TE": the server answers, then closes.
    body = b'{"value":"aW5pdF9kaXI=", "key":"L2FwaXNpeC9yb3V0ZXMv"}'
    requests = [b"GET /version HTTP/1.1\r\n" + CLI_HEADERS + b"\r\n",
                b"POST /v3/kv/put HTTP/1.1\r\n" + CLI_HEADERS
                + b"Content-Length: %d\r\n\r\n" % len(body) + body]
    for endpoint in (gw.pair.etcd.endpoint, gw.pair.target.endpoint):
        for request in requests:
            data, end = raw_exchange(endpoint, request, timeout=3)
            assert parse_reply(data).status == 200, (endpoint, data)
            assert end == "closed", "%s kept the connection open after %r" % (
                endpoint, request.split(b"\r\n")[0])


def test_init_etcd_placeholders(gw):
    init_etcd(gw)
    init_etcd(gw)        # re-run on every `apisix start`: idempotent, new revisions
    out = gw.same("/v3/kv/range", readdir_body(PREFIX))
    kvs = out.json()["kvs"]
    assert [unb64(kv["key"]).decode() for kv in kvs] == sorted(
        PREFIX + d + "/" for d in DIRS)
    assert all(unb64(kv["value"]) == b"init_dir" and kv["version"] == "2" for kv in kvs)


def test_full_sync_of_5000_keys(gw):
    init_etcd(gw)
    value = b64(json.dumps({"uri": "/" + "x" * 900,
                            "upstream": {"nodes": {"1.1.1.1:80": 1}}}))
    keys = ["%s/routes/%05d" % (PREFIX, i) for i in range(5000)]
    for start in range(0, len(keys), 125):
        txn = {"success": [{"request_put": {"key": b64(key), "value": value}}
                           for key in keys[start:start + 125]]}
        gw.same("/v3/kv/txn", txn)
    # init_by_lua: one range over everything, no paging, the exact body.
    out = gw.same("/v3/kv/range", readdir_body(PREFIX))
    body = out.json()
    assert len(out.ref.body) > 4 << 20 and len(out.got.body) > 4 << 20
    assert body["count"] == "5013" and "more" not in body
    got_keys = [unb64(kv["key"]) for kv in body["kvs"]]
    assert got_keys == sorted(got_keys) and len(got_keys) == 5013
    # Each resource's own readdir, and the Prometheus exporter's phantom key.
    gw.same("/v3/kv/range", readdir_body(PREFIX + "/routes"))
    out = gw.same("/v3/kv/range", '{"key":"%s","range_end":"%s"}' % (
        b64(PREFIX + "/phantomkey"), b64(PREFIX + "/phantomkez")))
    assert set(out.json()) == {"header"}


def test_get_and_readdir_semantics(gw):
    init_etcd(gw)
    for rid in ("1", "10", "2"):
        gw.same("/v3/kv/put", set_body("%s/routes/%s" % (PREFIX, rid), {"id": rid}))
    gw.same("/v3/kv/put", set_body(PREFIX + "/ab", "v"))
    # GET one: readdir(key) = [key, key+1); found only if kvs[1].key is the key itself.
    out = gw.same("/v3/kv/range", readdir_body(PREFIX + "/routes/1"))
    assert [unb64(kv["key"]) for kv in out.json()["kvs"]] == [
        b"/apisix/routes/1", b"/apisix/routes/10"]
    # Single-key get of /apisix/a when only /apisix/ab exists: no kvs, no count.
    out = gw.same("/v3/kv/range", get_body(PREFIX + "/a"))
    assert set(out.json()) == {"header"}
    # Listing: count includes the placeholder.
    out = gw.same("/v3/kv/range", readdir_body(PREFIX + "/routes"))
    assert out.json()["count"] == "4"
    # POST mints an ID from gen_id's revision (a put with prev_kv).
    out = gw.same("/v3/kv/put", set_body(PREFIX + "/gen_id", 1))
    assert "prev_kv" not in out.json()
    out = gw.same("/v3/kv/put", set_body(PREFIX + "/gen_id", 1))
    assert out.json()["prev_kv"]["version"] == "1"
    # The watcher's revision probe: a single-key range of "/apisix/" for its header.
    gw.same("/v3/kv/range", '{"key":"%s"}' % b64(PREFIX + "/"))


def test_admin_put_and_delete(gw):
    init_etcd(gw)
    key = PREFIX + "/routes/r1"
    out = gw.same("/v3/kv/put", set_body(key, {"uri": "/a"}))
    assert "prev_kv" not in out.json()                  # 201 Created
    out = gw.same("/v3/kv/put", set_body(key, {"uri": "/b"}))
    assert json.loads(unb64(out.json()["prev_kv"]["value"])) == {"uri": "/a"}   # 200
    out = gw.same("/v3/kv/deleterange", '{"key":"%s"}' % b64(key))
    assert out.json()["deleted"] == "1"
    # A missing key: no "deleted" at all (APISIX answers 404 from its absence).
    out = gw.same("/v3/kv/deleterange", '{"key":"%s"}' % b64(key))
    assert set(out.json()) == {"header"}
    # rmdir of a consumer's credentials, present and absent.
    for cid in ("c1", "c2"):
        gw.same("/v3/kv/put", set_body(PREFIX + "/consumers/jack/credentials/" + cid, {}))
    creds = PREFIX + "/consumers/jack/credentials/"
    rmdir = '{"key":"%s","range_end":"%s"}' % (b64(creds), b64(prefix_end(creds)))
    assert gw.same("/v3/kv/deleterange", rmdir).json()["deleted"] == "2"
    assert set(gw.same("/v3/kv/deleterange", rmdir).json()) == {"header"}


def test_admin_patch_is_a_txn(gw):
    key = PREFIX + "/routes/p"
    gw.same("/v3/kv/put", set_body(key, {"uri": "/a"}))
    got = gw.same("/v3/kv/range", readdir_body(key)).json()
    mod = int(got["kvs"][0]["mod_revision"])

    def atomic_set(value, mod_revision, lease=None):
        put = {"key": b64(key), "value": b64(json.dumps(value))}
        if lease is not None:
            put["lease"] = lease
        return {"compare": [{"key": b64(key), "target": "MOD", "result": "EQUAL",
                             "mod_revision": mod_revision}],
                "success": [{"requestPut": put}]}

    out = gw.same("/v3/kv/txn", atomic_set({"uri": "/b"}, Rev(mod)))
    assert out.json()["succeeded"] is True
    # The same mod_revision again: "value changed before overwritten" (no succeeded).
    out = gw.same("/v3/kv/txn", atomic_set({"uri": "/c"}, Rev(mod)))
    assert set(out.json()) == {"header"}
    # ?ttl=N: grant, then the txn puts with the lease (ID echoed as a string).
    grant = gw.same("/v3/lease/grant", '{"TTL":60,"ID":0}')
    lease = grant.per_side("ID")
    current = gw.same("/v3/kv/range", readdir_body(key)).json()["kvs"][0]["mod_revision"]
    out = gw.same("/v3/kv/txn", atomic_set({"uri": "/d"}, Rev(current), lease))
    assert out.json()["succeeded"] is True
    out = gw.same("/v3/kv/range", get_body(key))
    assert out.json()["kvs"][0]["lease"] == grant.json()["ID"]


def test_watch_from_revision_plus_one_and_reconnect(gw):
    init_etcd(gw)
    snapshot = gw.same("/v3/kv/range", readdir_body(PREFIX))
    start = rev_of(snapshot) + 1
    body = {"create_request": {"key": b64(PREFIX + "/"), "range_end": b64(PREFIX + "0"),
                               "start_revision": Rev(start)}}
    streams = gw.streams("/v3/watch", body)
    for stream in streams:
        assert stream.status == 200 and stream.header("transfer-encoding") == "chunked"
    created = gw.same_messages(streams, 1, "created")[0]["result"]
    assert created["created"] is True and "events" not in created

    live = []
    # Admin PUT of a route.
    gw.same("/v3/kv/put", set_body(PREFIX + "/routes/1", {"uri": "/1"}))
    live += gw.same_messages(streams, 1, "one put")
    # A txn writing three keys: one message, three events, one revision.
    gw.same("/v3/kv/txn", {"success": [
        {"request_put": {"key": b64(PREFIX + "/routes/%d" % i),
                         "value": b64(json.dumps({"uri": "/%d" % i}))}}
        for i in (2, 3, 4)]})
    msg = gw.same_messages(streams, 1, "a 3-key txn")
    assert len(msg[0]["result"]["events"]) == 3
    live += msg
    # Writes outside the watched prefix: nothing.
    gw.same("/v3/kv/put", '{"key":"%s","value":"%s"}' % (b64("/apache"), b64("x")))
    gw.same("/v3/kv/put", '{"key":"%s","value":"%s"}' % (b64("/apache"), b64("y")))
    for stream in streams:
        assert stream.quiet(0.3)
    # A delete, then an rmdir of two keys.
    gw.same("/v3/kv/deleterange", '{"key":"%s"}' % b64(PREFIX + "/routes/1"))
    live += gw.same_messages(streams, 1, "a delete")
    gw.same("/v3/kv/deleterange", '{"key":"%s","range_end":"%s"}' % (
        b64(PREFIX + "/routes/2"), b64(PREFIX + "/routes/4")))
    msg = gw.same_messages(streams, 1, "an rmdir of two keys")
    assert [e.get("type") for e in msg[0]["result"]["events"]] == ["DELETE", "DELETE"]
    live += msg
    for m in live:
        check_watch_message(m)
    for stream in streams:
        stream.close()                 # APISIX cancels by closing the connection
        check_framing(stream)

    # Reconnect with the same start revision: created, then the whole backlog replayed
    # in one message ("etcd events sent in bulk").
    streams = gw.streams("/v3/watch", body)
    replay = gw.same_messages(streams, 2, "reconnect with the same start revision")
    events = replay[1]["result"]["events"]
    assert events == [e for m in live for e in m["result"]["events"]]
    check_watch_message(replay[1])
    for stream in streams:
        assert stream.quiet(0.3)


def test_watch_from_a_compacted_revision(gw):
    init_etcd(gw)
    first = rev_of(gw.same("/v3/kv/put", set_body(PREFIX + "/routes/c", {"v": 1})))
    gw.same("/v3/kv/put", set_body(PREFIX + "/routes/c", {"v": 2}))
    compacted_at = rev_of(gw.same("/v3/kv/put", set_body(PREFIX + "/routes/c", {"v": 3})))
    gw.same("/v3/kv/compaction", {"revision": Rev(compacted_at)})
    body = {"create_request": {"key": b64(PREFIX + "/"), "range_end": b64(PREFIX + "0"),
                               "start_revision": Rev(first)}}
    streams = gw.streams("/v3/watch", body)
    msgs = gw.same_messages(streams, 2, "created, then canceled as compacted")
    result = msgs[1]["result"]
    assert result["canceled"] is True
    assert int(result["compact_revision"]) == compacted_at
    assert "events" not in result
    # APISIX then rewatches from compact_revision (after a full reload).
    body = {"create_request": {"key": b64(PREFIX + "/"), "range_end": b64(PREFIX + "0"),
                               "start_revision": Rev(compacted_at)}}
    streams = gw.streams("/v3/watch", body)
    msgs = gw.same_messages(streams, 2, "rewatch from compact_revision")
    assert [int(e["kv"]["mod_revision"]) for e in msgs[1]["result"]["events"]] == \
        [compacted_at]


def test_lease_keepalive_and_expiry(gw):
    # server-info: grant {"TTL":60,"ID":0} (here 2 s), put with the lease as a string,
    # keepalive {"ID":"<id>"}; on expiry the key's DELETE reaches the watch.
    key = PREFIX + "/data_plane/server_info/node-1"
    grant = gw.same("/v3/lease/grant", '{"TTL":2,"ID":0}')
    assert grant.json()["TTL"] == "2"
    lease = grant.per_side("ID")
    now = rev_of(gw.same("/v3/kv/range", '{"key":"%s"}' % b64(PREFIX + "/")))
    streams = gw.streams("/v3/watch", watch_body(
        PREFIX + "/data_plane/", prefix_end(PREFIX + "/data_plane/"),
        start_revision=Rev(now + 1)))
    gw.same_messages(streams, 1, "created")
    for side, client in enumerate((gw.ref, gw.got)):
        out = client.post("/v3/kv/put", set_body(key, {"id": "node-1"},
                                                 lease=lease.values[side]))
        assert out.status == 200, out
    gw.same_messages(streams, 1, "put with the lease")
    ka = gw.streams("/v3/lease/keepalive", {"ID": lease})
    ref = gw.same_messages(ka, 1, "keepalive")
    assert ref[0]["result"]["TTL"] == "2"
    out = gw.same("/v3/kv/lease/timetolive", {"ID": lease, "keys": True}, mask=["TTL"])
    assert [unb64(k) for k in out.json()["keys"]] == [key.encode()]
    # Expiry: within TTL + etcd's 500 ms check (+ slack).
    deleted = gw.same_messages(streams, 1, "DELETE on expiry", timeout=8)
    event = deleted[0]["result"]["events"][0]
    assert event["type"] == "DELETE" and unb64(event["kv"]["key"]) == key.encode()
    gw.same("/v3/kv/range", get_body(key))
    out = gw.same("/v3/kv/lease/timetolive", {"ID": lease})
    assert out.json()["TTL"] == "-1"
    # lua-resty-etcd only needs "status < 500" from a keepalive of a dead lease.
    ka = gw.streams("/v3/lease/keepalive", {"ID": lease})
    ref = gw.same_messages(ka, 1, "keepalive of an expired lease")
    assert "TTL" not in ref[0]["result"]


def test_large_value_through_watch(gw):
    key = PREFIX + "/plugin_metadata/big"
    value = bytes(range(256)) * 1200                     # 300 KiB, every byte value
    now = rev_of(gw.same("/v3/kv/range", '{"key":"%s"}' % b64(PREFIX + "/")))
    streams = gw.streams("/v3/watch", watch_body(PREFIX + "/", PREFIX + "0",
                                                 start_revision=Rev(now + 1)))
    gw.same_messages(streams, 1, "created")
    gw.same("/v3/kv/put", {"key": b64(key), "value": b64(value)})
    msg = gw.same_messages(streams, 1, "the 300 KiB put")
    assert unb64(msg[0]["result"]["events"][0]["kv"]["value"]) == value
    for stream in streams:
        stream.close()
        check_framing(stream)


def test_watch_cancel_by_closing_and_many_watchers(gw):
    # Every worker and subsystem holds its own watch; they come and go.
    now = rev_of(gw.same("/v3/kv/range", '{"key":"%s"}' % b64(PREFIX + "/")))
    body = watch_body(PREFIX + "/", PREFIX + "0", start_revision=Rev(now + 1))
    many = [gw.streams("/v3/watch", body) for _ in range(20)]
    for streams in many:
        gw.same_messages(streams, 1, "created")
    for streams in many[:15]:
        for stream in streams:
            stream.close()
    gw.same("/v3/kv/put", set_body(PREFIX + "/routes/w", {"uri": "/w"}))
    for streams in many[15:]:
        gw.same_messages(streams, 1, "event on the watchers still open")
    # New watchers after all that still work.
    streams = gw.streams("/v3/watch", body)
    gw.same_messages(streams, 2, "a new watcher replays the event")


def test_keepalive_connection_pool(gw):
    # lua-resty-http reuses pooled connections for unary calls; no Connection header.
    before = (gw.ref.connects, gw.got.connects)
    for i in range(20):
        gw.same("/v3/kv/put", set_body(PREFIX + "/routes/k%d" % i, {"i": i}))
        gw.same("/v3/kv/range", get_body(PREFIX + "/routes/k%d" % i))
    assert (gw.ref.connects, gw.got.connects) == before


def test_watch_waits_for_a_future_start_revision(gw):
    now = rev_of(gw.same("/v3/kv/range", '{"key":"%s"}' % b64(PREFIX + "/")))
    body = watch_body(PREFIX + "/", PREFIX + "0", start_revision=Rev(now + 3))
    streams = gw.streams("/v3/watch", body)
    gw.same_messages(streams, 1, "created")
    for i in range(3):
        gw.same("/v3/kv/put", set_body(PREFIX + "/routes/f%d" % i, {"i": i}))
    msgs = gw.same_messages(streams, 1, "only the write at the start revision")
    assert len(msgs[0]["result"]["events"]) == 1
    assert int(msgs[0]["result"]["header"]["revision"]) == now + 3
