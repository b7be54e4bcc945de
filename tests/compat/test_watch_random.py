"""Random watch interleavings on a real etcd and on our server: identical event streams.

A seeded generator interleaves, on a fresh etcd and a fresh server under test, writes
(put, delete, txn; with and without leases), watch creates on a few streams (single keys,
prefixes, ranges, from-key, everything; start revision now, historic, exactly the
compacted one, below it, future; prev_kv; NOPUT/NODELETE; explicit and duplicate IDs;
empty ranges), cancels (of live, compacted and unknown watchers), compactions, progress
requests, stream restarts, lease grants and revokes, and one lease expiry per seed.

Every WatchResponse of both servers is kept, normalised (cluster/member IDs, raft term;
revisions shifted by the offset between the two stores) and compared field by field, per
watcher: etcd interleaves the responses of different watchers of one stream in map order,
so each stream's responses are sorted into one list per watcher (created .. canceled) plus
the stream's own responses (watch_id -1: failed creates, progress).

What makes the two servers comparable at all, without waiting for quiet after every step:

* a model of which keys each revision touched (put/delete/txn/revoke/expiry on the set of
  live keys and lease attachments) gives every watcher's expected list of event revisions;
  the model is checked against etcd (each write's revision, each delete's count);
* a create waits for its created response (so no write races it); a watcher created at a
  historic revision is only asked for when it has events to replay, and the run waits
  until it has received them (etcd replays unsynced watchers every 100 ms, in one response
  per watcher holding every revision up to the current one: a write meanwhile would change
  that grouping);
* before a cancel, a compaction, a progress request, a stream restart and at the end, the
  run waits until every watcher has received every expected revision on both servers
  (otherwise etcd may or may not send an event already queued for a canceled watcher);
* every few writes the run waits for the expected events too: etcd queues at most 128
  responses per stream; a watcher that finds the queue full becomes a "victim" and gets
  its events later, grouped differently;
* compactions are physical (etcd answers once the compacted versions are gone, otherwise
  a replay from the compacted revision races its background compaction);
* a lease is let expire only when nothing else happens: the run waits until the lease is
  gone and its DELETE is committed on both servers.

``ETCDADAPTER_WATCH_SEEDS`` (e.g. ``1-20``) and ``ETCDADAPTER_WATCH_OPS`` (default 700)
fuzz further; ``ETCDADAPTER_WATCH_STORE`` runs the adapter on another store; the SQL
stores (SQLite, MariaDB, PostgreSQL) run one seed each besides.
"""

import os
import random
import time

import grpc
import pytest

from etcdadapter.pb.etcdserverpb import rpc_pb2 as rpc
from etcdadapter.store.mvcc import prefix_end

from support import servers
from support.differential import describe, seeds
from support.stores import SQL_KINDS
from support.watch import Dual, WatchSession, serialize

pytestmark = pytest.mark.adapter

SEEDS = seeds(os.environ.get("ETCDADAPTER_WATCH_SEEDS", "1-3"))
OPS_PER_SEED = int(os.environ.get("ETCDADAPTER_WATCH_OPS", "700"))
# The adapter's --store; "{tmp}" is the test's temporary directory.  E.g.
# ETCDADAPTER_WATCH_STORE='sqlite:///{tmp}/watch.db'
STORE = os.environ.get("ETCDADAPTER_WATCH_STORE", "memory://")
# The same runs with the adapter on each SQL store (a fresh database each; one seed by
# default: ``ETCDADAPTER_WATCH_SQL_SEEDS`` fuzzes further).
SQL_SEEDS = seeds(os.environ.get("ETCDADAPTER_WATCH_SQL_SEEDS", "1"))
CASES = ([pytest.param("memory", s, id="seed_%d" % s) for s in SEEDS]
         + [pytest.param(kind, s, id="%s-seed_%d" % (kind, s))
            for kind in SQL_KINDS for s in SQL_SEEDS])

STREAMS = 3
MAX_WATCHERS = 8            # registered watchers per stream
WAIT = 30.0                 # for a response/event the model says must come
EXPIRY_WAIT = 20.0
QUIET = 0.5                 # at the end: nothing more may arrive
SETTLE_EVERY = 4            # writes between waits for every expected event

KEYS = [b"a", b"a/1", b"a/2", b"a/b/1", b"a/b/2", b"b", b"b/1", b"c\xff", b"\xff",
        b"\xff\xff"]
PREFIXES = [b"a/", b"a/b/", b"b", b"\xff", b"a"]
LEASE_IDS = list(range(1, 7))
EXPIRING_LEASE = 99

CREATE = rpc.WatchCreateRequest
PUT, DELETE = "PUT", "DELETE"

_KV = "/etcdserverpb.KV/"
_LEASE = "/etcdserverpb.Lease/"


def in_range(key, start, end):
    """Whether ``key`` is in etcd's [start, end) (end b"" = only start, b"\\0" = no end;
    start b"" means b"\\0", as for a watch)."""
    start = start or b"\0"
    if not end:
        return key == start
    if end == b"\0":
        return key >= start
    return start <= key < end


# ---------------------------------------------------------------------------------------
# The model: which keys each revision touched

class Watcher(object):
    """What one watcher must receive (revisions in etcd's numbering)."""

    def __init__(self, stream, index, watch_id, key, end, first_rev, noput, nodelete):
        self.stream = stream
        self.index = index               # its position among the stream's watchers
        self.watch_id = watch_id
        self.key, self.end = key, end
        self.first_rev = first_rev       # events from this revision on
        self.noput, self.nodelete = noput, nodelete
        self.expected = []               # revisions with at least one event for it
        self.compacted = None            # compact_revision it must be canceled with
        self.live = True                 # still gets events
        self.slot = None                 # the Slot (stream) it is on

    def passes(self, events):
        for key, kind in events:
            if kind == PUT and self.noput or kind == DELETE and self.nodelete:
                continue
            if in_range(key, self.key, self.end):
                return True
        return False


class Model(object):
    def __init__(self):
        self.rev = 1
        self.compacted = 0
        self.live = set()                # live keys
        self.lease_of = {}               # live key -> lease
        self.leases = {}                 # lease -> set of keys
        self.history = []                # [(revision, [(key, PUT|DELETE)])]
        self.watchers = []               # every Watcher ever created

    def _detach(self, key):
        lease = self.lease_of.pop(key, None)
        if lease is not None:
            self.leases[lease].discard(key)

    def put(self, events, key, lease=0):
        self._detach(key)
        self.live.add(key)
        if lease:
            self.lease_of[key] = lease
            self.leases[lease].add(key)
        events.append((key, PUT))

    def delete(self, events, key, end):
        gone = sorted(k for k in self.live if in_range(k, key, end))
        for k in gone:
            self._detach(k)
            self.live.discard(k)
            events.append((k, DELETE))
        return len(gone)

    def revoke(self, lease):
        events = []
        for k in sorted(self.leases.pop(lease)):
            self.live.discard(k)
            del self.lease_of[k]
            events.append((k, DELETE))
        return self.commit(events)

    def commit(self, events):
        """Record one write; the revision it produced (the current one if none)."""
        if events:
            self.rev += 1
            self.history.append((self.rev, events))
            for w in self.watchers:
                if w.live and self.rev >= w.first_rev and w.passes(events):
                    w.expected.append(self.rev)
        return self.rev

    def replayable(self, first_rev):
        """The history a watcher from ``first_rev`` replays.  etcd's compaction at C keeps
        the latest version at or below C of each key unless it is a tombstone: the PUTs of
        revision C are replayed, its DELETEs are gone."""
        for rev, events in self.history:
            if rev < first_rev:
                continue
            if rev == self.compacted:
                events = [e for e in events if e[1] == PUT]
            yield rev, events

    def replay(self, w):
        w.expected = [rev for rev, events in self.replayable(w.first_rev)
                      if w.passes(events)]


# ---------------------------------------------------------------------------------------
# What each server sent, sorted per watcher

class Instance(object):
    """The responses one watcher (created .. canceled) got on one server."""

    def __init__(self, created):
        self.responses = [created]
        self.revisions = []              # distinct event revisions, in arrival order
        self.canceled = None


class StreamLog(object):
    """One server's side of one stream: its session and its responses, per watcher."""

    def __init__(self, channel, offset):
        self.session = WatchSession(channel)
        self.offset = offset
        self.instances = []
        self.current = {}                # watch_id -> Instance
        self.stream_level = []           # watch_id -1: failed creates, progress
        self.orphans = []                # for an ID with no watcher
        self.creates = 0                 # created responses (incl. failed ones)
        self.last_created = None
        self.closed = False

    def pump(self):
        """Sort what arrived; how many responses that was."""
        q = self.session.responses
        n = 0
        while not q.empty():
            r = q.get_nowait()
            if isinstance(r, Exception):
                if self.closed:
                    continue
                raise AssertionError("watch stream failed: %s %s" % (r.code(), r.details()))
            self._add(servers.normalise_response(r, self.offset))
            n += 1
        return n

    def _add(self, r):
        if r.created:
            self.creates += 1
            self.last_created = r
        if r.watch_id == -1:
            self.stream_level.append(r)
            return
        if r.created:
            inst = self.current[r.watch_id] = Instance(r)
            self.instances.append(inst)
            return
        inst = self.current.get(r.watch_id)
        if inst is None:
            self.orphans.append(r)
            return
        inst.responses.append(r)
        for ev in r.events:
            rev = ev.kv.mod_revision
            if not inst.revisions or inst.revisions[-1] != rev:
                inst.revisions.append(rev)
        if r.canceled:
            inst.canceled = r


class Slot(object):
    """One stream, open on both servers."""

    def __init__(self, run):
        self.ref = StreamLog(run.channels[0], 0)
        self.got = StreamLog(run.channels[1], run.pair.offset)
        self.registered = {}             # watch_id -> Watcher (live or compacted)
        self.creates = 0                 # create requests sent

    @property
    def logs(self):
        return (self.ref, self.got)

    def close(self):
        for log in self.logs:
            log.closed = True
            log.session.close()


# ---------------------------------------------------------------------------------------
# The run

class Run(object):
    def __init__(self, pair, seed):
        self.pair = pair
        self.seed = seed
        self.rnd = random.Random(seed)
        self.model = Model()
        self.ops = []                    # what was done, for failure reports
        self.channels = [grpc.insecure_channel(s.endpoint)
                         for s in (pair.etcd, pair.target)]
        self.clients = (pair.etcd_client, pair.target_client)
        self._calls = {}
        self.slots = [Slot(self) for _ in range(STREAMS)]
        self.closed_slots = []
        self.events = 0                  # event revisions received (both servers)
        self.unsettled = 0               # writes since the last settle()
        self._checked = {}               # id(response list) -> how much is compared

    def close(self):
        for slot in self.slots + self.closed_slots:
            slot.close()
        for ch in self.channels:
            ch.close()

    # -- reporting
    def fail(self, message):
        pytest.fail("seed %d, after %d operations: %s\n\nrevision offset %d; last "
                    "operations:\n%s" % (self.seed, len(self.ops), message,
                                         self.pair.offset, "\n".join(self.ops[-15:])),
                    pytrace=False)

    def log(self, text):
        self.ops.append("  #%d %s" % (len(self.ops), text))

    # -- unary calls on both servers at once
    def call(self, method, request, response_class):
        key = (method, response_class)
        fns = self._calls.get(key)
        if fns is None:
            fns = self._calls[key] = [
                c.channel.unary_unary(method, request_serializer=serialize,
                                      response_deserializer=response_class.FromString)
                for c in self.clients]
        futures = [fns[0].future(request, timeout=WAIT),
                   fns[1].future(servers.map_request_revisions(request, self.pair.offset),
                                 timeout=WAIT)]
        out = []
        for f, offset in zip(futures, (0, self.pair.offset)):
            try:
                out.append(servers.RpcResult(
                    response=servers.normalise_response(f.result(), offset)))
            except grpc.RpcError as exc:
                out.append(servers.RpcResult(code=exc.code(), details=exc.details()))
        ref, got = out
        if ref.ok != got.ok or (ref.response if ref.ok else ref.error()) != (
                got.response if got.ok else got.error()):
            self.fail("%s %s differs\n--- etcd:\n%s\n--- ours:\n%s" % (
                method, str(request).replace("\n", " "), describe(ref), describe(got)))
        return ref

    # -- responses
    def pump(self):
        n = 0
        for slot in self.slots:
            for log in slot.logs:
                n += log.pump()
        if n:
            self.check_revisions()
        return n

    def wait(self, done, what):
        deadline = time.monotonic() + WAIT
        while True:
            self.pump()
            if done():
                return
            if time.monotonic() > deadline:
                self.fail("waited %.0f s for %s\n%s" % (WAIT, what, self.state()))
            time.sleep(0.002)

    def check_revisions(self):
        """No watcher may have got a revision the model does not expect (yet)."""
        for w in self.model.watchers:
            if w.slot not in self.slots:
                continue
            for name, log in zip(("etcd", "ours"), w.slot.logs):
                if w.index >= len(log.instances):
                    continue
                got = log.instances[w.index].revisions
                if got != w.expected[:len(got)]:
                    touched = dict(self.model.history)
                    self.fail("%s: watcher %d (%r..%r from %d) got revisions %s, the model "
                              "expects %s (compacted at %d)\nthe model's events at those "
                              "revisions:\n%s" % (
                                  name, w.watch_id, w.key, w.end, w.first_rev, got,
                                  w.expected, self.model.compacted, "\n".join(
                                      "  %d: %s" % (rev, touched.get(rev))
                                      for rev in sorted(set(got) | set(w.expected)))))

    def complete(self, w):
        slot = w.slot
        for log in slot.logs:
            if w.index >= len(log.instances):
                return False
            inst = log.instances[w.index]
            if inst.revisions != w.expected:
                return False
            if w.compacted is not None and inst.canceled is None:
                return False
        return True

    def settle(self):
        """Wait until every watcher has everything the model expects, on both servers."""
        self.wait(lambda: all(self.complete(w) for w in self.model.watchers
                              if w.slot in self.slots),
                  "every watcher's events")
        self.unsettled = 0
        self.compare()

    def state(self):
        lines = []
        for n, slot in enumerate(self.slots):
            for w in slot.registered.values():
                got = [log.instances[w.index].revisions if w.index < len(log.instances)
                       else None for log in slot.logs]
                lines.append("  stream %d watcher %d %r..%r from %d: expected %s; etcd %s; "
                             "ours %s" % (n, w.watch_id, w.key, w.end, w.first_rev,
                                          w.expected, got[0], got[1]))
        return "\n".join(lines)

    def compare(self, slots=None):
        """Every watcher's responses so far are the same on both servers (each list is
        compared from where the previous comparison left it)."""
        for n, slot in enumerate(slots or self.slots):
            ref, got = slot.logs
            pairs = [("stream responses (watch_id -1)", ref.stream_level, got.stream_level),
                     ("responses for unknown watch IDs", ref.orphans, got.orphans)]
            if len(ref.instances) != len(got.instances):
                self.fail("stream %d: etcd created %d watchers, ours %d"
                          % (n, len(ref.instances), len(got.instances)))
            for i, (a, b) in enumerate(zip(ref.instances, got.instances)):
                pairs.append(("watcher #%d (watch_id %d)" % (i, a.responses[0].watch_id),
                              a.responses, b.responses))
            for what, a, b in pairs:
                done = self._checked.get(id(a), 0)
                if a[done:] != b[done:]:
                    first = done
                    while first < min(len(a), len(b)) and a[first] == b[first]:
                        first += 1
                    self.fail("stream %d, %s differ from response #%d on:\n--- etcd:\n%s\n"
                              "--- ours:\n%s" % (
                                  n, what, first, "\n".join(map(servers.show, a[first:])),
                                  "\n".join(map(servers.show, b[first:]))))
                self._checked[id(a)] = len(a)

    # -- generators
    def pick_lease(self):
        leases = sorted(self.model.leases)
        if leases and self.rnd.random() < 0.3:
            return self.rnd.choice(leases)
        return 0

    def key_and_end(self):
        r = self.rnd.random()
        if r < 0.35:
            return self.rnd.choice(KEYS), b""
        if r < 0.65:
            p = self.rnd.choice(PREFIXES)
            return p, prefix_end(p)
        if r < 0.72:
            return self.rnd.choice([b"", b"\0"]), b"\0"          # everything
        if r < 0.80:
            return self.rnd.choice(KEYS), b"\0"                  # from key
        if r < 0.85:
            k = self.rnd.choice(KEYS)
            return k, k + b"\0"                                  # one key, as a range
        a, b = sorted(self.rnd.sample(KEYS, 2))
        return a, b

    # -- operations
    def op_put(self):
        key = self.rnd.choice(KEYS)
        lease = self.pick_lease()
        if self.rnd.random() < 0.02:
            lease = 4242                                         # not granted: NotFound
        req = rpc.PutRequest(key=key, value=b"v%d" % self.rnd.randrange(1000), lease=lease,
                             prev_kv=self.rnd.random() < 0.3)
        self.log("put %r lease %d" % (key, lease))
        r = self.call(_KV + "Put", req, rpc.PutResponse)
        events = []
        if r.ok:
            self.model.put(events, key, lease)
        self.expect_revision(r, events)

    def op_delete(self):
        key, end = self.key_and_end()
        key = key or b"\0"
        req = rpc.DeleteRangeRequest(key=key, range_end=end,
                                     prev_kv=self.rnd.random() < 0.5)
        self.log("delete %r..%r" % (key, end))
        r = self.call(_KV + "DeleteRange", req, rpc.DeleteRangeResponse)
        events = []
        n = self.model.delete(events, key, end)
        if r.response.deleted != n:
            self.fail("etcd deleted %d keys, the model %d" % (r.response.deleted, n))
        self.expect_revision(r, events)

    def op_txn(self):
        req = rpc.TxnRequest()
        for _ in range(self.rnd.choice([0, 1, 1, 2])):
            c = req.compare.add(key=self.rnd.choice(KEYS))
            c.target = self.rnd.choice([rpc.Compare.VERSION, rpc.Compare.VALUE])
            c.result = self.rnd.choice([rpc.Compare.EQUAL, rpc.Compare.GREATER,
                                        rpc.Compare.NOT_EQUAL])
            if c.target == rpc.Compare.VERSION:
                c.version = self.rnd.choice([0, 1, 2])
            else:
                c.value = b"v%d" % self.rnd.randrange(1000)
        plans = []
        for branch in (req.success, req.failure):
            keys = self.rnd.sample(KEYS, self.rnd.randint(0, 4))   # distinct keys
            plan = []
            for key in keys:
                op = branch.add()
                kind = self.rnd.choice(["put", "put", "delete", "range"])
                if kind == "put":
                    lease = self.pick_lease()
                    op.request_put.CopyFrom(rpc.PutRequest(key=key, value=b"t",
                                                           lease=lease))
                    plan.append(("put", key, lease))
                elif kind == "delete":
                    op.request_delete_range.key = key
                    plan.append(("delete", key, b""))
                else:
                    op.request_range.key = key
            plans.append(plan)
        self.log("txn %s" % plans)
        r = self.call(_KV + "Txn", req, rpc.TxnResponse)
        events = []
        for kind, key, arg in plans[0 if r.response.succeeded else 1]:
            if kind == "put":
                self.model.put(events, key, arg)
            else:
                self.model.delete(events, key, arg)
        self.expect_revision(r, events)

    def expect_revision(self, result, events):
        rev = self.model.commit(events)
        if result.ok and result.response.header.revision != rev:
            self.fail("etcd is at revision %d after the write, the model at %d"
                      % (result.response.header.revision, rev))
        # etcd queues at most 128 responses per stream; beyond that a watcher becomes a
        # "victim" and gets its events later in other groupings.  Keep the backlog short.
        self.unsettled += 1
        if self.unsettled >= SETTLE_EVERY:
            self.settle()

    def op_create(self):
        n = self.rnd.randrange(len(self.slots))
        slot = self.slots[n]
        if len(slot.registered) >= MAX_WATCHERS:
            return self.op_cancel(n)
        key, end = self.key_and_end()
        failing = None
        if self.rnd.random() < 0.03:
            a, b = sorted(self.rnd.sample(KEYS, 2))
            key, end = b, self.rnd.choice([a, b])                # empty range
            failing = "empty range"
        req = CREATE(key=key, range_end=end, prev_kv=self.rnd.random() < 0.4,
                     progress_notify=self.rnd.random() < 0.2,
                     fragment=self.rnd.random() < 0.2)
        r = self.rnd.random()
        if r < 0.15:
            req.filters.append(CREATE.NOPUT)
        elif r < 0.30:
            req.filters.append(CREATE.NODELETE)
        elif r < 0.33:
            req.filters.extend([CREATE.NODELETE, CREATE.NOPUT])
        if self.rnd.random() < 0.25:
            req.watch_id = self.rnd.randint(1, 12)
            if req.watch_id in slot.registered and failing is None:
                failing = "duplicate ID"
        probe = Watcher(n, 0, 0, key, end, 0, CREATE.NOPUT in req.filters,
                        CREATE.NODELETE in req.filters)
        req.start_revision = self.start_revision(probe)
        self.log("create on stream %d: %s%s" % (n, str(req).replace("\n", " "),
                                               " (fails: %s)" % failing if failing else ""))
        created = slot.creates + 1
        for log, offset in zip(slot.logs, (0, self.pair.offset)):
            log.session.send(servers.map_request_revisions(rpc.WatchRequest(
                create_request=req), offset))
        slot.creates = created
        self.wait(lambda: all(log.creates >= created for log in slot.logs),
                  "the created response")
        resp = slot.ref.last_created
        if resp.header.revision != self.model.rev:
            self.fail("created at revision %d, the model is at %d"
                      % (resp.header.revision, self.model.rev))
        if failing:
            if not (resp.canceled and resp.watch_id == -1):
                self.fail("etcd accepted a create the model says fails (%s)" % failing)
            return
        if resp.canceled or resp.watch_id in slot.registered:
            self.fail("etcd did not accept a create the model says succeeds: %s"
                      % servers.show(resp))
        start = req.start_revision
        w = Watcher(n, len(slot.ref.instances) - 1, resp.watch_id, key, end,
                    start if start > 0 else self.model.rev + 1, probe.noput, probe.nodelete)
        w.slot = slot
        slot.registered[w.watch_id] = w
        self.model.watchers.append(w)
        if 0 < start < self.model.compacted:
            w.compacted = self.model.compacted
            w.live = False
        elif 0 < start <= self.model.rev:
            self.model.replay(w)
        if w.compacted is not None or w.expected:
            self.wait(lambda: self.complete(w), "the replay of watcher %d" % w.watch_id)

    def start_revision(self, w):
        """0 (now), future, below the compaction, or historic with events to replay."""
        r = self.rnd.random()
        m = self.model
        if r < 0.45:
            return 0
        if r < 0.55:
            return m.rev + self.rnd.randint(1, 3)
        if r < 0.63 and m.compacted > 1:
            return self.rnd.randint(1, m.compacted - 1)
        first = max(m.compacted, 1)
        passing = [rev for rev, events in m.replayable(first) if w.passes(events)]
        if not passing:
            return 0
        last = passing[-1]
        if m.compacted and self.rnd.random() < 0.2:
            return m.compacted
        return self.rnd.randint(first, last)

    def op_cancel(self, n=None):
        if n is None:
            n = self.rnd.randrange(len(self.slots))
        slot = self.slots[n]
        if not slot.registered or self.rnd.random() < 0.1:
            wid = self.rnd.choice([0, 13, 1000])
            if wid not in slot.registered:
                self.log("cancel unknown %d on stream %d" % (wid, n))
                for log in slot.logs:
                    log.session.send(rpc.WatchRequest(
                        cancel_request=rpc.WatchCancelRequest(watch_id=wid)))
                return
        wid = self.rnd.choice(sorted(slot.registered))
        self.settle()
        w = slot.registered.pop(wid)
        w.live = False
        self.log("cancel %d on stream %d" % (wid, n))
        for log in slot.logs:
            log.session.send(rpc.WatchRequest(
                cancel_request=rpc.WatchCancelRequest(watch_id=wid)))

        def canceled():
            for log in slot.logs:
                inst = log.instances[w.index]
                last = inst.responses[-1]
                if not (last.canceled and last.compact_revision == 0
                        and not last.created):
                    return False
            return True
        self.wait(canceled, "the canceled response of watcher %d" % wid)

    def op_compact(self):
        self.settle()
        m = self.model
        r = self.rnd.random()
        if r < 0.8 and m.rev > max(m.compacted, 1):
            rev = self.rnd.randint(max(m.compacted + 1, 2), m.rev)
        elif r < 0.9:
            rev = m.rev + 1                                       # future: error
        else:
            rev = max(m.compacted, 1)                             # compacted: error
        self.log("compact %d" % rev)
        # physical: etcd answers once the compacted versions are gone from its backend;
        # without it a watch replaying from the compacted revision may or may not still
        # see that revision's tombstones (our compaction is always immediate).
        res = self.call(_KV + "Compact", rpc.CompactionRequest(revision=rev, physical=True),
                        rpc.CompactionResponse)
        if res.ok:
            m.compacted = rev

    def op_progress(self):
        n = self.rnd.randrange(len(self.slots))
        slot = self.slots[n]
        # etcd 3.4.23 answers every progress request; we (like 3.5.8+) only when every
        # watcher of the stream is synced: so only ask when it is.
        if not slot.registered or any(w.compacted is not None
                                      for w in slot.registered.values()):
            return
        self.settle()
        self.log("progress request on stream %d" % n)
        want = [len(log.stream_level) + 1 for log in slot.logs]
        for log in slot.logs:
            log.session.send(rpc.WatchRequest(progress_request=rpc.WatchProgressRequest()))
        self.wait(lambda: all(len(log.stream_level) >= k
                              for log, k in zip(slot.logs, want)), "the progress response")
        r = slot.ref.stream_level[-1]
        if r.header.revision != self.model.rev or r.created:
            self.fail("progress response %s, the model is at %d"
                      % (servers.show(r), self.model.rev))

    def op_restart_stream(self):
        n = self.rnd.randrange(len(self.slots))
        self.settle()
        self.log("restart stream %d" % n)
        old = self.slots[n]
        old.close()
        for w in old.registered.values():
            w.live = False
        self.closed_slots.append(old)
        self.slots[n] = Slot(self)

    def op_lease(self):
        m = self.model
        lease = self.rnd.choice(LEASE_IDS)
        if lease in m.leases and self.rnd.random() < 0.7:
            self.log("revoke lease %d (keys %s)" % (lease, sorted(m.leases[lease])))
            r = self.call(_LEASE + "LeaseRevoke", rpc.LeaseRevokeRequest(ID=lease),
                          rpc.LeaseRevokeResponse)
            rev = m.revoke(lease)
            if r.response.header.revision != rev:
                self.fail("etcd at %d after the revoke, the model at %d"
                          % (r.response.header.revision, rev))
        elif lease not in m.leases and self.rnd.random() < 0.1:
            self.log("revoke unknown lease %d" % lease)
            r = self.call(_LEASE + "LeaseRevoke", rpc.LeaseRevokeRequest(ID=lease),
                          rpc.LeaseRevokeResponse)
            assert not r.ok
        else:
            self.log("grant lease %d" % lease)
            r = self.call(_LEASE + "LeaseGrant", rpc.LeaseGrantRequest(ID=lease, TTL=600),
                          rpc.LeaseGrantResponse)
            if r.ok:
                m.leases[lease] = set()
            elif lease not in m.leases:
                self.fail("grant of lease %d failed: %s" % (lease, r.error()))

    def op_expiry(self):
        """Grant a 2 s lease, attach keys, and wait until both servers have revoked it."""
        m = self.model
        self.log("grant lease %d with TTL 1 (-> 2)" % EXPIRING_LEASE)
        r = self.call(_LEASE + "LeaseGrant", rpc.LeaseGrantRequest(
            ID=EXPIRING_LEASE, TTL=1), rpc.LeaseGrantResponse)
        assert r.response.TTL == 2, r.response
        m.leases[EXPIRING_LEASE] = set()
        for key in self.rnd.sample(KEYS, self.rnd.randint(1, 3)):
            self.log("put %r lease %d" % (key, EXPIRING_LEASE))
            res = self.call(_KV + "Put", rpc.PutRequest(
                key=key, value=b"x", lease=EXPIRING_LEASE), rpc.PutResponse)
            events = []
            m.put(events, key, EXPIRING_LEASE)
            self.expect_revision(res, events)
        want = m.revoke(EXPIRING_LEASE)
        self.log("lease %d expires: revision %d" % (EXPIRING_LEASE, want))
        deadline = time.monotonic() + EXPIRY_WAIT
        while True:
            state = []
            for client, offset in zip(self.clients, (0, self.pair.offset)):
                state.append((servers.lease_ttl(client, EXPIRING_LEASE),
                              servers.store_revision(client) - offset))
            if state == [(-1, want), (-1, want)]:
                break
            if time.monotonic() > deadline or any(rev > want for _, rev in state):
                self.fail("lease %d did not expire as expected: (TTL, revision) etcd %s, "
                          "ours %s; want (-1, %d)" % (EXPIRING_LEASE, state[0], state[1],
                                                      want))
            self.pump()
            time.sleep(0.05)
        self.settle()

    def step(self):
        r = self.rnd.random()
        if r < 0.30:
            self.op_put()
        elif r < 0.38:
            self.op_delete()
        elif r < 0.52:
            self.op_txn()
        elif r < 0.68:
            self.op_create()
        elif r < 0.76:
            self.op_cancel()
        elif r < 0.79:
            self.op_compact()
        elif r < 0.93:
            self.op_lease() if r < 0.86 else self.op_put()
        elif r < 0.95:
            self.op_progress()
        elif r < 0.955:
            self.op_restart_stream()
        else:
            self.op_txn()

    def finish(self):
        self.settle()
        time.sleep(QUIET)
        self.pump()
        self.check_revisions()
        self.compare(self.slots + self.closed_slots)
        for w in self.model.watchers:
            slot = w.slot
            for log in slot.logs:
                if log.instances[w.index].revisions != w.expected:
                    self.fail("watcher %d: got %s, expected %s" % (
                        w.watch_id, log.instances[w.index].revisions, w.expected))
            self.events += 2 * len(w.expected)


@pytest.mark.parametrize("target_store,seed", CASES, indirect=["target_store"])
def test_watch_random(target_store, start_servers, tmp_path, seed):
    if target_store.startswith("memory:"):
        target_store = STORE.replace("{tmp}", str(tmp_path))
    pair = start_servers(target_store=target_store)
    run = Run(pair, seed)
    try:
        expiry_at = run.rnd.randrange(OPS_PER_SEED // 4, 3 * OPS_PER_SEED // 4)
        for i in range(OPS_PER_SEED):
            if i == expiry_at:
                run.op_expiry()
            else:
                run.step()
        run.finish()
    finally:
        run.close()
    m = run.model
    watchers = len(m.watchers)
    # The run must have exercised what it is about.
    assert m.rev > 150, m.rev
    assert watchers > 40, watchers
    assert m.compacted > 0
    assert run.events > 1000, run.events
    assert any(w.compacted for w in m.watchers)
    print("seed %d: %d operations, %d revisions, %d watchers (%d compacted), %d event "
          "revisions compared" % (seed, len(run.ops), m.rev, watchers,
                                  sum(1 for w in m.watchers if w.compacted), run.events))


def test_replay_from_the_compacted_revision_has_no_deletes(pair):
    """etcd's compaction at C keeps the versions written at C but drops C's tombstones, so
    a watch replaying from C gets C's PUTs and not its DELETEs (found by seed 1 above)."""
    d = Dual(pair)
    try:
        _replay_from_compacted(d)
    finally:
        d.close()


def _replay_from_compacted(d):
    d.put(b"k", b"1")                                            # 2
    d.put(b"j", b"1")                                            # 3
    d.txn(("delete", b"k"), ("put", b"j", b"2"))                 # 4: DELETE k, PUT j
    d.put(b"k", b"again")                                        # 5
    d.compact(4)
    d.open("s")
    r = d.request("s", "create_request", key=b"j", range_end=b"l", start_revision=4,
                  prev_kv=True)
    assert [[(e.type, e.kv.key, e.kv.mod_revision, e.HasField("prev_kv"))
             for e in x.events] for x in r["s"]] == [
        [], [(0, b"j", 4, False), (0, b"k", 5, False)]]
    d.delete(b"k")                                               # 6: live, with prev_kv
