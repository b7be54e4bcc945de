"""H2Server without sockets: an h2 client state machine talks to it through byte buffers,
with a fake clock for timeouts; and a method registry of echoing test handlers."""

import h2.config
import h2.connection
import h2.events
from twisted.internet import defer, task

from etcdadapter.errors import EtcdError, StatusCode
from etcdadapter.gateway import endpoints
from etcdadapter.gateway.router import HttpRouter
from etcdadapter.pb.etcdserverpb import rpc_pb2 as rpc
from etcdadapter.services.rpc import BIDI_STREAM, UNARY, Method, MethodRegistry
from etcdadapter.transport.grpc_codec import MessageDecoder, frame_message
from etcdadapter.transport.h2_server import H2Server


class Harness(object):
    """An H2Server on ``registry`` and an h2 client, joined by byte buffers: ``pump``
    moves bytes both ways until neither side has more; ``events`` is what the client got."""

    def __init__(self, registry, settings=None, router=None):
        self.clock = task.Clock()
        self.to_client = bytearray()
        self.lost = False
        if router is None:
            router = HttpRouter()
            endpoints.install(router, lambda: defer.succeed((True, "")))
        self.server = H2Server(self.to_client.extend, self._lose, registry, router,
                               self.clock, settings=settings)
        self.client = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.server.initiate()
        self.client.initiate_connection()
        self.events = []
        self.ack = True             # the client returns flow-control window as it reads
        self.pump()

    def _lose(self):
        self.lost = True

    def pump(self):
        for _ in range(100):
            self.clock.advance(0)       # streaming sends are flushed at the end of a turn
            out = self.client.data_to_send()
            if out:
                self.server.data_received(out)
            if not self.to_client:
                if not out:
                    return
                continue
            data = bytes(self.to_client)
            del self.to_client[:]
            for ev in self.client.receive_data(data):
                self.events.append(ev)
                if self.ack and isinstance(ev, h2.events.DataReceived):
                    self.client.acknowledge_received_data(ev.flow_controlled_length,
                                                          ev.stream_id)

    def start_call(self, path, extra_headers=(), end=False):
        sid = self.client.get_next_available_stream_id()
        headers = [(":method", "POST"), (":scheme", "http"), (":path", path),
                   (":authority", "localhost"), ("content-type", "application/grpc"),
                   ("te", "trailers")]
        headers.extend(extra_headers)
        self.client.send_headers(sid, headers, end_stream=end)
        return sid

    def send(self, sid, data, end=False):
        self.client.send_data(sid, data, end_stream=end)
        self.pump()

    def unary(self, path, message, extra_headers=()):
        sid = self.start_call(path, extra_headers)
        self.send(sid, frame_message(message.SerializeToString()), end=True)
        return sid

    def result(self, sid):
        """(headers, [payloads], trailers dict) for a finished stream."""
        headers, data, trailers = None, b"", None
        for ev in self.events:
            if getattr(ev, "stream_id", None) != sid:
                continue
            if isinstance(ev, h2.events.ResponseReceived):
                headers = dict(ev.headers)
            elif isinstance(ev, h2.events.DataReceived):
                data += ev.data
            elif isinstance(ev, h2.events.TrailersReceived):
                trailers = dict(ev.headers)
        if trailers is None and headers is not None and "grpc-status" in headers:
            trailers = headers   # trailers-only response
        decoder = MessageDecoder(1 << 30)
        return headers, decoder.feed(data), trailers


def echo_registry(**handlers):
    """A registry with KV Range (echoes the key; ``boom``: an error, ``later``: pending,
    ``big``: a large value) and Watch (echoes watch ids); ``handlers`` collects what the
    handlers saw."""
    reg = MethodRegistry()

    def range_handler(request, context):
        if request.key == b"boom":
            raise EtcdError(StatusCode.OUT_OF_RANGE, "bad: 100% \u00e9\n")
        if request.key == b"later":
            d = defer.Deferred()
            handlers["pending"].append((d, request))
            return d
        if request.key == b"big":
            return rpc.RangeResponse(kvs=[{"key": b"k", "value": b"v" * (request.limit)}])
        return rpc.RangeResponse(count=len(request.key), kvs=[{"key": request.key}])

    def watch_handler(stream):
        handlers["streams"].append(stream)
        stream.on_message = lambda req: stream.send(
            rpc.WatchResponse(watch_id=req.create_request.watch_id))
        stream.on_half_close = lambda: handlers["half_closed"].append(stream)
        stream.on_cancel = lambda: handlers["cancelled"].append(stream)

    handlers.setdefault("pending", [])
    handlers.setdefault("streams", [])
    handlers.setdefault("half_closed", [])
    handlers.setdefault("cancelled", [])
    reg.add(Method("/etcdserverpb.KV/Range", rpc.RangeRequest, rpc.RangeResponse, UNARY,
                   range_handler))
    reg.add(Method("/etcdserverpb.Watch/Watch", rpc.WatchRequest, rpc.WatchResponse,
                   BIDI_STREAM, watch_handler))
    return reg, handlers
