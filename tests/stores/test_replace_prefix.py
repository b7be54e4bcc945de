"""replace_prefix, the embedding API's full resync: only the real differences become
events, all in one revision, and nothing at all when nothing differs -- on every store,
seen alike by the store's change feed, the in-process client, a remote gRPC watcher and
an HTTP (APISIX-style) watcher."""

import json

import pytest

from etcdadapter import errors
from etcdadapter.embed import DELETE, PUT
from etcdadapter.pb.etcdserverpb import rpc_pb2 as rpc
from etcdadapter.store.base import DELETE as S_DELETE
from etcdadapter.store.base import KV, PUT as S_PUT, Change, Event
from support.fired import result
from support.gateway_client import GatewayClient, prefix_end, unb64, watch_body

from support import servers
from support.embedding import embedded  # noqa: F401 (the fixture)
from support.embedding import endpoint, event_tuple
from support.servers import GrpcWatch, wait_until
from support.stores import call, settle


def test_store_replace_prefix_writes_only_differences(make_store):
    s = make_store(initial_revision=1)
    changes = []
    s.subscribe(changes.append)
    lease, _ttl = result(s.lease_grant(0, 60))
    for key, value, lease_id in [(b"a", b"before", 0), (b"a/", b"root", 0),
                                 (b"a/1", b"1", 0), (b"a/2", b"2", 0), (b"a/3", b"3", lease),
                                 (b"a0", b"after", 0)]:
        result(s.put(rpc.PutRequest(key=key, value=value, lease=lease_id)))  # 2..7
    items = {b"a/1": b"1", b"a/2": b"two", b"a/3": b"3", b"a/4": b"4"}
    revision, events = result(s.replace_prefix(b"a/", items))
    assert revision == 8
    expected = [
        Event(S_DELETE, KV(b"a/", 0, 8, 0, b"", 0), KV(b"a/", 3, 3, 1, b"root", 0)),
        Event(S_PUT, KV(b"a/2", 5, 8, 2, b"two", 0), KV(b"a/2", 5, 5, 1, b"2", 0)),
        # The same value, but on a lease: rewritten without it (it would expire).
        Event(S_PUT, KV(b"a/3", 6, 8, 2, b"3", 0), KV(b"a/3", 6, 6, 1, b"3", lease)),
        Event(S_PUT, KV(b"a/4", 8, 8, 1, b"4", 0), None),
    ]
    assert list(events) == expected
    settle(s)
    assert changes[-1] == Change(8, tuple(expected))
    got = result(s.range(rpc.RangeRequest(key=b"\0", range_end=b"\0")))
    assert [(kv.key, kv.value, kv.mod_revision) for kv in got.kvs] == [
        (b"a", b"before", 2), (b"a/1", b"1", 4), (b"a/2", b"two", 8), (b"a/3", b"3", 8),
        (b"a/4", b"4", 8), (b"a0", b"after", 7)]
    assert result(s.lease_time_to_live(lease, True)).keys == ()

    # The same items again: nothing written, no revision, no change fed.
    assert result(s.replace_prefix(b"a/", dict(items))) == (8, [])
    settle(s)
    assert len(changes) == 7 and s.revision == 8
    assert result(s.range(rpc.RangeRequest(key=b"a/2"))).header.revision == 8

    # Empty items clear the prefix (and only it) in one revision; the history has it.
    revision, events = result(s.replace_prefix(b"a/", {}))
    assert revision == 9 and [(e.type, e.kv.key) for e in events] == [
        (S_DELETE, b"a/1"), (S_DELETE, b"a/2"), (S_DELETE, b"a/3"), (S_DELETE, b"a/4")]
    history = result(s.history(8, b"a/", b"a0"))
    assert [(c.revision, len(c.events)) for c in history] == [(8, 4), (9, 4)]
    assert result(s.range(rpc.RangeRequest(key=b"a", range_end=b"b"))).count == 2


def _json_event(e):
    """(type, key, value, mod_revision) of one event of the JSON face."""
    kv = e["kv"]
    return (e.get("type", "PUT"), unb64(kv["key"]), unb64(kv.get("value", "")),
            int(kv["mod_revision"]))


def test_resync_of_5000_keys_emits_exactly_the_10_differences(embedded):
    adapter = embedded(max_txn_ops=128)
    client = adapter.client()
    prefix = "/apisix/routes/"

    def route(i, uri=None):
        return json.dumps({"id": str(i), "uri": uri or "/r/%d" % i,
                           "upstream": {"nodes": {"10.0.0.%d:80" % (i % 250): 1}}})
    items = {"%s%05d" % (prefix, i): route(i) for i in range(5000)}
    loaded = call(client.replace_prefix, prefix, items)
    assert (loaded.created, loaded.updated, loaded.deleted) == (5000, 0, 0)
    base = loaded.revision
    assert base == 2                       # one revision, not bounded by max_txn_ops
    call(client.put, "/apisix/upstreams/1", "u")                        # base + 1

    # Watchers: remote gRPC, HTTP/JSON (as APISIX), in-process.
    g = servers.GrpcClient(endpoint(adapter))
    remote = GrpcWatch(g.channel)
    remote.create(key=prefix.encode(), range_end=prefix_end(prefix), prev_kv=True)
    http = GatewayClient(endpoint(adapter)).stream(
        "/v3/watch", watch_body(prefix, prefix_end(prefix)))
    assert "created" in http.next()["result"]
    seen = []
    w = call(lambda: client.watch(prefix, prefix=True, prev_kv=True, callback=seen.append))
    call(lambda: w.created)

    new = dict(items)
    for i in (5000, 5001, 5002, 5003):                   # 4 new
        new["%s%05d" % (prefix, i)] = route(i)
    for i in (7, 2500, 4999):                            # 3 changed
        new["%s%05d" % (prefix, i)] = route(i, "/changed")
    for i in (0, 1234, 3333):                            # 3 removed
        del new["%s%05d" % (prefix, i)]
    replaced = call(client.replace_prefix, prefix, new)
    rev = base + 2
    assert replaced == (rev, 4, 3, 3)
    want = sorted(
        [(PUT, ("%s%05d" % (prefix, i)).encode()) for i in (5000, 5001, 5002, 5003, 7,
                                                             2500, 4999)]
        + [(DELETE, ("%s%05d" % (prefix, i)).encode()) for i in (0, 1234, 3333)],
        key=lambda t: t[1])

    # gRPC: exactly these 10 events, in one response, all at the new revision.
    response = remote.responses.get(timeout=20)
    assert [(("DELETE" if e.type else "PUT"), e.kv.key) for e in response.events] == want
    assert {e.kv.mod_revision for e in response.events} == {rev}
    assert response.header.revision == rev
    changed = [e for e in response.events if e.kv.key.endswith(b"02500")][0]
    assert b"/changed" in changed.kv.value and b"/r/2500" in changed.prev_kv.value
    # HTTP: the same 10 in one JSON message.
    msg = http.next(timeout=20)["result"]
    assert int(msg["header"]["revision"]) == rev
    assert [_json_event(e) for e in msg["events"]] == [
        (t, key, e.kv.value, rev) for (t, key), e in zip(want, response.events)]
    # In-process: the same as gRPC.
    wait_until(lambda: len(seen) == 10, 20, "10 events")
    assert [event_tuple(e) for e in seen] == [event_tuple(e) for e in response.events]

    # An identical resync: no event, no revision.
    again = call(client.replace_prefix, prefix, new)
    assert again == (rev, 0, 0, 0) and not again.changed
    assert call(client.get, prefix, prefix=True, count_only=True).revision == rev
    assert call(client.get, prefix, prefix=True, count_only=True).count == 5001
    assert remote.quiet(0.3) and http.quiet(0.1) and len(seen) == 10
    # ... and the watchers are alive: the next write is the next event everywhere.
    call(client.put, prefix + "99999", "x")
    assert [(e.kv.key, e.kv.mod_revision) for e in remote.events(1)] == [
        ((prefix + "99999").encode(), rev + 1)]
    assert [_json_event(e)[1] for e in http.next(timeout=20)["result"]["events"]] == [
        (prefix + "99999").encode()]
    wait_until(lambda: len(seen) == 11, 20, "11 events")
    assert seen[-1].revision == rev + 1
    remote.close()
    http.close()
    g.close()


@pytest.mark.parametrize("store_kind", ["memory"])
def test_replace_prefix_checks(embedded):
    client = embedded().client()
    for prefix, items in [("", {}), ("/a/", {"/b/x": "1"}), ("/a/", {"/a": "1"})]:
        with pytest.raises(errors.EtcdError) as info:
            call(client.replace_prefix, prefix, items)
        assert info.value in (errors.ErrKeyNotProvided,
                              errors.EtcdError(3, "etcd-adapter: key outside the "
                                                  "replaced prefix")), prefix
    # The prefix key itself belongs to the prefix (etcd's prefix range includes it).
    assert call(client.replace_prefix, "/a/", {"/a/": "root"}) == (2, 1, 0, 0)
