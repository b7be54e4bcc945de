"""etcdserverpb.Watch: etcd's watch stream protocol (v3rpc/watch.go) over the hub.

One :class:`WatchStream` per gRPC stream (or gateway ``POST /v3/watch`` request) holds any
number of watchers.  Requests are handled in order and every control response (created,
canceled, progress) is sent before the handler returns, so created responses go out in
request order and before any event of their watcher.

Behaviour follows etcd 3.5 (latest patch releases where they differ):

* create: empty key -> ``"\\0"``; ``range_end`` ``"\\0"`` = every key >= key; a non-empty
  ``range_end <= key`` -> created+canceled, watch_id -1, "mvcc: watcher range is empty";
  negative ``start_revision`` -> created+canceled, watch_id -1, "etcdserver: mvcc: required
  revision has been compacted" (3.4.38+/3.5.24+); ``watch_id`` 0 -> the stream's counter
  (from 0, skipping IDs in use), a non-zero ID in use -> created+canceled, watch_id -1,
  "mvcc: duplicate watch ID provided on the WatchStream";
* a watcher that falls behind a compaction gets ``canceled`` + ``compact_revision`` with a
  header of revision 0 and, as in etcd, keeps its ID on the stream until the client
  cancels it (the cancel is answered);
* cancel of an unknown ID: no response;
* ``progress_request``: one ``watch_id -1`` response when every watcher of the stream is
  synced, nothing otherwise (3.4.25+/3.5.8+); ``progress_notify`` watchers get a response
  every ``progress_interval`` (+ up to 10 % jitter, per stream) if they are synced and had
  no events since the previous tick;
* ``fragment``: responses of >= ``max_request_bytes + 512 KiB`` with at least 2 events are
  split (etcd's sendFragments);
* half-close keeps the stream running; cancel drops every watcher of the stream.

Slow consumers: a transport may give its :class:`~etcdadapter.services.rpc.ServerStream`
an optional ``pending_bytes()`` method returning how many response bytes are queued but
not yet written (flow control, socket buffer).  When it exceeds ``stream_budget`` the
hub stops sending events to that stream's watchers, which then catch up from history once
the queue drains.  Streams without the method are never considered over budget.
"""

import random

from etcdadapter import errors
from etcdadapter.pb.etcdserverpb import rpc_pb2 as rpc
from etcdadapter.security.authorizer import Authorizer
from etcdadapter.services.rpc import service_methods
from etcdadapter.services.watch_hub import SYNCED

INVALID_WATCH_ID = -1
GRPC_OVERHEAD_BYTES = 512 * 1024          # etcd: grpcOverheadBytes
PROGRESS_INTERVAL = 600.0                 # etcd: 10 minutes
STREAM_BUDGET = 4 * 1024 * 1024           # bytes queued on a stream before it is "slow"

ErrEmptyWatcherRange = "mvcc: watcher range is empty"
ErrWatcherDuplicateID = "mvcc: duplicate watch ID provided on the WatchStream"

_MISSING = object()

_NOPUT = rpc.WatchCreateRequest.NOPUT
_NODELETE = rpc.WatchCreateRequest.NODELETE


def _varint_size(n):
    size = 1
    while n >= 0x80:
        n >>= 7
        size += 1
    return size


class WatchService(object):
    def __init__(self, hub, store, identity, max_request_bytes=1572864,
                 progress_interval=PROGRESS_INTERVAL, stream_budget=STREAM_BUDGET,
                 clock=None, rand=random.random, authz=None):
        self.authz = authz or Authorizer().for_watch()
        self.hub = hub
        self.store = store
        self.identity = identity
        self.fragment_bytes = max_request_bytes + GRPC_OVERHEAD_BYTES
        self.progress_interval = progress_interval
        self.stream_budget = stream_budget
        self.clock = clock if clock is not None else hub.clock
        self.rand = rand
        self.streams = set()

    def Watch(self, stream):
        ws = stream.bind(WatchStream(self, stream))
        self.streams.add(ws)
        return ws

    def methods(self):
        return service_methods("Watch", [("Watch", self.Watch, ("/v3/watch",))])


class WatchStream(object):
    """One watch stream: etcd's serverWatchStream + watchStream, and the hub's sink."""

    def __init__(self, service, stream):
        self.service = service
        self.hub = service.hub
        self.stream = stream
        self.watchers = {}        # watch_id -> Watcher (compacted ones stay until canceled)
        self.next_id = 0
        self.progress = {}        # watch_id -> no events since the last tick (etcd's map)
        self.ticker = None
        self.interval = None
        self.closed = False

    # -- ServerStream callbacks --------------------------------------------------------
    def on_message(self, request):
        if self.closed:
            return
        which = request.WhichOneof("request_union")
        if which == "create_request":
            self._create(request.create_request)
        elif which == "cancel_request":
            self._cancel(request.cancel_request.watch_id)
        elif which == "progress_request":
            self._progress_all()
        # anything else (an empty request): ignored, as etcd does

    def on_half_close(self):
        # etcd's recvLoop returns nil on EOF and the stream keeps sending.
        pass

    def on_cancel(self):
        if self.closed:
            return
        self.closed = True
        for w in self.watchers.values():
            if w is not None:
                self.hub.cancel(w)
        self.watchers.clear()
        self.progress.clear()
        if self.ticker is not None and self.ticker.active():
            self.ticker.cancel()
        self.ticker = None
        self.service.streams.discard(self)

    # -- requests -----------------------------------------------------------------------
    def _response(self, revision):
        r = rpc.WatchResponse()
        self.service.identity.fill(r.header, revision)
        return r

    def _send(self, response):
        if not self.closed:
            self.stream.send(response)

    def _create_failed(self, reason):
        r = self._response(self.hub.current_revision)
        r.watch_id = INVALID_WATCH_ID
        r.created = True
        r.canceled = True
        r.cancel_reason = reason
        self._send(r)

    def _create(self, creq):
        key = creq.key or b"\0"
        range_end = creq.range_end
        if creq.start_revision < 0:
            self._create_failed(errors.ErrCompacted.message)
            return
        # Permission before the empty range, as etcd (isWatchPermitted, then mvcc's
        # Watch): a range ending before its key is refused without permission on the key.
        authz = self.service.authz
        if authz.enabled:
            reason = authz.cancel_reason(self.stream.context, key, range_end)
            if reason is not None:
                self._create_failed(reason)
                return
        if range_end and range_end != b"\0" and range_end <= key:
            self._create_failed(ErrEmptyWatcherRange)
            return
        wid = creq.watch_id
        if wid == 0:
            while self.next_id in self.watchers:
                self.next_id += 1
            wid = self.next_id
            self.next_id += 1
        elif wid in self.watchers:
            self._create_failed(ErrWatcherDuplicateID)
            return
        filters = set(creq.filters)
        r = self._response(self.hub.current_revision)
        r.watch_id = wid
        r.created = True
        self._send(r)
        if creq.progress_notify:
            self.progress[wid] = True
            self._start_ticker()
        self.watchers[wid] = None          # reserve the ID while the hub starts it
        self.watchers[wid] = self.hub.watch(
            self, wid, key, range_end, creq.start_revision, prev_kv=creq.prev_kv,
            noput=_NOPUT in filters, nodelete=_NODELETE in filters,
            progress_notify=creq.progress_notify, fragment=creq.fragment)

    def _cancel(self, wid):
        w = self.watchers.pop(wid, _MISSING)
        if w is _MISSING:
            return                          # unknown ID: etcd sends nothing
        if w is not None:
            self.hub.cancel(w)
        self.progress.pop(wid, None)
        r = self._response(self.hub.current_revision)
        r.watch_id = wid
        r.canceled = True
        self._send(r)

    def _all_synced(self):
        for w in self.watchers.values():
            if w is None or w.state is not SYNCED:
                return False
        return True

    def _progress_all(self):
        # etcd 3.5.8+ RequestProgressAll: only if every watcher is synced; with no
        # watchers nothing is sent either.
        if not self.watchers or not self._all_synced():
            return
        r = self._response(self.hub.revision)
        r.watch_id = INVALID_WATCH_ID
        self._send(r)

    # -- progress notifications ---------------------------------------------------------
    def _start_ticker(self):
        if self.ticker is not None:
            return
        base = self.service.progress_interval
        self.interval = base + self.service.rand() * base / 10.0
        self.ticker = self.service.clock.callLater(self.interval, self._tick)

    def _tick(self):
        self.ticker = self.service.clock.callLater(self.interval, self._tick)
        for wid, quiet in list(self.progress.items()):
            if quiet:
                w = self.watchers.get(wid)
                if w is not None and w.state is SYNCED:
                    r = self._response(self.hub.revision)
                    r.watch_id = wid
                    self._send(r)
            self.progress[wid] = True

    # -- the hub's sink interface -------------------------------------------------------
    def over_budget(self):
        pending = getattr(self.stream, "pending_bytes", None)
        if pending is None or self.closed:
            return False
        return pending() > self.service.stream_budget

    def send_events(self, w, response):
        if self.closed:
            return
        if self.progress.get(w.id):
            self.progress[w.id] = False
        if w.fragment:
            self._send_fragments(response)
        else:
            self.stream.send(response)

    def watcher_compacted(self, w, response):
        # The ID stays registered (etcd keeps the compacted watcher in its stream until it
        # is canceled or the stream closes).
        self._send(response)

    def _send_fragments(self, wr):
        limit = self.service.fragment_bytes
        if wr.ByteSize() < limit or len(wr.events) < 2:
            self.stream.send(wr)
            return
        events = list(wr.events)
        base = rpc.WatchResponse()
        base.CopyFrom(wr)
        del base.events[:]
        base.fragment = True
        base_size = base.ByteSize()
        idx, n = 0, len(events)
        while True:
            size = base_size
            first = idx
            while idx < n:
                es = events[idx].ByteSize()
                field = 1 + _varint_size(es) + es
                if idx > first and size + field >= limit:
                    break
                size += field
                idx += 1
            cur = rpc.WatchResponse()
            cur.CopyFrom(base)
            cur.events.extend(events[first:idx])
            if idx == n:
                cur.fragment = False
            self._send(cur)
            if idx == n or self.closed:
                return
