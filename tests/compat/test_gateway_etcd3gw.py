"""The PyPI client etcd3gw (an HTTP-gateway client built on ``requests``) against etcd and
against the server under test: the same calls must give the same results.

etcd3gw discovers its API prefix from ``GET /version`` (``etcdserver`` >= 3.4 -> ``/v3/``,
3.3 -> ``/v3beta/``).  Its watch reader decodes every HTTP chunk of the stream as one JSON
document (``iter_content(chunk_size=None)``), so it only works with a server that writes
each watch message as exactly one chunk -- as etcd does.

Results are compared after normalising (revisions shifted by the stores' offset,
cluster/member IDs and lease IDs replaced by placeholders).
"""

import json
import queue
import threading

import etcd3gw
import pytest
from etcd3gw import exceptions
from etcd3gw.lease import Lease

from support.gateway_client import STATUS_MASK, Normaliser, dump

pytestmark = pytest.mark.adapter


@pytest.fixture(scope="module")
def clients(shared_pair):
    made = []
    for server in (shared_pair.etcd, shared_pair.target):
        host, port = server.endpoint.rsplit(":", 1)
        made.append(etcd3gw.client(host=host, port=int(port), timeout=10))
    yield made
    for client in made:
        client.session.close()


@pytest.fixture
def both(clients, shared_pair):
    """``both(fn)`` runs ``fn(client)`` on etcd's client, then ours, and returns the two
    results normalised (or the exceptions they raised, by type and text)."""
    ids = ({}, {})

    def offset():
        revs = []
        for client in clients:
            reply = client.post(client.get_url("/kv/range"), json={
                "key": "AA==", "range_end": "AA==", "count_only": True})
            revs.append(int(reply["header"]["revision"]))
        return revs[1] - revs[0]

    state = {"offset": offset()}

    def run(fn, mask=(), compare=True):
        out = []
        for side, client in enumerate(clients):
            try:
                result = fn(client)
            except exceptions.Etcd3Exception as exc:
                # The server's error body, parsed: its key order is not compared.
                try:
                    detail = json.loads(exc.detail_text)
                except (TypeError, ValueError):
                    detail = exc.detail_text
                result = {"raised": type(exc).__name__, "reason": str(exc),
                          "detail": detail}
            norm = Normaliser(state["offset"] if side else 0, mask=mask, ids=ids[side],
                              replace=[(shared_pair.etcd.endpoint, "<ENDPOINT>"),
                                       (shared_pair.target.endpoint, "<ENDPOINT>")])
            out.append(norm(plain(result)))
        if compare:
            assert out[0] == out[1], "etcd3gw results differ:\n  etcd: %s\n  ours: %s" % (
                dump(out[0]), dump(out[1]))
        return out[0]

    yield run
    for client in clients:
        client.delete_prefix("/gw3/")
        leases = client.post(client.get_url("/lease/leases"), json={})
        for lease in leases.get("leases", []):
            client.post(client.get_url("/lease/revoke"), json={"ID": lease["ID"]})


def plain(value):
    """etcd3gw's results as JSON-like data (tuples -> lists, bytes -> text)."""
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (bytes, bytearray)):
        return "b:" + bytes(value).decode("latin-1")
    return value


def test_api_path_discovery(clients):
    for client in clients:
        assert client.api_path == "/v3/"


def test_put_get_delete(both):
    assert both(lambda c: c.put("/gw3/a", "1")) is True
    both(lambda c: c.put("/gw3/b", b"\x00\xff"))
    both(lambda c: c.put("/gw3/c", ""))
    assert both(lambda c: c.get("/gw3/a")) == ["b:1"]
    assert both(lambda c: c.get("/gw3/c")) == ["b:"]
    assert both(lambda c: c.get("/gw3/missing")) == []
    both(lambda c: c.get("/gw3/a", metadata=True))
    both(lambda c: c.get("/gw3/", range_end="/gw30", keys_only=True, limit=2))
    both(lambda c: c.get("/gw3/", range_end="/gw30", count_only=True, metadata=True))
    assert both(lambda c: c.delete("/gw3/a")) is True
    assert both(lambda c: c.delete("/gw3/a")) is False
    both(lambda c: c.delete("/gw3/b", prev_kv=True))


def test_get_prefix_and_sorting(both):
    for i, key in enumerate(["/gw3/p/3", "/gw3/p/1", "/gw3/p/2", "/gw3/q"]):
        both(lambda c: c.put(key, "v%d" % (9 - i)))
    both(lambda c: c.put("/gw3/p/1", "again"))
    result = both(lambda c: c.get_prefix("/gw3/p/"))
    assert [meta["key"] for _, meta in result] == [
        "b:/gw3/p/1", "b:/gw3/p/2", "b:/gw3/p/3"]
    both(lambda c: c.get_prefix("/gw3/p/", sort_order="descend", sort_target="mod"))
    both(lambda c: c.get_prefix("/gw3/", sort_order="ascend", sort_target="value"))
    both(lambda c: c.get_prefix("/gw3/", sort_order="descend", sort_target="version"))
    both(lambda c: c.get_all())
    assert both(lambda c: c.delete_prefix("/gw3/p/")) is True
    assert both(lambda c: c.get_prefix("/gw3/p/")) == []


def test_create_replace_and_transaction(both):
    assert both(lambda c: c.create("/gw3/t", "1")) is True
    assert both(lambda c: c.create("/gw3/t", "2")) is False
    assert both(lambda c: c.replace("/gw3/t", "1", "2")) is True
    assert both(lambda c: c.replace("/gw3/t", "1", "3")) is False
    txn = {"compare": [{"key": "L2d3My90", "result": "EQUAL", "target": "VALUE",
                        "value": "Mg=="}],
           "success": [{"request_range": {"key": "L2d3My90"}},
                       {"request_put": {"key": "L2d3My91", "value": "eA==",
                                        "prev_kv": True}}],
           "failure": [{"request_delete_range": {"key": "L2d3My90"}}]}
    result = both(lambda c: c.transaction(txn))
    assert result["succeeded"] is True
    txn["compare"][0]["value"] = "eA=="
    result = both(lambda c: c.transaction(txn))
    assert "succeeded" not in result


def test_errors_surface_alike(both):
    # etcd3gw raises Etcd3Exception with the reason phrase and the server's body.
    out = both(lambda c: c.get(""))
    assert out["raised"] == "Etcd3Exception" and out["reason"] == "Bad Request"
    assert out["detail"]["error"] == "etcdserver: key is not provided"
    out = both(lambda c: c.post(c.get_url("/kv/put"),
                                json={"key": "L2d3My94", "lease": 4242}))
    assert out["reason"] == "Not Found"
    both(lambda c: c.post(c.get_url("/kv/range"), json={"key": "nope"}))


def test_lease_lifecycle(both):
    def grant(c):
        lease = c.lease(ttl=30)
        c.put("/gw3/leased", "x", lease=lease)
        return {"ID": lease.id, "ttl": lease.ttl(), "refresh": lease.refresh(),
                "keys": lease.keys()}

    result = both(grant, mask=["ttl"])
    assert result["refresh"] == 30 and result["keys"] == ["b:/gw3/leased"]

    def revoke(c):
        (lease,) = c.post(c.get_url("/lease/leases"), json={})["leases"]
        handle = Lease(int(lease["ID"]), client=c)
        return {"revoked": handle.revoke(), "ttl": handle.ttl(), "keys": handle.keys(),
                "refresh": handle.refresh(), "left": c.get("/gw3/leased")}

    assert both(revoke) == {"revoked": True, "ttl": -1, "keys": [], "refresh": -1,
                            "left": []}


def test_lock(both):
    def lock(c):
        first = c.lock("gw3-lock", ttl=30)
        second = c.lock("gw3-lock", ttl=30)
        out = [first.acquire(), first.is_acquired(), second.acquire(), first.release(),
               second.acquire(), second.is_acquired(), second.release(), first.release()]
        for held in (first, second):
            held.lease.revoke()
        return out

    assert both(lock) == [True, True, False, True, True, True, True, False]


def _collect(events, count, timeout=10):
    """The first ``count`` events of an etcd3gw watch iterator (in a thread: it blocks)."""
    got = queue.Queue()

    def run():
        for event in events:
            got.put(event)

    threading.Thread(target=run, daemon=True).start()
    out = []
    for _ in range(count):
        try:
            out.append(got.get(timeout=timeout))
        except queue.Empty:
            break
    return out


def test_watch(both, clients):
    watches = [c.watch_prefix("/gw3/w/", prev_kv=True) for c in clients]
    try:
        both(lambda c: c.put("/gw3/w/1", "a"))
        both(lambda c: c.put("/gw3/w/1", "b"))
        both(lambda c: c.delete("/gw3/w/1"))
        results = [_collect(events, 3) for events, _ in watches]
        out = both(lambda c: results[clients.index(c)])
        assert [e.get("type", "PUT") for e in out] == ["PUT", "PUT", "DELETE"]
        # etcd3gw decodes kv.value but leaves prev_kv as the gateway sent it.
        assert out[1]["kv"]["value"] == "b:b" and out[1]["prev_kv"]["value"] == "YQ=="
    finally:
        for _, cancel in watches:
            cancel()


def test_watch_once_and_replay(both, clients):
    # Each server's own revision of the first put (they differ by the stores' offset).
    revs = {}
    for c in clients:
        reply = c.post(c.get_url("/kv/put"), json={"key": "L2d3My9vbmNl", "value": "MQ=="})
        revs[id(c)] = int(reply["header"]["revision"])
    both(lambda c: c.put("/gw3/once", "2"))
    # From a past revision: the first event is the replayed one.
    event = both(lambda c: c.watch_once("/gw3/once", timeout=5,
                                        start_revision=revs[id(c)]))
    assert event["kv"]["value"] == "b:1"
    event = both(lambda c: c.watch_prefix_once("/gw3/", timeout=5,
                                               start_revision=revs[id(c)] + 1))
    assert event["kv"]["value"] == "b:2"
    # Nothing happens: both time out.
    for c in clients:
        with pytest.raises(exceptions.WatchTimedOut):
            c.watch_once("/gw3/never", timeout=0.5)


def test_status_and_members(both):
    result = both(lambda c: c.status(), mask=STATUS_MASK)
    assert result["leader"] == "<MEMBER>"
    result = both(lambda c: c.members(), mask=["peerURLs"])
    assert result[0]["name"] == "default"
    assert result[0]["clientURLs"] == ["http://<ENDPOINT>"]
