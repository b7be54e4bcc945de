"""Watch over real gRPC: our server against a real etcd, same scripts, same responses.

Each scenario opens the same watch streams on a fresh etcd and a fresh server under test
(grpcio ``stream_stream('/etcdserverpb.Watch/Watch')``), runs the same steps (stream
requests and KV writes) on both and compares, after every step, the responses each stream
received: cluster/member IDs and raft terms normalised, revisions shifted by the offset
between the two stores (ours is seeded from the clock), start revisions in requests mapped
the other way.  etcd is asked first and waited on until it is quiet; our server must then
send the same number of responses, with nothing extra after.

Also ``etcdctl watch`` (``--prefix``, ``--rev``, ``--prev-kv``, ``-w json``) against both.

Known, deliberate differences with the etcd 3.4.23 used as reference (we follow 3.5.24+):
negative start revisions and progress requests on a stream with unsynced watchers or no
watchers; those are checked on our server alone.
"""

import subprocess
import time

import grpc
import pytest

from etcdadapter.pb.etcdserverpb import rpc_pb2 as rpc
from etcdadapter.services.watch_hub import prefix_end

from support.etcdctl_watch import etcdctl_watch, normalise_watch_output, stop_watch
from support.watch import Dual, WatchSession

pytestmark = pytest.mark.adapter

# Every test here runs with the adapter on each store (tests/conftest.py).
TARGET_STORES = ("memory", "sqlite", "mariadb", "postgresql")


@pytest.fixture
def dual(pair):
    d = Dual(pair)
    yield d
    d.close()


def _count(result, name="s"):
    return len(result[name])


# ---------------------------------------------------------------------------------------
# Scenarios

def test_create_ids_ranges_and_live_events(dual):
    d = dual
    d.open("s")
    d.open("t")
    d.request("s", "create_request", key=b"a")                             # id 0
    d.request("s", "create_request", key=b"/apisix/", range_end=b"/apisix0")
    d.request("s", "create_request", key=b"b", range_end=b"\0")            # from key
    d.request("s", "create_request", key=b"", range_end=b"\0", watch_id=7)  # everything
    d.request("s", "create_request", key=b"a", range_end=b"c", watch_id=3)
    d.request("s", "create_request", key=b"x", watch_id=7)                 # duplicate
    d.request("s", "create_request", key=b"x", range_end=b"a")             # empty range
    d.request("s", "create_request", key=b"x", range_end=b"x")             # empty range
    d.request("s", "create_request", key=b"")                              # key "\0"
    d.request("t", "create_request", key=b"a")                             # id 0 again
    d.put(b"a", b"1")
    d.put(b"/apisix/routes/1", b"r")
    d.put(b"/apisix", b"not in the prefix")
    d.put(b"\0", b"nul")
    d.txn(("put", b"a", b"2"), ("put", b"b", b"3"), ("put", b"/apisix/x", b"4"))
    d.delete(b"a", b"c")
    d.put(b"zzz")
    d.request("s", "cancel_request", watch_id=3)
    d.request("s", "cancel_request", watch_id=3)                           # unknown
    d.request("s", "cancel_request", watch_id=12345)
    d.put(b"b", b"after cancel")
    d.request("s", "progress_request")                                     # all synced
    d.request("s", "create_request", key=b"a")                             # auto id
    d.put(b"a", b"5")


def test_replay_options_and_future_start(dual):
    d = dual
    for i in range(6):
        d.put(b"k", b"%d" % i)                                   # 2..7
    d.put(b"k2")                                                 # 8
    d.delete(b"k")                                               # 9
    d.put(b"k", b"again")                                        # 10
    d.open("s")
    r = d.request("s", "create_request", key=b"k", start_revision=3, prev_kv=True)
    assert _count(r) == 2
    d.request("s", "create_request", key=b"k", range_end=b"l", start_revision=2,
              filters=[rpc.WatchCreateRequest.NOPUT])
    d.request("s", "create_request", key=b"k", range_end=b"l", start_revision=2,
              filters=[rpc.WatchCreateRequest.NODELETE], prev_kv=True)
    d.request("s", "create_request", key=b"k", start_revision=10)  # the current revision
    d.request("s", "create_request", key=b"k", start_revision=13)  # future
    d.request("s", "create_request", key=b"k", start_revision=1)   # before the first write
    d.put(b"k", b"11")                                           # 11
    d.put(b"k", b"12")                                           # 12
    d.put(b"k", b"13")                                           # 13: future one starts
    d.delete(b"k")                                               # 14
    d.request("s", "progress_request")


def test_compaction(dual):
    d = dual
    for i in range(6):
        d.put(b"c", b"%d" % i)                                   # 2..7
    d.compact(5)
    d.open("s")
    r = d.request("s", "create_request", key=b"c", start_revision=3)
    assert _count(r) == 2 and r["s"][1].compact_revision == 5
    d.request("s", "create_request", key=b"c", start_revision=5, prev_kv=True)
    d.request("s", "create_request", key=b"c")                   # auto ID skips 0
    d.request("s", "cancel_request", watch_id=0)                 # the compacted one
    d.request("s", "create_request", key=b"c", start_revision=4, watch_id=9)
    d.put(b"c", b"live")


def test_large_catch_up_batches(dual):
    d = dual
    # 1200 revisions without comparing after each write (no stream is open yet)
    for i in range(1200):
        for client in (d.pair.etcd_client, d.pair.target_client):
            res = client.call("/etcdserverpb.KV/Put",
                              rpc.PutRequest(key=b"b/%d" % (i % 10), value=b"%d" % i),
                              rpc.PutResponse)
            assert res.ok
    d.open("s")
    r = d.request("s", "create_request", key=b"b/", range_end=b"b0", start_revision=2)
    sizes = [len(x.events) for x in r["s"]]
    assert sizes == [0, 1000, 200]
    d.put(b"b/0", b"live")


def test_fragment(dual):
    d = dual
    big = b"x" * (900 * 1024)
    for i in range(4):
        d.put(b"f/%d" % i, big)                                  # 2..5: ~3.6 MiB
    d.open("s")
    r = d.request("s", "create_request", key=b"f/", range_end=b"f0", start_revision=2,
                  fragment=True)
    assert [x.fragment for x in r["s"]] == [False, True, False]
    r = d.request("s", "create_request", key=b"f/", range_end=b"f0", start_revision=2)
    assert [len(x.events) for x in r["s"]] == [0, 4]


def test_half_close_keeps_the_stream(dual):
    d = dual
    d.put(b"h", b"0")
    d.open("s")
    d.request("s", "create_request", key=b"h", start_revision=2)
    d.half_close("s")
    d.put(b"h", b"1")
    d.put(b"h", b"2")


def test_many_streams_and_watchers(dual):
    d = dual
    for n in range(4):
        d.open("s%d" % n)
        for k in (b"/apisix/", b"/apisix/routes/", b"/apisix/upstreams/"):
            d.request("s%d" % n, "create_request", key=k, range_end=prefix_end(k),
                      prev_kv=bool(n % 2))
    d.put(b"/apisix/routes/1", b"r1")
    d.put(b"/apisix/upstreams/1", b"u1")
    d.txn(("put", b"/apisix/routes/2", b"r2"), ("put", b"/apisix/upstreams/1", b"u2"),
          ("delete", b"/apisix/routes/1"))


# ---------------------------------------------------------------------------------------
# Our server alone: the 3.5.24+ behaviours etcd 3.4.23 does not have

def test_target_only_35_behaviours(pair):
    ch = grpc.insecure_channel(pair.target.endpoint)
    try:
        s = WatchSession(ch)
        s.send(rpc.WatchRequest(progress_request=rpc.WatchProgressRequest()))
        assert s.collect_quiet(0.3) == []                        # no watchers: nothing
        s.send(rpc.WatchRequest(create_request=rpc.WatchCreateRequest(
            key=b"a", start_revision=-1)))
        r = s.collect(1)
        assert len(r) == 1
        assert (r[0].watch_id, r[0].created, r[0].canceled, r[0].cancel_reason) == (
            -1, True, True, "etcdserver: mvcc: required revision has been compacted")
        assert r[0].header.revision == pair.target.base_revision
        s.send(rpc.WatchRequest(create_request=rpc.WatchCreateRequest(key=b"a")))
        assert [x.watch_id for x in s.collect(1)] == [0]
        s.send(rpc.WatchRequest(progress_request=rpc.WatchProgressRequest()))
        r = s.collect(1)
        assert [(x.watch_id, x.header.revision) for x in r] == [
            (-1, pair.target.base_revision)]
        s.close()
    finally:
        ch.close()


ETCDCTL_CASES = {
    "prefix": (["--prefix", "w/"], False),
    "prefix_prev_kv": (["--prefix", "--prev-kv", "w/"], False),
    "rev": (["--rev", "{rev+2}", "w/a"], False),
    "rev_prefix_prev_kv_json": (["--rev", "{rev+1}", "--prefix", "--prev-kv", "-w", "json",
                                 "w/"], True),
    "range": (["w/a", "w/c"], False),
}


@pytest.mark.parametrize("case", sorted(ETCDCTL_CASES))
def test_etcdctl_watch(pair, case):
    args, as_json = ETCDCTL_CASES[case]

    def write(put_then_delete):
        for server_client in (pair.etcd_client, pair.target_client):
            for key, value in put_then_delete:
                if value is None:
                    req, m, cls = (rpc.DeleteRangeRequest(key=key),
                                   "/etcdserverpb.KV/DeleteRange", rpc.DeleteRangeResponse)
                else:
                    req, m, cls = (rpc.PutRequest(key=key, value=value),
                                   "/etcdserverpb.KV/Put", rpc.PutResponse)
                assert server_client.call(m, req, cls).ok

    write([(b"w/a", b"1"), (b"w/b", b"2"), (b"w/a", b"3")])        # revisions 2..4
    procs = []
    for server in (pair.etcd, pair.target):
        a = [x.replace("{rev+2}", str(server.base_revision + 2))
              .replace("{rev+1}", str(server.base_revision + 1)) for x in args]
        procs.append(etcdctl_watch(server, a))
    time.sleep(1.0)
    write([(b"w/c", b"4"), (b"w/a", None), (b"x", b"5"), (b"w/b", b"6")])
    time.sleep(1.0)
    (ref_out, ref_err), (got_out, got_err) = [stop_watch(p) for p in procs]
    assert ref_out, ref_err
    assert (normalise_watch_output(got_out, pair.offset, as_json)
            == normalise_watch_output(ref_out, 0, as_json))
    assert got_err == ref_err


def test_etcdctl_watch_compacted(pair):
    for client in (pair.etcd_client, pair.target_client):
        for i in range(4):
            assert client.call("/etcdserverpb.KV/Put", rpc.PutRequest(key=b"k", value=b"v"),
                               rpc.PutResponse).ok
    for server, client in ((pair.etcd, pair.etcd_client), (pair.target, pair.target_client)):
        assert client.call("/etcdserverpb.KV/Compact", rpc.CompactionRequest(
            revision=server.base_revision + 3), rpc.CompactionResponse).ok
    results = []
    for server in (pair.etcd, pair.target):
        proc = etcdctl_watch(server, ["--rev", str(server.base_revision + 1), "k"])
        try:
            out, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            out, err = stop_watch(proc)
        results.append((proc.returncode, out.decode(), err.decode()))
    ref, got = results
    assert ref[0] != 0 and "compacted" in ref[2]
    assert got[0] == ref[0]
    assert got[1] == ref[1]
    assert got[2].replace(str(pair.target.base_revision + 3), "<C>") == \
        ref[2].replace(str(pair.etcd.base_revision + 3), "<C>")
