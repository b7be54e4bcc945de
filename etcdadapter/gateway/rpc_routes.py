"""The ``/v3/*`` JSON API: every registered method with ``http_paths`` becomes a route.

This replaces etcd's grpc-gateway, which is a loopback gRPC client inside etcd; here the
request goes straight to the same handler the gRPC face calls, so there is no 4 MiB
response cap, no stream limit and the caller's TLS identity is the one the handler sees.

* Unary: the body's JSON is the request; 200 with the response's JSON, or the gRPC
  error's HTTP status with ``{"error","code","message"}``.
* Streaming (``/v3/watch``, ``/v3/lease/keepalive``): the body holds one or more request
  objects; they are fed to the stream in order, then the client's side is half-closed.
  The response is chunked: one ``{"result":...}`` line per message, flushed at once, and
  ``{"error":{...}}`` if the stream ends with an error.  The client cancels by closing
  the connection (or resetting its HTTP/2 stream): its watchers are released at once.

etcd answers a malformed first request of a stream with 500/Unknown; we answer 400
InvalidArgument, as for unary calls: a client's mistake must never look like a server
failure (APISIX marks an endpoint unhealthy for a while after a 5xx).
"""

from twisted.internet import defer

from etcdadapter.errors import HTTP_STATUS, EtcdError, StatusCode
from etcdadapter.gateway import json_codec
from etcdadapter.gateway.router import JSON
from etcdadapter.services.rpc import ServerStream, as_etcd_error, call_unary, open_stream

_GRPC_METADATA = "grpc-metadata-"
# etcd's gateway forwards the gRPC response headers as Grpc-Metadata-*.
_OK_HEADERS = [JSON, ("Grpc-Metadata-Content-Type", "application/grpc")]


def call_metadata(headers):
    """gRPC metadata for a gateway call, as grpc-gateway builds it: ``Authorization``
    verbatim as ``authorization`` and every ``Grpc-Metadata-<Key>`` as ``<key>``."""
    md = {}
    for name, value in headers.items():
        if name.startswith(_GRPC_METADATA):
            md[name[len(_GRPC_METADATA):]] = value
        elif name == "authorization":
            md["authorization"] = value
    return md


def respond_error(exchange, error):
    exchange.respond(HTTP_STATUS.get(error.code, 500), [JSON],
                     json_codec.error_body(error))


class RequestTooLarge(object):
    """The limit on a decoded request, as gRPC enforces it on the wire."""

    def __init__(self, max_receive_message_size):
        self.limit = max_receive_message_size

    def check(self, msg):
        size = msg.ByteSize()
        if size > self.limit:
            raise EtcdError(StatusCode.RESOURCE_EXHAUSTED,
                            "grpc: received message larger than max (%d vs. %d)"
                            % (size, self.limit))


def unary_route(method, limit):
    def handle(exchange):
        try:
            request = json_codec.decode_request(method.request_type, exchange.body)
            limit.check(request)
        except EtcdError as error:
            respond_error(exchange, error)
            return
        context = exchange.context
        context.metadata = call_metadata(exchange.headers)
        d = defer.maybeDeferred(call_unary, method, request, context)

        def answer(response):
            if not exchange.finished:
                exchange.respond(200, _OK_HEADERS, json_codec.encode(response))

        def failed(failure):
            if not exchange.finished:
                respond_error(exchange, as_etcd_error(failure))

        d.addCallbacks(answer, failed)
    return handle


class HttpServerStream(ServerStream):
    """A streaming call's handler side over one HTTP exchange."""

    def __init__(self, exchange):
        ServerStream.__init__(self, exchange.context)
        self.exchange = exchange

    def _start(self, status):
        if not self.exchange.started:
            self.exchange.start(status, _OK_HEADERS if status == 200 else [JSON])

    def send(self, response):
        if self.closed:
            return
        self._start(200)
        self.exchange.write(json_codec.stream_result(response))

    def _finish(self, error):
        if error is None:
            self._start(200)
        else:
            self._start(HTTP_STATUS.get(error.code, 500))
            self.exchange.write(json_codec.stream_error(error))
        self.exchange.end()

    def pending_bytes(self):
        return self.exchange.pending_bytes()

    def client_gone(self):
        if not self.closed:
            self.closed = True
            self.on_cancel()


def streaming_route(method, limit):
    def handle(exchange):
        requests, error = json_codec.decode_requests(method.request_type, exchange.body)
        try:
            for request in requests:
                limit.check(request)
        except EtcdError as too_large:
            requests, error = (), too_large
        if error is not None and not requests:
            respond_error(exchange, error)
            return
        exchange.context.metadata = call_metadata(exchange.headers)
        stream = HttpServerStream(exchange)
        exchange.on_close = stream.client_gone
        open_stream(method, stream)
        for request in requests:
            if stream.closed:
                return
            stream.on_message(request)
        if not stream.closed:
            stream.on_half_close()
    return handle


def install(router, registry, max_receive_message_size):
    limit = RequestTooLarge(max_receive_message_size)
    for method in registry:
        make = streaming_route if method.streaming else unary_route
        for path in method.http_paths:
            router.add(path, make(method, limit))
