"""gRPC Watch streams for the tests: one stream read by a thread (WatchSession), and the
same streams and writes on etcd and on the server under test, compared after every step
(Dual)."""

import queue
import threading
import time

import grpc

from etcdadapter.pb.etcdserverpb import rpc_pb2 as rpc

from support import servers

QUIET = 0.35          # etcd is "done" after this long without a response
TARGET_WAIT = 5.0     # how long our server may take for the responses etcd sent


def serialize(m):
    """A gRPC request serializer."""
    return m.SerializeToString()


class WatchSession(object):
    """One Watch stream on one server, read by a thread into a queue."""

    def __init__(self, channel):
        self.requests = queue.Queue()
        self.responses = queue.Queue()
        call = channel.stream_stream("/etcdserverpb.Watch/Watch",
                                     request_serializer=serialize,
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
