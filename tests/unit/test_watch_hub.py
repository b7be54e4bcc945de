"""Unit tests of the watch fan-out (WatchHub) and the watch stream protocol (WatchService).

Deterministic: MemoryStore(initial_revision=1) like a fresh etcd, a fake ServerStream that
collects responses, twisted.internet.task.Clock for progress and resync timers.
"""

import random

import pytest
from twisted.internet import defer, task

from etcdadapter.pb.etcdserverpb import rpc_pb2 as rpc
from etcdadapter.pb.mvccpb import kv_pb2
from etcdadapter.services import watch_hub
from etcdadapter.services.identity import ServerIdentity
from etcdadapter.services.rpc import BIDI_STREAM, CallContext, ServerStream
from etcdadapter.services.watch import WatchService
from etcdadapter.services.watch_hub import (
    SYNCED, UNSYNCED, RangeIndex, WatchHub, Watcher, prefix_end)
from etcdadapter.store.memory import MemoryStore
from support.fired import result as _result

PUT = kv_pb2.Event.PUT
DELETE = kv_pb2.Event.DELETE
NOPUT = rpc.WatchCreateRequest.NOPUT
NODELETE = rpc.WatchCreateRequest.NODELETE
COMPACTED = "etcdserver: mvcc: required revision has been compacted"


# ---------------------------------------------------------------------------------------
# Harness

class FakeStream(ServerStream):
    def __init__(self):
        ServerStream.__init__(self, CallContext())
        self.sent = []
        self.pending = 0
        self.finished = False

    def send(self, response):
        assert not self.closed
        self.sent.append(response)

    def finish(self, error=None):
        self.closed = True
        self.finished = True

    def pending_bytes(self):
        return self.pending

    def take(self):
        out, self.sent = self.sent, []
        return out


class Env(object):
    def __init__(self, store=None, **service_kw):
        self.store = store if store is not None else MemoryStore(initial_revision=1)
        self.identity = ServerIdentity()
        self.clock = task.Clock()
        hub_kw = {k: service_kw.pop(k) for k in list(service_kw)
                  if k in ("batch_revisions", "buffer_bytes", "resync_interval")}
        self.hub = WatchHub(self.store, self.identity, clock=self.clock, **hub_kw)
        service_kw.setdefault("rand", lambda: 0.0)
        self.service = WatchService(self.hub, self.store, self.identity, clock=self.clock,
                                    **service_kw)
        self.method = self.service.methods()[0]

    # -- streams
    def stream(self):
        s = FakeStream()
        self.method.handler(s)
        return s

    def create(self, s, key=b"", **kw):
        s.on_message(rpc.WatchRequest(create_request=rpc.WatchCreateRequest(key=key, **kw)))

    def cancel(self, s, wid):
        s.on_message(rpc.WatchRequest(cancel_request=rpc.WatchCancelRequest(watch_id=wid)))

    def progress(self, s):
        s.on_message(rpc.WatchRequest(progress_request=rpc.WatchProgressRequest()))

    # -- writes
    def put(self, key, value=b"v", **kw):
        return _result(self.store.put(rpc.PutRequest(key=key, value=value, **kw)))

    def delete(self, key, range_end=b""):
        return _result(self.store.delete_range(
            rpc.DeleteRangeRequest(key=key, range_end=range_end)))

    def txn(self, *ops):
        req = rpc.TxnRequest()
        for op in ops:
            o = req.success.add()
            if op[0] == "put":
                o.request_put.key = op[1]
                o.request_put.value = op[2]
            else:
                o.request_delete_range.key = op[1]
                if len(op) > 2:
                    o.request_delete_range.range_end = op[2]
        return _result(self.store.txn(req))

    def compact(self, rev):
        return _result(self.store.compact(rev))


def ev(e):
    """mvccpb.Event -> a comparable tuple."""
    t = ("PUT" if e.type == PUT else "DELETE", e.kv.key, e.kv.value, e.kv.mod_revision)
    if e.type == PUT:
        t += (e.kv.create_revision, e.kv.version)
    if e.HasField("prev_kv"):
        t += ("prev", e.prev_kv.value, e.prev_kv.mod_revision)
    return t


def summ(r):
    """WatchResponse -> a compact dict of what is set."""
    d = {"rev": r.header.revision, "id": r.watch_id}
    for name in ("created", "canceled", "compact_revision", "cancel_reason", "fragment"):
        v = getattr(r, name)
        if v:
            d[name] = v
    if r.events:
        d["events"] = [ev(e) for e in r.events]
    return d


def summs(rs):
    return [summ(r) for r in rs]


def check_headers(env, rs):
    for r in rs:
        assert r.HasField("header")
        assert r.header.cluster_id == env.identity.cluster_id
        assert r.header.member_id == env.identity.member_id
        assert r.header.raft_term == env.identity.raft_term


@pytest.fixture
def env():
    return Env()


# ---------------------------------------------------------------------------------------
# Method registration

def test_method_registration(env):
    m = env.method
    assert m.path == "/etcdserverpb.Watch/Watch"
    assert m.request_type is rpc.WatchRequest and m.response_type is rpc.WatchResponse
    assert m.kind == BIDI_STREAM
    assert m.http_paths == ("/v3/watch",)


# ---------------------------------------------------------------------------------------
# Create, IDs, ranges

def test_created_then_live_events_with_revisions(env):
    s = env.stream()
    env.create(s, b"a")
    assert summs(s.take()) == [{"rev": 1, "id": 0, "created": True}]
    env.put(b"a", b"1")
    env.put(b"b", b"x")
    env.put(b"a", b"2")
    env.delete(b"a")
    rs = s.take()
    check_headers(env, rs)
    assert summs(rs) == [
        {"rev": 2, "id": 0, "events": [("PUT", b"a", b"1", 2, 2, 1)]},
        {"rev": 4, "id": 0, "events": [("PUT", b"a", b"2", 4, 2, 2)]},
        {"rev": 5, "id": 0, "events": [("DELETE", b"a", b"", 5)]},
    ]
    # a DELETE's kv carries key and mod_revision only
    d = rs[2].events[0].kv
    assert (d.create_revision, d.version, d.value, d.lease) == (0, 0, b"", 0)


def test_auto_ids_per_stream_skip_used_and_duplicates(env):
    s = env.stream()
    env.create(s, b"a", watch_id=1)
    env.create(s, b"a")
    env.create(s, b"a")
    env.create(s, b"a", watch_id=1)
    env.create(s, b"a", watch_id=7)
    env.create(s, b"a")
    assert summs(s.take()) == [
        {"rev": 1, "id": 1, "created": True},
        {"rev": 1, "id": 0, "created": True},
        {"rev": 1, "id": 2, "created": True},
        {"rev": 1, "id": -1, "created": True, "canceled": True,
         "cancel_reason": "mvcc: duplicate watch ID provided on the WatchStream"},
        {"rev": 1, "id": 7, "created": True},
        {"rev": 1, "id": 3, "created": True},
    ]
    other = env.stream()
    env.create(other, b"a")
    env.create(other, b"a", watch_id=1)
    assert [r.watch_id for r in other.take()] == [0, 1]
    # a canceled ID is free again; the counter does not go back
    env.cancel(s, 0)
    env.create(s, b"a", watch_id=0)
    assert [summ(r) for r in s.take()] == [
        {"rev": 1, "id": 0, "canceled": True}, {"rev": 1, "id": 4, "created": True}]
    env.create(s, b"a", watch_id=-5)       # any non-zero ID is taken as given
    assert summs(s.take()) == [{"rev": 1, "id": -5, "created": True}]


def test_range_rules(env):
    s = env.stream()
    env.create(s, b"b", range_end=b"a")          # end < key
    env.create(s, b"b", range_end=b"b")          # end == key
    env.create(s, b"", range_end=b"\0")           # everything: key "\0", from-key
    env.create(s, b"")                            # the single key "\0"
    env.create(s, b"b", range_end=b"\0")          # every key >= b
    env.create(s, b"b", range_end=b"d")
    assert summs(s.take()) == [
        {"rev": 1, "id": -1, "created": True, "canceled": True,
         "cancel_reason": "mvcc: watcher range is empty"},
        {"rev": 1, "id": -1, "created": True, "canceled": True,
         "cancel_reason": "mvcc: watcher range is empty"},
        {"rev": 1, "id": 0, "created": True},
        {"rev": 1, "id": 1, "created": True},
        {"rev": 1, "id": 2, "created": True},
        {"rev": 1, "id": 3, "created": True},
    ]
    for k in (b"\0", b"a", b"b", b"c", b"d", b"zz"):
        env.put(k)
    got = {}
    for r in s.take():
        got.setdefault(r.watch_id, []).extend(e.kv.key for e in r.events)
    assert got == {0: [b"\0", b"a", b"b", b"c", b"d", b"zz"], 1: [b"\0"],
                   2: [b"b", b"c", b"d", b"zz"], 3: [b"b", b"c"]}


def test_negative_start_revision_is_rejected(env):
    env.put(b"a")
    s = env.stream()
    env.create(s, b"a", start_revision=-1)
    assert summs(s.take()) == [{"rev": 2, "id": -1, "created": True, "canceled": True,
                                "cancel_reason": COMPACTED}]
    # the auto-ID counter did not move
    env.create(s, b"a")
    assert summs(s.take()) == [{"rev": 2, "id": 0, "created": True}]


# ---------------------------------------------------------------------------------------
# Replay, future start, batches

def test_replay_then_live(env):
    for i in range(5):                                     # revisions 2..6
        env.put(b"k", b"%d" % i)
    env.put(b"other")                                      # 7
    s = env.stream()
    env.create(s, b"k", start_revision=4, prev_kv=True)
    rs = s.take()
    assert summs(rs) == [
        {"rev": 7, "id": 0, "created": True},
        {"rev": 7, "id": 0, "events": [
            ("PUT", b"k", b"2", 4, 2, 3, "prev", b"1", 3),
            ("PUT", b"k", b"3", 5, 2, 4, "prev", b"2", 4),
            ("PUT", b"k", b"4", 6, 2, 5, "prev", b"3", 5)]},
    ]
    env.put(b"k", b"5")
    assert summs(s.take()) == [
        {"rev": 8, "id": 0, "events": [("PUT", b"k", b"5", 8, 2, 6, "prev", b"4", 6)]}]
    assert env.hub.index.size == 1 and not env.hub.unsynced


def test_replay_with_nothing_to_send_joins_synced(env):
    env.put(b"x")
    s = env.stream()
    env.create(s, b"k", start_revision=1)
    assert summs(s.take()) == [{"rev": 2, "id": 0, "created": True}]
    env.put(b"k")
    assert summs(s.take()) == [{"rev": 3, "id": 0, "events": [("PUT", b"k", b"v", 3, 3, 1)]}]


def test_start_at_current_revision_replays_it(env):
    env.put(b"k", b"1")
    s = env.stream()
    env.create(s, b"k", start_revision=2)
    assert summs(s.take())[1:] == [{"rev": 2, "id": 0,
                                    "events": [("PUT", b"k", b"1", 2, 2, 1)]}]


def test_future_start_waits(env):
    s = env.stream()
    env.create(s, b"k", start_revision=4)
    env.put(b"k", b"a")        # 2
    env.put(b"k", b"b")        # 3
    env.put(b"k", b"c")        # 4
    env.put(b"k", b"d")        # 5
    assert summs(s.take()) == [
        {"rev": 1, "id": 0, "created": True},
        {"rev": 4, "id": 0, "events": [("PUT", b"k", b"c", 4, 2, 3)]},
        {"rev": 5, "id": 0, "events": [("PUT", b"k", b"d", 5, 2, 4)]},
    ]


def test_catch_up_batches_of_at_most_1000_revisions(env):
    for i in range(2500):                       # revisions 2..2501
        env.put(b"p/%d" % (i % 7), b"%d" % i)
    s = env.stream()
    env.create(s, b"p/", range_end=b"p0", start_revision=2)
    env.clock.advance(0)
    env.clock.advance(0)
    rs = s.take()
    assert rs[0].created
    batches = rs[1:]
    assert [len(r.events) for r in batches] == [1000, 1000, 500]
    assert all(r.header.revision == 2501 for r in batches)
    revs = [e.kv.mod_revision for r in batches for e in r.events]
    assert revs == list(range(2, 2502))
    env.put(b"p/x")
    assert summs(s.take()) == [{"rev": 2502, "id": 0,
                                "events": [("PUT", b"p/x", b"v", 2502, 2502, 1)]}]


def test_one_revision_per_response_and_txn_order(env):
    s = env.stream()
    env.create(s, b"t/", range_end=prefix_end(b"t/"))
    env.create(s, b"t/b")
    env.put(b"t/b", b"0")                                    # 2
    s.take()
    env.txn(("put", b"t/c", b"1"), ("put", b"t/a", b"2"), ("delete", b"t/b"),
            ("put", b"u", b"3"))                             # 3
    assert summs(s.take()) == [
        {"rev": 3, "id": 0, "events": [("PUT", b"t/c", b"1", 3, 3, 1),
                                       ("PUT", b"t/a", b"2", 3, 3, 1),
                                       ("DELETE", b"t/b", b"", 3)]},
        {"rev": 3, "id": 1, "events": [("DELETE", b"t/b", b"", 3)]},
    ]


def test_range_delete_events_sorted_in_one_response(env):
    for k in (b"d/3", b"d/1", b"d/2"):
        env.put(k)
    s = env.stream()
    env.create(s, b"d/", range_end=b"d0", prev_kv=True)
    s.take()
    env.delete(b"d/", b"d0")
    assert summs(s.take()) == [{"rev": 5, "id": 0, "events": [
        ("DELETE", b"d/1", b"", 5, "prev", b"v", 3),
        ("DELETE", b"d/2", b"", 5, "prev", b"v", 4),
        ("DELETE", b"d/3", b"", 5, "prev", b"v", 2)]}]


# ---------------------------------------------------------------------------------------
# Options

def test_prev_kv_and_creation_events(env):
    s = env.stream()
    env.create(s, b"k", prev_kv=True)
    env.create(s, b"k")
    env.put(b"k", b"1")
    env.put(b"k", b"2")
    env.delete(b"k")
    env.put(b"k", b"3")
    assert summs(s.take()[2:]) == [
        {"rev": 2, "id": 0, "events": [("PUT", b"k", b"1", 2, 2, 1)]},
        {"rev": 2, "id": 1, "events": [("PUT", b"k", b"1", 2, 2, 1)]},
        {"rev": 3, "id": 0, "events": [("PUT", b"k", b"2", 3, 2, 2, "prev", b"1", 2)]},
        {"rev": 3, "id": 1, "events": [("PUT", b"k", b"2", 3, 2, 2)]},
        {"rev": 4, "id": 0, "events": [("DELETE", b"k", b"", 4, "prev", b"2", 3)]},
        {"rev": 4, "id": 1, "events": [("DELETE", b"k", b"", 4)]},
        {"rev": 5, "id": 0, "events": [("PUT", b"k", b"3", 5, 5, 1)]},
        {"rev": 5, "id": 1, "events": [("PUT", b"k", b"3", 5, 5, 1)]},
    ]


def test_filters(env):
    s = env.stream()
    env.create(s, b"f/", range_end=b"f0", filters=[NOPUT])
    env.create(s, b"f/", range_end=b"f0", filters=[NODELETE])
    env.create(s, b"f/", range_end=b"f0", filters=[NOPUT, NODELETE])
    s.take()
    env.put(b"f/a")                                                  # 2
    env.txn(("put", b"f/b", b"1"), ("delete", b"f/a"))               # 3
    env.delete(b"f/b")                                               # 4
    assert summs(s.take()) == [
        {"rev": 2, "id": 1, "events": [("PUT", b"f/a", b"v", 2, 2, 1)]},
        {"rev": 3, "id": 0, "events": [("DELETE", b"f/a", b"", 3)]},
        {"rev": 3, "id": 1, "events": [("PUT", b"f/b", b"1", 3, 3, 1)]},
        {"rev": 4, "id": 0, "events": [("DELETE", b"f/b", b"", 4)]},
    ]
    # replay honours filters too, and drops batches left empty
    s2 = env.stream()
    env.create(s2, b"f/", range_end=b"f0", filters=[NODELETE], start_revision=4)
    env.create(s2, b"f/", range_end=b"f0", filters=[NOPUT], start_revision=2)
    assert summs(s2.take()) == [
        {"rev": 4, "id": 0, "created": True},
        {"rev": 4, "id": 1, "created": True},
        {"rev": 4, "id": 1, "events": [("DELETE", b"f/a", b"", 3),
                                       ("DELETE", b"f/b", b"", 4)]},
    ]


def _reference_fragments(wr, limit):
    """etcd's sendFragments, literally."""
    if wr.ByteSize() < limit or len(wr.events) < 2:
        return [wr]
    out = []
    idx = 0
    while True:
        cur = rpc.WatchResponse()
        cur.CopyFrom(wr)
        del cur.events[:]
        cur.fragment = True
        for e in wr.events[idx:]:
            cur.events.append(e)
            if len(cur.events) > 1 and cur.ByteSize() >= limit:
                del cur.events[-1]
                break
            idx += 1
        if idx == len(wr.events):
            cur.fragment = False
        out.append(cur)
        if not cur.fragment:
            return out


def test_fragment():
    env = Env(max_request_bytes=0)
    env.service.fragment_bytes = 300
    s = env.stream()
    env.create(s, b"g/", range_end=b"g0", fragment=True)
    env.create(s, b"g/", range_end=b"g0")
    env.create(s, b"g/big", fragment=True)
    s.take()
    ops = [("put", b"g/%02d" % i, b"x" * 40) for i in range(20)]
    env.txn(*ops)                                                  # 2
    rs = s.take()
    frags = [r for r in rs if r.watch_id == 0]
    whole = [r for r in rs if r.watch_id == 1]
    assert len(whole) == 1 and len(whole[0].events) == 20 and not whole[0].fragment
    expected = _reference_fragments(whole[0], 300)
    expected_ids = []
    for r in expected:
        r.watch_id = 0
        expected_ids.append(r)
    assert [r.SerializeToString() for r in frags] == \
        [r.SerializeToString() for r in expected_ids]
    assert len(frags) > 2
    assert all(r.fragment for r in frags[:-1]) and not frags[-1].fragment
    assert [ev(e) for r in frags for e in r.events] == [ev(e) for e in whole[0].events]
    # one event alone is never split, however large
    env.put(b"g/big", b"y" * 1000)
    rs = [r for r in s.take() if r.watch_id == 2]
    assert len(rs) == 1 and not rs[0].fragment


def test_fragment_threshold_default():
    env = Env()
    assert env.service.fragment_bytes == 1572864 + 512 * 1024


# ---------------------------------------------------------------------------------------
# Cancel, half-close, stream end

def test_cancel(env):
    s = env.stream()
    env.create(s, b"a")
    env.put(b"a")
    s.take()
    env.cancel(s, 0)
    env.cancel(s, 0)               # unknown now: no response
    env.cancel(s, 42)
    env.put(b"a")
    assert summs(s.take()) == [{"rev": 2, "id": 0, "canceled": True}]
    assert env.hub.index.size == 0


def test_half_close_keeps_streaming(env):
    s = env.stream()
    env.create(s, b"a")
    s.on_half_close()
    env.put(b"a")
    assert [summ(r) for r in s.take()][1:] == [
        {"rev": 2, "id": 0, "events": [("PUT", b"a", b"v", 2, 2, 1)]}]
    assert not s.finished


def test_stream_cancel_drops_all_watchers(env):
    s = env.stream()
    other = env.stream()
    for k in (b"a", b"b", b"c"):
        env.create(s, k)
    env.create(s, b"", range_end=b"\0", start_revision=1)
    env.create(other, b"a")
    env.create(s, b"a", progress_notify=True)
    assert env.hub.index.size == 6
    s.on_cancel()
    s.closed = True
    assert env.hub.index.size == 1 and not env.hub.unsynced
    env.put(b"a")
    assert len(other.take()) == 2
    assert env.service.streams == {other.on_message.__self__}
    env.clock.advance(10000)          # the progress ticker is gone too


# ---------------------------------------------------------------------------------------
# Compaction

def test_compacted_start(env):
    for i in range(5):
        env.put(b"a", b"%d" % i)                      # 2..6
    env.compact(4)
    s = env.stream()
    env.create(s, b"a", start_revision=3)
    rs = s.take()
    check_headers(env, rs)
    assert summs(rs) == [
        {"rev": 6, "id": 0, "created": True},
        {"rev": 0, "id": 0, "canceled": True, "compact_revision": 4},
    ]
    assert env.hub.index.size == 0 and not env.hub.unsynced
    # the ID stays in use until canceled (as etcd)
    env.create(s, b"a")
    assert [r.watch_id for r in s.take()] == [1]
    env.progress(s)                                   # a compacted watcher is not synced
    assert s.take() == []
    env.cancel(s, 0)
    assert summs(s.take()) == [{"rev": 6, "id": 0, "canceled": True}]
    # start == compact revision is fine; prev_kv at the compact revision is gone
    env.create(s, b"a", start_revision=4, prev_kv=True)
    assert summs(s.take()) == [
        {"rev": 6, "id": 2, "created": True},
        {"rev": 6, "id": 2, "events": [
            ("PUT", b"a", b"2", 4, 2, 3),
            ("PUT", b"a", b"3", 5, 2, 4, "prev", b"2", 4),
            ("PUT", b"a", b"4", 6, 2, 5, "prev", b"3", 5)]},
    ]


# ---------------------------------------------------------------------------------------
# Progress

def test_progress_notify_ticks():
    env = Env(progress_interval=10.0, rand=lambda: 0.5)        # 10 s + 5 % jitter
    s = env.stream()
    env.create(s, b"a", progress_notify=True)
    env.create(s, b"b", progress_notify=True)
    env.create(s, b"c")
    s.take()
    env.clock.advance(10.4)
    assert s.take() == []
    env.clock.advance(0.1)                                     # 10.5: tick 1
    assert summs(s.take()) == [{"rev": 1, "id": 0}, {"rev": 1, "id": 1}]
    env.put(b"a")                                              # 2: watcher 0 not quiet
    env.put(b"c")                                              # 3
    s.take()
    env.clock.advance(10.5)                                    # tick 2
    assert summs(s.take()) == [{"rev": 3, "id": 1}]
    env.clock.advance(10.5)                                    # tick 3
    assert summs(s.take()) == [{"rev": 3, "id": 0}, {"rev": 3, "id": 1}]
    env.cancel(s, 1)
    s.take()
    env.clock.advance(10.5)
    assert summs(s.take()) == [{"rev": 3, "id": 0}]


def test_progress_notify_skips_unsynced():
    env = Env(progress_interval=10.0)
    s = env.stream()
    env.create(s, b"a", progress_notify=True)
    s.take()
    s.pending = 10 ** 9                 # slow: the next event makes it a victim
    env.put(b"a")
    assert env.hub.unsynced
    env.clock.advance(10)
    assert s.take() == []
    s.pending = 0
    env.clock.advance(10)               # resync delivered the event; tick: not quiet
    assert summs(s.take()) == [{"rev": 2, "id": 0,
                                "events": [("PUT", b"a", b"v", 2, 2, 1)]}]


def test_progress_request(env):
    s = env.stream()
    env.progress(s)                                  # no watchers: nothing
    assert s.take() == []
    env.create(s, b"a")
    env.create(s, b"b", start_revision=50)           # future: synced
    env.put(b"x")
    s.take()
    env.progress(s)
    assert summs(s.take()) == [{"rev": 2, "id": -1}]
    s.pending = 10 ** 9
    env.put(b"a")                                    # watcher 0 becomes unsynced
    env.progress(s)
    assert s.take() == []
    s.pending = 0
    env.clock.advance(0.1)
    env.progress(s)
    assert summs(s.take()) == [
        {"rev": 3, "id": 0, "events": [("PUT", b"a", b"v", 3, 3, 1)]},
        {"rev": 3, "id": -1}]


# ---------------------------------------------------------------------------------------
# Slow consumers

def test_slow_consumer_catches_up_without_gap_or_duplicate(env):
    s = env.stream()
    fast = env.stream()
    env.create(s, b"s/", range_end=b"s0", prev_kv=True)
    env.create(fast, b"s/", range_end=b"s0")
    s.take(), fast.take()
    env.put(b"s/1", b"a")                                # 2: delivered
    s.pending = 5 * 1024 * 1024                          # over the 4 MiB budget
    env.put(b"s/1", b"b")                                # 3
    env.put(b"s/2", b"c")                                # 4
    env.put(b"t", b"d")                                  # 5 (outside)
    assert summs(s.take()) == [{"rev": 2, "id": 0,
                                "events": [("PUT", b"s/1", b"a", 2, 2, 1)]}]
    assert len(fast.take()) == 3
    assert env.hub.unsynced and env.hub.index.size == 1
    env.clock.advance(0.1)                               # still over budget
    assert s.take() == []
    s.pending = 0
    env.clock.advance(0.1)
    assert summs(s.take()) == [{"rev": 5, "id": 0, "events": [
        ("PUT", b"s/1", b"b", 3, 2, 2, "prev", b"a", 2),
        ("PUT", b"s/2", b"c", 4, 4, 1)]}]
    assert not env.hub.unsynced and env.hub.index.size == 2
    env.put(b"s/2", b"e")
    assert summs(s.take()) == [{"rev": 6, "id": 0, "events": [
        ("PUT", b"s/2", b"e", 6, 4, 2, "prev", b"c", 4)]}]
    assert env.clock.getDelayedCalls() == []


def test_slow_consumer_behind_compaction_is_canceled(env):
    s = env.stream()
    env.create(s, b"k")
    s.take()
    s.pending = 10 ** 9
    env.put(b"k", b"1")                                  # 2: not sent
    env.put(b"k", b"2")                                  # 3
    env.compact(3)
    s.pending = 0
    env.clock.advance(0.1)
    assert summs(s.take()) == [{"rev": 0, "id": 0, "canceled": True,
                                "compact_revision": 3}]
    assert not env.hub.unsynced and env.hub.index.size == 0


def test_over_budget_catch_up_pauses_between_batches():
    env = Env(batch_revisions=10)
    for i in range(35):
        env.put(b"k", b"%d" % i)                         # 2..36
    s = env.stream()
    env.create(s, b"k", start_revision=2)
    rs = s.take()
    assert [len(r.events) for r in rs[1:]] == [10]
    s.pending = 10 ** 9
    env.clock.advance(0)                                 # next batch: over budget
    assert s.take() == []
    env.put(b"k", b"live")                               # 37
    s.pending = 0
    env.clock.advance(0.1)
    for _ in range(5):
        env.clock.advance(0)
    rs = s.take()
    revs = [e.kv.mod_revision for r in rs for e in r.events]
    assert revs == list(range(12, 38))
    assert [len(r.events) for r in rs] == [10, 10, 6]
    assert all(r.header.revision == 37 for r in rs)


def test_stream_without_pending_bytes_is_never_slow(env):
    class NoPendingBytes(FakeStream):
        pending_bytes = None             # a transport without the optional method

    s = NoPendingBytes()
    env.method.handler(s)
    env.create(s, b"a")
    env.put(b"a")
    assert [r.created for r in s.take()] == [True, False]
    assert env.hub.index.size == 1


# ---------------------------------------------------------------------------------------
# Asynchronous history (SQL stores): events committed while a read is in flight

class SlowHistoryStore(MemoryStore):
    """history() answers later, computing the answer at call time ("call") or when it
    fires ("fire": a snapshot newer than the read's start)."""

    def __init__(self, mode="call"):
        MemoryStore.__init__(self, initial_revision=1)
        self.mode = mode
        self.pending = []

    def history(self, start_revision, key, range_end, limit_revisions=1000):
        d = defer.Deferred()
        if self.mode == "call":
            now = MemoryStore.history(self, start_revision, key, range_end,
                                      limit_revisions)
            self.pending.append((d, lambda: now))
        else:
            self.pending.append((d, lambda: MemoryStore.history(
                self, start_revision, key, range_end, limit_revisions)))
        return d

    def fire_all(self):
        while self.pending:
            d, compute = self.pending.pop(0)
            compute().chainDeferred(d)


@pytest.mark.parametrize("mode", ["call", "fire"])
def test_async_history_no_gap_no_duplicate(mode):
    env = Env(store=SlowHistoryStore(mode))
    for i in range(5):
        env.put(b"k", b"%d" % i)                         # 2..6
    s = env.stream()
    env.create(s, b"k", start_revision=3)
    assert [r.created for r in s.take()] == [True]
    env.put(b"k", b"a")                                  # 7, while the read is in flight
    env.put(b"x")                                        # 8
    env.put(b"k", b"b")                                  # 9
    assert s.take() == []
    env.store.fire_all()
    env.put(b"k", b"c")                                  # 10: live
    rs = s.take()
    revs = [e.kv.mod_revision for r in rs for e in r.events]
    assert revs == [3, 4, 5, 6, 7, 9, 10]
    assert [r.header.revision for r in rs] == [9, 10]
    assert env.hub.index.size == 1 and env.hub._reads == 0 and env.hub._buffer == []


def test_async_history_buffer_overflow_rereads():
    env = Env(store=SlowHistoryStore("call"), buffer_bytes=1)
    for i in range(3):
        env.put(b"k", b"%d" % i)                         # 2..4
    s = env.stream()
    env.create(s, b"k", start_revision=2)
    env.put(b"k", b"a")                                  # 5 (buffer overflows)
    env.put(b"k", b"b")                                  # 6
    env.store.fire_all()                                 # covers 2..4 only: re-read
    assert env.hub.unsynced
    env.clock.advance(0)
    env.put(b"k", b"c")                                  # 7: during the second read
    env.store.fire_all()                                 # 5, 6 and (buffer) ... re-read
    env.clock.advance(0)
    env.store.fire_all()
    env.clock.advance(0)
    env.store.fire_all()
    env.put(b"k", b"d")                                  # 8
    revs = [e.kv.mod_revision for r in s.take() for e in r.events]
    assert revs == [2, 3, 4, 5, 6, 7, 8]
    assert not env.hub.unsynced


def test_cancel_during_read():
    env = Env(store=SlowHistoryStore("call"))
    env.put(b"k")
    s = env.stream()
    env.create(s, b"k", start_revision=2)
    env.cancel(s, 0)
    env.store.fire_all()
    assert summs(s.take()) == [{"rev": 2, "id": 0, "created": True},
                               {"rev": 2, "id": 0, "canceled": True}]
    assert env.hub._reads == 0 and not env.hub.unsynced


# ---------------------------------------------------------------------------------------
# Randomised interleavings: every watcher sees exactly its events, in order, once

def _expected(store_log, w, upto):
    out = []
    for change in store_log:
        if change.revision < w["start"] or change.revision > upto:
            continue
        for e in change.events:
            k = e.kv.key
            if w["end"] == b"":
                hit = k == w["key"]
            elif w["end"] == b"\0":
                hit = k >= w["key"]
            else:
                hit = w["key"] <= k < w["end"]
            if not hit:
                continue
            if e.type == 0 and w["noput"]:
                continue
            if e.type == 1 and w["nodelete"]:
                continue
            out.append((change.revision, k, e.type, e.kv.value))
    return out


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("mode", ["sync", "call", "fire"])
def test_randomised_interleavings(seed, mode):
    rnd = random.Random(seed)
    store = MemoryStore(initial_revision=1) if mode == "sync" else SlowHistoryStore(mode)
    env = Env(store=store, batch_revisions=rnd.choice([3, 1000]))
    log = []
    store.subscribe(log.append)
    keys = [b"a", b"a/1", b"a/2", b"b", b"b/x", b"c", b"\xff", b"\xff\xff"]
    ranges = [(b"a", b""), (b"a/", b"a0"), (b"a", b"c"), (b"b", b"\0"), (b"", b"\0"),
              (b"\xff", b"\0"), (b"\xff", prefix_end(b"\xff")), (b"a/1", b"a/1\0")]
    streams = [env.stream() for _ in range(3)]
    watchers = {}          # (stream index, id) -> spec
    for step in range(300):
        op = rnd.random()
        if op < 0.45:
            k = rnd.choice(keys)
            if rnd.random() < 0.8:
                env.put(k, b"%d" % step)
            else:
                env.delete(k)
        elif op < 0.5:
            env.txn(("put", rnd.choice(keys), b"t%d" % step),
                    ("put", rnd.choice(keys[:3]), b"u%d" % step))
        elif op < 0.6:
            si = rnd.randrange(3)
            key, end = rnd.choice(ranges)
            cur = env.store.revision
            start = rnd.choice([0, 0, max(1, cur - rnd.randrange(30)), cur + rnd.randrange(3)])
            filters = rnd.choice([[], [], [NOPUT], [NODELETE]])
            env.create(streams[si], key, range_end=end, start_revision=start,
                       filters=filters)
            created = [r for r in streams[si].sent if r.created][-1]
            spec = {"key": key or b"\0", "end": end,
                    "start": start if start else created.header.revision + 1,
                    "noput": NOPUT in filters, "nodelete": NODELETE in filters,
                    "got": []}
            watchers[(si, created.watch_id)] = spec
        elif op < 0.7:
            si = rnd.randrange(3)
            streams[si].pending = rnd.choice([0, 0, 10 ** 9])
        elif op < 0.8:
            env.clock.advance(rnd.choice([0, 0.1]))
        elif op < 0.85 and mode != "sync":
            env.store.fire_all()
        elif op < 0.9 and watchers:
            si, wid = rnd.choice(sorted(watchers))
            if watchers[(si, wid)].get("canceled"):
                continue
            env.cancel(streams[si], wid)
            watchers[(si, wid)]["canceled"] = env.store.revision
        # drain what was sent so far
        for si, s in enumerate(streams):
            for r in s.take():
                if r.created or r.canceled:
                    continue
                assert r.events
                spec = watchers[(si, r.watch_id)]
                assert r.header.revision >= r.events[-1].kv.mod_revision
                spec["got"].extend((e.kv.mod_revision, e.kv.key, e.type, e.kv.value)
                                   for e in r.events)
    # let everyone catch up
    for s in streams:
        s.pending = 0
    for _ in range(200):
        env.clock.advance(0.1)
        if mode != "sync":
            env.store.fire_all()
        if not env.hub.unsynced:
            break
    assert not env.hub.unsynced
    for si, s in enumerate(streams):
        for r in s.take():
            if r.created or r.canceled:
                continue
            watchers[(si, r.watch_id)]["got"].extend(
                (e.kv.mod_revision, e.kv.key, e.type, e.kv.value) for e in r.events)
    final = env.store.revision
    for (si, wid), spec in watchers.items():
        upto = spec.get("canceled", final)
        want = _expected(log, spec, upto)
        got = spec["got"]
        if "canceled" in spec:
            # events of a canceled watcher: a prefix of what it should have seen
            assert got == want[:len(got)], (si, wid)
        else:
            assert got == want, (si, wid, spec)


# ---------------------------------------------------------------------------------------
# The index

def _brute(ranges, key):
    out = set()
    for i, (k, e) in enumerate(ranges):
        if not e:
            hit = key == k
        elif e == b"\0":
            hit = key >= k
        else:
            hit = k <= key < e
        if hit:
            out.add(i)
    return out


def test_prefix_end():
    assert prefix_end(b"/apisix/") == b"/apisix0"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"\xff\xff") == b"\0"
    assert prefix_end(b"") == b"\0"


@pytest.mark.parametrize("seed", range(5))
def test_index_matches_brute_force(seed):
    rnd = random.Random(seed)
    alphabet = [b"", b"\0", b"a", b"b", b"c", b"\xff"]

    def rkey():
        return b"".join(rnd.choice(alphabet) for _ in range(rnd.randrange(1, 4))) or b"a"

    index = RangeIndex()
    ranges, ws = [], []
    for i in range(300):
        k = rkey()
        kind = rnd.randrange(5)
        if kind == 0:
            e = b""
        elif kind == 1:
            e = prefix_end(k)
        elif kind == 2:
            e = b"\0"
        elif kind == 3:
            e = k + b"\0"
        else:
            e = rkey()
            if e <= k:
                k, e = e, k
            if e == k:
                e = k + b"a"
        w = Watcher(None, i, k, e)
        ranges.append((k, e))
        ws.append(w)
        index.add(w)
    removed = set(rnd.sample(range(300), 100))
    for i in removed:
        index.remove(ws[i])
    assert len(index) == 200
    for _ in range(500):
        key = rkey()
        got = set()
        for g in index.match(key):
            got.update(w.id for w in g.members)
        want = _brute(ranges, key) - removed
        assert got == want, key


def test_index_cost_is_per_match():
    """20,000 single-key watchers, 2,000 prefix watchers of one length and 2,000 disjoint
    ranges: an event on one key looks at its own few groups only."""
    index = RangeIndex()
    for i in range(20000):
        index.add(Watcher(None, i, b"key/%05d" % i, b""))
    for i in range(2000):
        index.add(Watcher(None, i, b"pfx/%04d/" % i, prefix_end(b"pfx/%04d/" % i)))
    for i in range(2000):
        index.add(Watcher(None, i, b"rng/%04d" % i, b"rng/%04d~" % i))
    assert [len(g.members) for g in index.match(b"key/01234")] == [1]
    assert [g.slot for g in index.match(b"pfx/0042/x")] == [("prefix", b"pfx/0042/")]
    assert [g.slot for g in index.match(b"rng/0042a")] == [("range", b"rng/0042",
                                                             b"rng/0042~")]
    assert index.match(b"zzz") == []
    # the interval tree is balanced
    depth = 0
    todo = [(index._tree, 1)]
    while todo:
        node, d = todo.pop()
        if node is None:
            continue
        depth = max(depth, d)
        todo.extend([(node.left, d + 1), (node.right, d + 1)])
    assert depth <= 2 * 11 + 2


def test_events_encoded_once_for_many_watchers(env, monkeypatch):
    calls = []
    real = watch_hub.event_to_pb

    def counting(event, prev_kv=False):
        calls.append((event.kv.key, prev_kv))
        return real(event, prev_kv)

    monkeypatch.setattr(watch_hub, "event_to_pb", counting)
    streams = [env.stream() for _ in range(50)]
    for i, s in enumerate(streams):
        env.create(s, b"/apisix/", range_end=b"/apisix0", prev_kv=bool(i % 2))
        env.create(s, b"/apisix/routes/1")
    env.put(b"/apisix/routes/1", b"r")
    env.put(b"/apisix/routes/1", b"r2")
    assert sorted(calls) == [(b"/apisix/routes/1", False), (b"/apisix/routes/1", False),
                             (b"/apisix/routes/1", True)]
    for i, s in enumerate(streams):
        rs = s.take()[2:]
        # (the order of different watchers' responses of one revision is unspecified)
        assert sorted((r.header.revision, r.watch_id) for r in rs) == \
            [(2, 0), (2, 1), (3, 0), (3, 1)]
        r3 = [r for r in rs if r.header.revision == 3 and r.watch_id == 0][0]
        assert r3.events[0].HasField("prev_kv") == bool(i % 2)


def test_watcher_states(env):
    s = env.stream()
    env.create(s, b"a")
    ws = s.on_message.__self__
    w = ws.watchers[0]
    assert w.state is SYNCED and w.synced
    s.pending = 10 ** 9
    env.put(b"a")
    assert w.state is UNSYNCED and w.next_rev == 2
