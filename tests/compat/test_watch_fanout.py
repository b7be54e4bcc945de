"""Fan-out: 1,000 watchers over 10 gRPC streams on our server, 500 writes; every watcher
gets every event of its range exactly once, in order, with the right contents.

The watchers are a mix (per stream: 10 on the whole ``/f/`` prefix, 40 on one group prefix
``/f/gN/``, 50 on single keys); a third of them ask for prev_kv and some prefix watchers
filter PUTs or DELETEs.  The writes are puts, deletes (of live keys), multi-key txns
across groups and puts outside ``/f/`` that nobody may see.  A model of the keys gives
each watcher's expected event list: (revision, type, key, value, prev value) in order.

Responses may group events differently if a stream falls behind and its watchers catch up
from history, so what is compared is the sequence of events, plus: no response without
events, headers never behind their events.
"""

import queue
import random
import time

import grpc
import pytest

from etcdadapter.pb.etcdserverpb import rpc_pb2 as rpc
from etcdadapter.pb.mvccpb import kv_pb2
from etcdadapter.store.mvcc import prefix_end

from support import servers
from support.watch import WatchSession

pytestmark = pytest.mark.adapter

STREAMS = 10
GROUPS = 10
KEYS_PER_GROUP = 10
WRITES = 500
WAIT = 90.0                     # for every expected event to arrive
QUIET = 0.5                     # then nothing more may arrive

PUT, DELETE = kv_pb2.Event.PUT, kv_pb2.Event.DELETE
NOPUT, NODELETE = rpc.WatchCreateRequest.NOPUT, rpc.WatchCreateRequest.NODELETE


def _key(group, n):
    return b"/f/g%d/k%d" % (group, n)


class Fanout(object):
    def __init__(self, seed):
        self.rnd = random.Random(seed)
        self.values = {}                       # live key -> value
        self.log = []                          # [(revision, [(type, key, value, prev)])]
        self.watchers = []                     # (stream, key, range_end, prev_kv, filters)

    def plan_watchers(self):
        for s in range(STREAMS):
            for i in range(100):
                prev_kv = i % 3 == 0
                filters = []
                if i < 50 and i % 7 > 4:                          # prefix watchers only
                    filters = [NOPUT if i % 7 == 5 else NODELETE]
                if i < 10:
                    key, end = b"/f/", prefix_end(b"/f/")
                elif i < 50:
                    p = b"/f/g%d/" % self.rnd.randrange(GROUPS)
                    key, end = p, prefix_end(p)
                else:
                    key = _key(self.rnd.randrange(GROUPS),
                               self.rnd.randrange(KEYS_PER_GROUP))
                    end = self.rnd.choice([b"", key + b"\0"])
                self.watchers.append((s, key, end, prev_kv, filters))

    def write(self, client):
        """One random write on our server; the model follows."""
        rnd = self.rnd
        r = rnd.random()
        live = sorted(self.values)
        if r < 0.05:
            req = rpc.PutRequest(key=b"/other/%d" % rnd.randrange(5), value=b"x")
            res = client.call("/etcdserverpb.KV/Put", req, rpc.PutResponse)
            events = None                      # a revision nobody watches
        elif r < 0.15 and live:
            key = rnd.choice(live)
            res = client.call("/etcdserverpb.KV/DeleteRange",
                              rpc.DeleteRangeRequest(key=key), rpc.DeleteRangeResponse)
            events = [self._delete(key)]
        elif r < 0.30:
            req = rpc.TxnRequest()
            keys = rnd.sample([_key(g, n) for g in range(GROUPS)
                               for n in range(KEYS_PER_GROUP)], rnd.randint(2, 4))
            ops = []
            for key in keys:
                if key in self.values and rnd.random() < 0.3:
                    req.success.add().request_delete_range.key = key
                    ops.append((DELETE, key))
                else:
                    value = b"t%d" % rnd.randrange(10 ** 6)
                    req.success.add().request_put.CopyFrom(rpc.PutRequest(key=key,
                                                                          value=value))
                    ops.append((PUT, key, value))
            res = client.call("/etcdserverpb.KV/Txn", req, rpc.TxnResponse)
            events = [self._put(op[1], op[2]) if op[0] == PUT else self._delete(op[1])
                      for op in ops]
        else:
            key = _key(rnd.randrange(GROUPS), rnd.randrange(KEYS_PER_GROUP))
            value = b"v%d" % rnd.randrange(10 ** 6)
            res = client.call("/etcdserverpb.KV/Put", rpc.PutRequest(key=key, value=value),
                              rpc.PutResponse)
            events = [self._put(key, value)]
        assert res.ok, res
        if events is not None:
            self.log.append((res.response.header.revision, events))
        return res.response.header.revision

    def _put(self, key, value):
        prev = self.values.get(key)
        self.values[key] = value
        return (PUT, key, value, prev)

    def _delete(self, key):
        return (DELETE, key, b"", self.values.pop(key))

    def expected(self, watcher, first_rev):
        _, key, end, prev_kv, filters = watcher
        out = []
        for rev, events in self.log:
            if rev < first_rev:
                continue
            for kind, k, value, prev in events:
                if (NOPUT if kind == PUT else NODELETE) in filters:
                    continue
                if k == key if not end or end == key + b"\0" else key <= k < end:
                    out.append((rev, kind, k, value, prev if prev_kv else None))
        return out


def _events(response):
    out = []
    for e in response.events:
        out.append((e.kv.mod_revision, e.type, e.kv.key, e.kv.value,
                    e.prev_kv.value if e.HasField("prev_kv") else None))
    return out


def test_watch_fanout(pair):
    server = pair.target
    model = Fanout(seed=7)
    model.plan_watchers()
    channels = [grpc.insecure_channel(server.endpoint) for _ in range(2)]
    sessions = [WatchSession(channels[s % 2]) for s in range(STREAMS)]
    try:
        # Create every watcher (each stream's creates are answered in order).
        per_stream = [[] for _ in range(STREAMS)]
        for n, (s, key, end, prev_kv, filters) in enumerate(model.watchers):
            per_stream[s].append(n)
            sessions[s].send(rpc.WatchRequest(create_request=rpc.WatchCreateRequest(
                key=key, range_end=end, prev_kv=prev_kv, filters=filters)))
        watch_ids = {}                                          # (stream, watch_id) -> n
        first_rev = None
        for s, session in enumerate(sessions):
            created = session.collect(len(per_stream[s]), timeout=WAIT, extra=0)
            assert len(created) == len(per_stream[s]), (s, len(created))
            for n, r in zip(per_stream[s], created):
                assert r.created and not r.canceled and not r.events, r
                watch_ids[(s, r.watch_id)] = n
                first_rev = max(first_rev or 0, r.header.revision)
            assert len({r.watch_id for r in created}) == len(created)
        assert len(watch_ids) == 1000

        t0 = time.monotonic()
        for _ in range(WRITES):
            model.write(pair.target_client)
        write_seconds = time.monotonic() - t0

        want = [model.expected(w, first_rev + 1) for w in model.watchers]
        got = [[] for _ in model.watchers]
        remaining = sum(len(x) for x in want)
        total = remaining
        deadline = time.monotonic() + WAIT
        problems = []

        def drain(timeout):
            received = 0
            for s, session in enumerate(sessions):
                while True:
                    try:
                        r = session.responses.get(timeout=timeout if received == 0 else 0)
                    except queue.Empty:
                        break
                    if isinstance(r, Exception):
                        raise AssertionError("stream %d failed: %s" % (s, r))
                    n = watch_ids.get((s, r.watch_id))
                    evs = _events(r)
                    if n is None or r.created or r.canceled or not evs:
                        problems.append("stream %d: unexpected response %s"
                                        % (s, servers.show(r)))
                        continue
                    if r.header.revision < evs[-1][0]:
                        problems.append("watcher %d: header revision %d behind its events"
                                        % (n, r.header.revision))
                    got[n].extend(evs)
                    received += len(evs)
            return received

        while remaining > 0 and time.monotonic() < deadline and not problems:
            remaining -= drain(0.05)
        deliver_seconds = time.monotonic() - t0
        time.sleep(QUIET)
        drain(0.01)
        assert not problems, "\n".join(problems[:10])
        wrong = [n for n in range(len(want)) if got[n] != want[n]]
        if wrong:
            n = wrong[0]
            s, key, end, prev_kv, filters = model.watchers[n]
            missing = [e for e in want[n] if e not in got[n]]
            extra = [e for e in got[n] if e not in want[n]]
            pytest.fail("%d of 1000 watchers got the wrong events; e.g. watcher %d (stream "
                        "%d, %r..%r, prev_kv %s, filters %s): %d events, %d expected; "
                        "missing %s; unexpected %s; first 5 got %s, want %s"
                        % (len(wrong), n, s, key, end, prev_kv, filters, len(got[n]),
                           len(want[n]), missing[:3], extra[:3], got[n][:5], want[n][:5]),
                        pytrace=False)
        assert total > 50000, total                              # it was a real fan-out
        assert sum(1 for x in want if x) > 990, "most watchers must expect something"
        print("fan-out: %d events to 1000 watchers; writes took %.1f s, all delivered "
              "%.1f s after the first write" % (total, write_seconds, deliver_seconds))
    finally:
        for session in sessions:
            session.close()
        for ch in channels:
            ch.close()
