"""The watch fan-out engine: one change feed in, per-watcher responses out.

Transport-independent.  :class:`WatchHub` subscribes once (per process) to the store's
change feed and routes every committed :class:`~etcdadapter.store.base.Change` to the
watchers whose key range it touches.  The per-stream protocol (watch IDs, created/cancel
responses, fragmentation, progress timers) is :mod:`etcdadapter.services.watch`; the hub
talks to it through a small *sink* interface (below).

Routing index (:class:`RangeIndex`), over *synced* watchers only.  Watchers with the same
range share one group, and routing works on groups, so the cost of one event is
proportional to the number of matching groups and watchers, never to all watchers:

* single key (``range_end`` empty, or ``key + "\\0"``): a dict ``key -> group``; one
  lookup per event;
* prefixes (``range_end == prefix_end(key)``; also "all keys" = the empty prefix): a dict
  per prefix *length* ``{len: {prefix: group}}``; an event on key ``k`` costs one dict
  lookup of ``k[:n]`` per distinct prefix length ``n`` in use -- APISIX's single
  ``/apisix/`` watch (or its per-resource prefixes) is one or a few lengths, however many
  watchers there are;
* any other interval ``[key, range_end)`` or ``[key, +inf)``: a centered interval tree,
  rebuilt lazily (on the next event) after the set of distinct intervals changed.  A
  stabbing query visits O(log n) nodes and at each node scans a list sorted by start (or
  by end, descending) only while the entries match, so it costs O(log n + matches).

Synced / unsynced, as etcd's watchableStore:

* A watcher is *synced* when it has been sent every event up to the last change the hub
  was fed; synced watchers are in the index and get live events.  ``start_revision`` 0
  (from now) and future start revisions are synced at once; a future one just ignores
  changes below its start.
* An *unsynced* watcher catches up from ``store.history()`` in batches of at most
  ``batch_revisions`` (1000, etcd's watchBatchMaxRevs) revisions per response, each with
  header.revision = the revision the hub has reached, then joins the synced set.
  ``history()`` may be asynchronous (SQL stores): while any read is in flight the hub keeps
  the changes it is fed in a buffer, so a read that started when the hub was at ``T``
  finishes with the buffered changes after ``T``, and the watcher joins the index with
  nothing missed or repeated.  (If the buffer outgrows ``buffer_bytes`` it is dropped and
  the affected reads simply read again.)  ``next_rev`` (etcd's minRev) is the first
  revision a watcher has not been sent; every delivery path skips changes below it.
* Slow consumers: before sending, the hub asks the sink whether its stream is over its
  outgoing budget.  If so the watcher is taken out of the index (a "victim") and later
  catches up from history, every ``resync_interval`` seconds until its stream has room.  If
  history has been compacted past it meanwhile it gets etcd's compacted-cancel response.
  Events are never dropped silently and nothing per watcher is queued in memory.

Sink interface (one per stream; :class:`etcdadapter.services.watch.WatchStream`):

``over_budget()``
    True if the stream's outgoing queue is above its budget (do not send events now).
``send_events(watcher, response)``
    Send a WatchResponse with events (the sink may fragment it).
``watcher_compacted(watcher, response)``
    The watcher fell behind a compaction; send the canceled response.  The hub has already
    dropped the watcher.

Responses are built here, with shared parts built once: for one change, the
``mvccpb.Event`` of each (event, with prev_kv?) is built once, and the whole response once
per (group, options); each watcher gets a copy with its own watch_id.
"""

from twisted.internet import defer
from twisted.logger import Logger

from etcdadapter import errors
from etcdadapter.pb.etcdserverpb import rpc_pb2 as rpc
from etcdadapter.store.base import DELETE, PUT
from etcdadapter.store.mvcc import event_to_pb, filter_change, prefix_end  # noqa: F401 (re-exported)

log = Logger()

SYNCED = "synced"
UNSYNCED = "unsynced"
GONE = "gone"

ALL_KEYS = b"\0"

WATCH_BATCH_MAX_REVS = 1000       # etcd watchBatchMaxRevs
RESYNC_INTERVAL = 0.1             # etcd watchResyncPeriod
BUFFER_BYTES = 32 * 1024 * 1024   # changes kept while history reads are in flight
MAX_CONCURRENT_READS = 64         # history reads in flight at once
_CHANGE_OVERHEAD = 64


class Watcher(object):
    """One watch.  ``key``/``range_end`` are as the store's history() takes them
    (``range_end`` b"" = single key, b"\\0" = every key >= key)."""

    __slots__ = ("sink", "id", "key", "range_end", "next_rev", "prev_kv", "noput",
                 "nodelete", "progress_notify", "fragment", "state", "reading", "group",
                 "sig")

    def __init__(self, sink, watch_id, key, range_end, prev_kv=False, noput=False,
                 nodelete=False, progress_notify=False, fragment=False):
        self.sink = sink
        self.id = watch_id
        self.key = key
        self.range_end = range_end
        self.next_rev = 0
        self.prev_kv = bool(prev_kv)
        self.noput = bool(noput)
        self.nodelete = bool(nodelete)
        self.progress_notify = bool(progress_notify)
        self.fragment = bool(fragment)
        self.state = None
        self.reading = False
        self.group = None
        # Watchers with the same signature get identical responses (but for watch_id).
        self.sig = (self.prev_kv, self.noput, self.nodelete)

    @property
    def synced(self):
        return self.state is SYNCED

    def __repr__(self):
        return "<Watcher %d [%r, %r) next=%d %s>" % (self.id, self.key, self.range_end,
                                                     self.next_rev, self.state)


# ---------------------------------------------------------------------------------------
# The routing index
# ---------------------------------------------------------------------------------------

class _Group(object):
    """The watchers sharing one index slot (an ordered set: dict keys)."""

    __slots__ = ("slot", "members")

    def __init__(self, slot):
        self.slot = slot
        self.members = {}


def _slot(key, range_end):
    """Classify a watched range: ("key", k) | ("prefix", p) | ("range", start, end|None)."""
    if not range_end:
        return ("key", key)
    if range_end == ALL_KEYS:
        if key <= ALL_KEYS:              # every key (keys are never empty)
            return ("prefix", b"")
        return ("range", key, None)
    if range_end == key + b"\0":
        return ("key", key)
    if range_end == prefix_end(key):
        return ("prefix", key)
    return ("range", key, range_end)


class _Node(object):
    __slots__ = ("center", "by_start", "by_end", "left", "right")


def _build_tree(items):
    """Centered interval tree over ``items`` = [(start, end_or_None, group)] (half-open
    intervals, None = unbounded, all non-empty)."""
    if not items:
        return None
    starts = sorted(it[0] for it in items)
    center = starts[len(starts) // 2]
    left, right, here = [], [], []
    for it in items:
        if it[1] is not None and it[1] <= center:
            left.append(it)
        elif it[0] > center:
            right.append(it)
        else:                            # start <= center < end
            here.append(it)
    node = _Node()
    node.center = center
    node.by_start = sorted(here, key=lambda it: it[0])
    node.by_end = sorted(here, key=lambda it: (it[1] is None, it[1] or b""), reverse=True)
    node.left = _build_tree(left)
    node.right = _build_tree(right)
    return node


class RangeIndex(object):
    """Synced watchers by watched range; see the module docstring."""

    def __init__(self):
        self._exact = {}          # key -> _Group
        self._prefix = {}         # length -> {prefix: _Group}
        self._lengths = ()        # sorted distinct prefix lengths in use
        self._ranges = {}         # (start, end|None) -> _Group
        self._tree = None
        self._dirty = False
        self.size = 0

    def __len__(self):
        return self.size

    def add(self, w):
        slot = _slot(w.key, w.range_end)
        kind = slot[0]
        if kind == "key":
            table, k = self._exact, slot[1]
        elif kind == "prefix":
            k = slot[1]
            table = self._prefix.get(len(k))
            if table is None:
                table = self._prefix[len(k)] = {}
                self._lengths = tuple(sorted(self._prefix))
        else:
            table, k = self._ranges, (slot[1], slot[2])
        group = table.get(k)
        if group is None:
            group = table[k] = _Group(slot)
            if kind == "range":
                self._dirty = True
        group.members[w] = None
        w.group = group
        self.size += 1

    def watchers(self):
        """Every indexed watcher (a snapshot list)."""
        groups = list(self._exact.values()) + list(self._ranges.values())
        for table in self._prefix.values():
            groups.extend(table.values())
        return [w for g in groups for w in list(g.members)]

    def remove(self, w):
        group = w.group
        if group is None:
            return
        w.group = None
        del group.members[w]
        self.size -= 1
        if group.members:
            return
        slot = group.slot
        kind = slot[0]
        if kind == "key":
            del self._exact[slot[1]]
        elif kind == "prefix":
            n = len(slot[1])
            table = self._prefix[n]
            del table[slot[1]]
            if not table:
                del self._prefix[n]
                self._lengths = tuple(sorted(self._prefix))
        else:
            del self._ranges[(slot[1], slot[2])]
            self._dirty = True

    def match(self, key):
        """The groups whose range contains ``key``."""
        out = []
        g = self._exact.get(key)
        if g is not None:
            out.append(g)
        if self._lengths:
            n = len(key)
            prefix = self._prefix
            for length in self._lengths:
                if length > n:
                    break
                g = prefix[length].get(key[:length])
                if g is not None:
                    out.append(g)
        if self._ranges:
            if self._dirty:
                self._tree = _build_tree([(s, e, g) for (s, e), g in self._ranges.items()])
                self._dirty = False
            node = self._tree
            while node is not None:
                if key < node.center:
                    for it in node.by_start:
                        if it[0] > key:
                            break
                        out.append(it[2])
                    node = node.left
                else:
                    for it in node.by_end:
                        if it[1] is not None and it[1] <= key:
                            break
                        out.append(it[2])
                    node = node.right
        return out


# ---------------------------------------------------------------------------------------
# The hub
# ---------------------------------------------------------------------------------------

def _change_size(change):
    n = _CHANGE_OVERHEAD
    for ev in change.events:
        kv = ev.kv
        n += len(kv.key) + len(kv.value) + _CHANGE_OVERHEAD
        if ev.prev_kv is not None:
            n += len(ev.prev_kv.value)
    return n


class WatchHub(object):
    def __init__(self, store, identity, clock=None, batch_revisions=WATCH_BATCH_MAX_REVS,
                 resync_interval=RESYNC_INTERVAL, buffer_bytes=BUFFER_BYTES,
                 max_concurrent_reads=MAX_CONCURRENT_READS):
        if clock is None:
            from twisted.internet import reactor as clock
        self.store = store
        self.identity = identity
        self.clock = clock
        self.batch_revisions = batch_revisions
        self.resync_interval = resync_interval
        self.buffer_bytes = buffer_bytes
        self.max_concurrent_reads = max_concurrent_reads
        self.index = RangeIndex()
        self.unsynced = {}          # Watcher -> None (ordered set)
        self._fed = None            # revision of the last change fed; None: none yet
        self._reads = 0             # history reads in flight
        self._buffer = []           # changes fed while reads are in flight
        self._buffer_from = 0       # every fed change > this is in _buffer
        self._buffer_size = 0
        self._resync_call = None
        self._unsubscribe = store.subscribe(self._on_change, on_lost=self._on_lost)

    def _on_lost(self, first, last, compact_revision):
        """Revisions first..last will never be fed (another adapter compacted them
        before this process read them): the live watchers that needed them go to
        catch-up, whose history read answers ErrCompacted -- so they are canceled with
        compact_revision, as etcd cancels a watcher that fell behind a compaction."""
        for w in self.index.watchers():
            if w.state is SYNCED and w.next_rev <= last:
                self._make_victim(w, w.next_rev)

    # -- revisions ----------------------------------------------------------------------
    @property
    def revision(self):
        """The revision up to which every change has been fed to the hub (what progress
        notifications and catch-up batches report)."""
        if self._fed is None:
            return self.store.revision
        return self._fed

    @property
    def current_revision(self):
        """The store's current revision as the watch layer reports it (created/canceled
        headers; start_revision 0 = after this)."""
        rev = self.store.revision
        if self._fed is not None and self._fed > rev:
            return self._fed
        return rev

    # -- watchers -----------------------------------------------------------------------
    def watch(self, sink, watch_id, key, range_end, start_revision, prev_kv=False,
              noput=False, nodelete=False, progress_notify=False, fragment=False):
        """Start a watcher (the created response must already have been sent: a
        catching-up watcher may be sent events right away).  ``start_revision`` >= 0."""
        w = Watcher(sink, watch_id, key, range_end, prev_kv, noput, nodelete,
                    progress_notify, fragment)
        current = self.current_revision
        if start_revision == 0 or start_revision > current:
            w.next_rev = start_revision if start_revision > current else current + 1
            w.state = SYNCED
            self.index.add(w)
        else:
            w.next_rev = start_revision
            w.state = UNSYNCED
            self.unsynced[w] = None
            self._catch_up(w)
        return w

    def cancel(self, w):
        """Forget ``w`` (idempotent)."""
        if w.state is SYNCED:
            self.index.remove(w)
        elif w.state is UNSYNCED:
            self.unsynced.pop(w, None)
        w.state = GONE

    def close(self):
        """Stop consuming the feed (the service is stopping)."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._resync_call is not None and self._resync_call.active():
            self._resync_call.cancel()
        self._resync_call = None

    # -- responses ----------------------------------------------------------------------
    def _response(self, revision):
        r = rpc.WatchResponse()
        self.identity.fill(r.header, revision)
        return r

    def _events_response(self, changes, w, revision, cache=None):
        """The response carrying ``w``'s events of ``changes``, or None if its filters
        leave nothing."""
        pbs = []
        for change in changes:
            for ev in change.events:
                if ev.type == PUT:
                    if w.noput:
                        continue
                elif ev.type == DELETE and w.nodelete:
                    continue
                if cache is None:
                    pbs.append(event_to_pb(ev, w.prev_kv))
                    continue
                ck = (id(ev), w.prev_kv and ev.prev_kv is not None)
                m = cache.get(ck)
                if m is None:
                    m = cache[ck] = event_to_pb(ev, w.prev_kv)
                pbs.append(m)
        if not pbs:
            return None
        r = self._response(revision)
        r.watch_id = w.id
        r.events.extend(pbs)
        return r

    # -- the live path ------------------------------------------------------------------
    def _on_change(self, change):
        rev = change.revision
        if self._fed is not None and rev <= self._fed:
            log.warn("watch hub: change feed went back from {a} to {b}; ignored",
                     a=self._fed, b=rev)
            return
        self._fed = rev
        if self._reads:
            self._buffer_change(change)
        index = self.index
        if not index.size:
            return
        events = change.events
        hits = {}                     # _Group -> [event, ...] in execution order
        if len(events) == 1:
            ev = events[0]
            for g in index.match(ev.kv.key):
                hits[g] = events
        else:
            for ev in events:
                for g in index.match(ev.kv.key):
                    lst = hits.get(g)
                    if lst is None:
                        hits[g] = [ev]
                    else:
                        lst.append(ev)
        if not hits:
            return
        cache = {}                    # (event, with prev_kv) -> mvccpb.Event
        for g, evs in hits.items():
            one = (_OneChange(rev, evs),)
            templates = {}
            for w in list(g.members):
                if w.state is not SYNCED or rev < w.next_rev:
                    continue
                sink = w.sink
                if sink.over_budget():
                    self._make_victim(w, rev)
                    continue
                w.next_rev = rev + 1
                sig = w.sig
                if sig in templates:
                    t = templates[sig]
                else:
                    t = templates[sig] = self._events_response(one, w, rev, cache)
                if t is None:
                    continue
                r = rpc.WatchResponse()
                r.CopyFrom(t)
                r.watch_id = w.id
                try:
                    sink.send_events(w, r)
                except Exception:
                    # A broken stream must not cost the other watchers their events.
                    log.failure("watch hub: sending revision {rev} to watcher {id} failed",
                                rev=rev, id=w.id)

    def _make_victim(self, w, rev):
        """``w``'s stream is over budget: take it out of the live path; it will catch up
        from history starting at ``rev``."""
        self.index.remove(w)
        w.state = UNSYNCED
        w.next_rev = rev
        self.unsynced[w] = None
        self._schedule_resync()

    # -- catch-up -----------------------------------------------------------------------
    def _schedule_resync(self):
        if self._resync_call is None or not self._resync_call.active():
            self._resync_call = self.clock.callLater(self.resync_interval, self._resync)

    def _resync(self):
        self._resync_call = None
        for w in list(self.unsynced):
            if not w.reading:
                self._catch_up(w)
        if any(not w.reading for w in self.unsynced):
            self._schedule_resync()

    def _catch_up_soon(self, w):
        self.clock.callLater(0, self._catch_up, w)

    def _catch_up(self, w):
        if w.state is not UNSYNCED or w.reading:
            return
        if w.sink.over_budget() or self._reads >= self.max_concurrent_reads:
            self._schedule_resync()
            return
        w.reading = True
        target = self.current_revision
        if not self._reads:
            self._buffer = []
            self._buffer_size = 0
            self._buffer_from = target
        self._reads += 1
        d = defer.maybeDeferred(self.store.history, w.next_rev, w.key, w.range_end,
                                self.batch_revisions)
        d.addCallbacks(self._history_read, self._history_failed,
                       callbackArgs=(w, target), errbackArgs=(w,))
        d.addBoth(self._read_done)
        d.addErrback(lambda f: log.failure("watch catch-up failed", f))

    def _read_done(self, result):
        self._reads -= 1
        if not self._reads:
            self._buffer = []
            self._buffer_size = 0
        return result

    def _buffer_change(self, change):
        if change.revision <= self._buffer_from:
            return
        self._buffer.append(change)
        self._buffer_size += _change_size(change)
        if self._buffer_size > self.buffer_bytes:
            # Too much traffic during the reads: forget it; the reads that needed it will
            # read again from where they got to.
            self._buffer = []
            self._buffer_size = 0
            self._buffer_from = change.revision

    def _history_read(self, changes, w, target):
        if w.state is not UNSYNCED:
            return
        w.reading = False
        start = w.next_rev
        full = len(changes) >= self.batch_revisions
        changes = [c for c in changes if c.revision >= start]
        last = changes[-1].revision if changes else 0
        if changes and changes[0].revision == self.store.compact_revision:
            # etcd's compaction keeps the versions written at the compacted revision but
            # not its tombstones: a replay from there gets its PUTs, not its DELETEs.
            first = changes[0]
            changes[0] = _OneChange(first.revision,
                                    [ev for ev in first.events if ev.type != DELETE])
        if full:
            covered = last
        else:
            # history() read a snapshot taken after ``target`` was committed: everything in
            # [start, max(target, last)] touching the range is in ``changes``.
            covered = max(target, last)
            if target >= self._buffer_from:
                # ... and every change fed since ``target`` is in the buffer.
                for c in self._buffer:
                    if c.revision > covered:
                        fc = filter_change(c, w.key, w.range_end)
                        if fc is not None:
                            changes.append(fc)
                covered = max(covered, self.revision)
        header_rev = max(self.revision, changes[-1].revision if changes else 0)
        n = self.batch_revisions
        for i in range(0, len(changes), n):
            chunk = changes[i:i + n]
            if w.sink.over_budget():
                w.next_rev = chunk[0].revision
                self._schedule_resync()
                return
            w.next_rev = chunk[-1].revision + 1
            r = self._events_response(chunk, w, header_rev)
            if r is not None:
                w.sink.send_events(w, r)
            if w.state is not UNSYNCED:           # the sink went away meanwhile
                return
        if covered + 1 > w.next_rev:
            w.next_rev = covered + 1
        if covered >= self.revision:
            del self.unsynced[w]
            w.state = SYNCED
            self.index.add(w)
        else:
            self._catch_up_soon(w)

    def _history_failed(self, failure, w):
        if w.state is not UNSYNCED:
            return
        w.reading = False
        if failure.check(errors.EtcdError) and failure.value == errors.ErrCompacted:
            self.cancel(w)
            r = self._response(None)          # etcd: header revision 0
            r.watch_id = w.id
            r.canceled = True
            r.compact_revision = max(self.store.compact_revision, 0)
            w.sink.watcher_compacted(w, r)
            return
        log.failure("watch history read failed (watcher {id}); retrying", failure,
                    id=w.id)
        self._schedule_resync()


class _OneChange(object):
    """A Change-like view of one revision's events for one group."""

    __slots__ = ("revision", "events")

    def __init__(self, revision, events):
        self.revision = revision
        self.events = events
