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

import json
import os
import queue
import subprocess
import threading
import time

import grpc
import pytest

from etcdadapter.pb.etcdserverpb import rpc_pb2 as rpc
from etcdadapter.services.watch_hub import prefix_end

from support import servers

pytestmark = pytest.mark.adapter

# Every test here runs with the adapter on each store (tests/conftest.py).
TARGET_STORES = ("memory", "sqlite", "mariadb", "postgresql")

QUIET = 0.35          # etcd is "done" after this long without a response
TARGET_WAIT = 5.0     # how long our server may take for the responses etcd sent


def _ser(m):
    return m.SerializeToString()


class WatchSession(object):
    """One Watch stream on one server, read by a thread into a queue."""

    def __init__(self, channel):
        self.requests = queue.Queue()
        self.responses = queue.Queue()
        call = channel.stream_stream("/etcdserverpb.Watch/Watch", request_serializer=_ser,
                                     response_deserializer=rpc.WatchResponse.FromString)
        self.call = call(iter(self.requests.get, None))
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        try:
            for r in self.call:
                self.responses.put(r)
        except grpc.RpcError as exc:
            self.responses.put(exc)

    def send(self, request):
        self.requests.put(request)

    def half_close(self):
        self.requests.put(None)

    def close(self):
        self.call.cancel()

    def collect_quiet(self, quiet=QUIET):
        out = []
        while True:
            try:
                out.append(self.responses.get(timeout=quiet))
            except queue.Empty:
                return out

    def collect(self, n, timeout=TARGET_WAIT, extra=0.1):
        out = []
        deadline = time.monotonic() + timeout
        while len(out) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                out.append(self.responses.get(timeout=left))
            except queue.Empty:
                break
        out.extend(self.collect_quiet(extra))
        return out


def _canonical(responses):
    """Responses of different watchers in one revision come in no particular order (etcd
    iterates a Go map): within each run of event responses, order by watch_id (stable, so
    each watcher's own order is kept and compared)."""
    out, run = [], []
    for r in responses:
        if not isinstance(r, Exception) and r.events and not (r.created or r.canceled):
            run.append(r)
            continue
        out.extend(sorted(run, key=lambda x: x.watch_id))
        run = []
        out.append(r)
    out.extend(sorted(run, key=lambda x: x.watch_id))
    return out


def _norm(responses, offset):
    out = []
    for r in _canonical(responses):
        if isinstance(r, Exception):
            out.append("error: %s %s" % (r.code(), r.details()))
        else:
            out.append(servers.show(servers.normalise_response(r, offset)))
    return out


class Dual(object):
    """The same watch streams and writes on etcd (ref) and our server (target)."""

    def __init__(self, pair):
        self.pair = pair
        self.offset = pair.offset
        self.channels = []
        self.streams = {}
        self.steps = []

    def _channel(self, server):
        ch = grpc.insecure_channel(server.endpoint, options=[
            ("grpc.max_receive_message_length", -1),
            ("grpc.max_send_message_length", -1)])
        self.channels.append(ch)
        return ch

    def open(self, name):
        self.streams[name] = (WatchSession(self._channel(self.pair.etcd)),
                              WatchSession(self._channel(self.pair.target)))

    def close(self):
        for ref, got in self.streams.values():
            ref.close()
            got.close()
        for ch in self.channels:
            ch.close()

    # -- steps
    def request(self, name, what, **kw):
        """Send a WatchRequest (what = create_request/cancel_request/progress_request)
        on stream ``name`` of both servers; then compare."""
        cls = {"create_request": rpc.WatchCreateRequest,
               "cancel_request": rpc.WatchCancelRequest,
               "progress_request": rpc.WatchProgressRequest}[what]
        req = rpc.WatchRequest(**{what: cls(**kw)})
        ref, got = self.streams[name]
        ref.send(req)
        got.send(servers.map_request_revisions(req, self.offset))
        return self.compare("%s %s %r" % (name, what, kw))

    def half_close(self, name):
        ref, got = self.streams[name]
        ref.half_close()
        got.half_close()
        return self.compare("%s half-close" % name)

    def write(self, method, request, response_class):
        ref = self.pair.etcd_client.call(method, request, response_class)
        got = self.pair.target_client.call(
            method, servers.map_request_revisions(request, self.offset), response_class)
        assert ref.error() == got.error(), (method, ref, got)
        return self.compare("%s %s" % (method.rsplit("/", 1)[1],
                                       str(request).replace("\n", " ")))

    def put(self, key, value=b"v"):
        return self.write("/etcdserverpb.KV/Put", rpc.PutRequest(key=key, value=value),
                          rpc.PutResponse)

    def delete(self, key, range_end=b""):
        return self.write("/etcdserverpb.KV/DeleteRange",
                          rpc.DeleteRangeRequest(key=key, range_end=range_end),
                          rpc.DeleteRangeResponse)

    def txn(self, *ops):
        req = rpc.TxnRequest()
        for op in ops:
            o = req.success.add()
            if op[0] == "put":
                o.request_put.key, o.request_put.value = op[1], op[2]
            else:
                o.request_delete_range.key = op[1]
                if len(op) > 2:
                    o.request_delete_range.range_end = op[2]
        return self.write("/etcdserverpb.KV/Txn", req, rpc.TxnResponse)

    def compact(self, revision):
        return self.write("/etcdserverpb.KV/Compact", rpc.CompactionRequest(
            revision=revision, physical=True), rpc.CompactionResponse)

    def compare(self, what):
        """Collect every stream's responses on both servers and compare them."""
        names = sorted(self.streams)
        if not names:
            return {}
        want = {name: [] for name in names}
        have = {name: [] for name in names}
        last = last_ours = time.monotonic()
        while time.monotonic() - last < QUIET:      # etcd: until all streams are quiet
            time.sleep(0.02)
            for name in names:
                ref, got = self.streams[name]
                while not ref.responses.empty():
                    want[name].append(ref.responses.get_nowait())
                    last = time.monotonic()
                while not got.responses.empty():   # ours meanwhile
                    have[name].append(got.responses.get_nowait())
                    last_ours = time.monotonic()
        for name in names:
            have[name].extend(self.streams[name][1].collect(
                len(want[name]) - len(have[name]), extra=0))
        # Nothing more may follow from ours: wait unless ours has been quiet that long.
        time.sleep(max(0.0, 0.1 - (time.monotonic() - last_ours)))
        for name in names:
            have[name].extend(self.streams[name][1].collect_quiet(0.001))
        for name in names:
            w, h = _norm(want[name], 0), _norm(have[name], self.offset)
            self.steps.append((what, name, len(w)))
            assert h == w, "after step %d (%s), stream %s:\n--- etcd:\n%s\n--- ours:\n%s" % (
                len(self.steps), what, name, "\n".join(w), "\n".join(h))
        return want


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


# ---------------------------------------------------------------------------------------
# etcdctl watch

def _etcdctl_watch(server, args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL_")}
    env["ETCDCTL_API"] = "3"
    cmd = [servers.ETCDCTL_BIN, "--endpoints=" + server.endpoint, "--dial-timeout=3s",
           "watch"] + args
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


_ID_KEYS = ("cluster_id", "member_id", "raft_term")
_REV_KEYS = ("revision", "create_revision", "mod_revision", "compact_revision",
             "CompactRevision")


def _norm_json(obj, offset):
    if isinstance(obj, list):
        return [_norm_json(x, offset) for x in obj]
    if not isinstance(obj, dict):
        return obj
    out = {}
    for k, v in obj.items():
        if k in _ID_KEYS and v:
            v = "<ID>"
        elif k in _REV_KEYS and isinstance(v, int) and v > 0:
            v -= offset
        else:
            v = _norm_json(v, offset)
        out[k] = v
    return out


def _norm_out(text, offset, as_json):
    if not as_json:
        return text
    lines = []
    for line in text.splitlines():
        try:
            lines.append(json.dumps(_norm_json(json.loads(line), offset), sort_keys=True))
        except ValueError:
            lines.append(line)
    return "\n".join(lines)


def _stop(proc):
    proc.terminate()
    try:
        out, err = proc.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


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
        procs.append(_etcdctl_watch(server, a))
    time.sleep(1.0)
    write([(b"w/c", b"4"), (b"w/a", None), (b"x", b"5"), (b"w/b", b"6")])
    time.sleep(1.0)
    (ref_out, ref_err), (got_out, got_err) = [_stop(p) for p in procs]
    assert ref_out, ref_err
    assert _norm_out(got_out, pair.offset, as_json) == _norm_out(ref_out, 0, as_json)
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
        proc = _etcdctl_watch(server, ["--rev", str(server.base_revision + 1), "k"])
        try:
            out, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            out, err = _stop(proc)
        results.append((proc.returncode, out.decode(), err.decode()))
    ref, got = results
    assert ref[0] != 0 and "compacted" in ref[2]
    assert got[0] == ref[0]
    assert got[1] == ref[1]
    assert got[2].replace(str(pair.target.base_revision + 3), "<C>") == \
        ref[2].replace(str(pair.etcd.base_revision + 3), "<C>")
