"""What runs on one HTTP/2 stream: a gRPC call or a plain HTTP exchange (the JSON gateway
over h2).

The connection (:class:`~etcdadapter.transport.h2_server.H2Server`) talks to both
through one interface and never asks which kind it holds:

* ``body_received(data)`` -- a DATA frame's payload;
* ``request_complete()`` -- the client ended its side (END_STREAM);
* ``trailers_received(ended)`` -- the client sent trailers;
* ``cancel()`` -- the client reset the stream, or the connection went away;
* ``server_stopping()`` -- GOAWAY was sent: streams that would never end stop now;
* ``window_opened()`` -- HTTP/2 flow control lets more of ``pending`` out;
* ``drained()`` -- everything in ``pending`` was framed: end the stream if it is done;
* ``stops_request_when_answered`` -- whether a client still sending when the answer is
  complete is told to stop (RST_STREAM NO_ERROR, as grpc-go does).

Output goes through ``pending`` (an :class:`~etcdadapter.transport.output_budget.Outbox`)
and the connection's one drain loop (``H2Server._drain``).
"""

import h2.errors
from twisted.logger import Logger

from etcdadapter.errors import EtcdError, ErrStopped, StatusCode
from etcdadapter.services.rpc import CallContext, ServerStream, UNARY, as_etcd_error
from etcdadapter.transport import grpc_codec
from etcdadapter.transport.http_exchange import HttpExchange
from etcdadapter.transport.output_budget import Outbox
from etcdadapter.transport.proto_decode import decode

log = Logger()


def error_trailers(error):
    trailers = [("grpc-status", str(error.code))]
    if error.message:
        trailers.append(("grpc-message", grpc_codec.encode_grpc_message(error.message)))
    return trailers


class GrpcCall(ServerStream):
    """One gRPC call on one HTTP/2 stream (unary or streaming)."""

    stops_request_when_answered = True

    def __init__(self, server, stream_id, method, context, decoder):
        ServerStream.__init__(self, context)
        self.server = server
        self.stream_id = stream_id
        self.method = method
        self.decoder = decoder
        self.request_payloads = []      # unary: collected until END_STREAM
        self.headers_sent = False
        self.answer = None              # unary: the response message, until finish()
        self.pending = Outbox(server.budget)   # response bytes waiting for window
        self.trailers = None            # sent once pending is drained
        self.deferred = None            # unary handler's Deferred (for cancellation)
        self.timer = None

    # -- handler-facing API --------------------------------------------------------
    def send(self, response):
        if self.closed:
            return
        payload = response.SerializeToString()
        self.server._send_grpc_data(self, grpc_codec.frame_message(payload))

    def pending_bytes(self):
        """Response bytes queued behind HTTP/2 flow control or in the socket's buffer
        (the watch hub's slow-consumer signal; the socket is shared by the streams)."""
        return len(self.pending) + self.server.budget.transport_unsent()

    def _finish(self, error):
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.server._finish_grpc(self, error)

    # -- connection-facing -----------------------------------------------------------
    def body_received(self, data):
        if self.closed:
            return
        try:
            payloads = self.decoder.feed(data)
        except EtcdError as error:
            self._fail(error)
            return
        if not payloads:
            return
        if self.method.kind == UNARY:
            self.request_payloads.extend(payloads)      # handled at END_STREAM
            return
        for payload in payloads:
            if self.closed:
                return
            try:
                request = decode(self.method.request_type, payload)
            except EtcdError as e:
                self._fail(e)
                return
            try:
                self.on_message(request)
            except Exception as e:
                self._fail(as_etcd_error(e))

    def request_complete(self):
        if self.closed:
            return
        if self.decoder.pending:
            self._fail(EtcdError(StatusCode.UNKNOWN, "unexpected EOF"))
        elif self.method.kind == UNARY:
            self.server._invoke_unary(self)
        else:
            try:
                self.on_half_close()
            except Exception as e:
                self._fail(as_etcd_error(e))

    def trailers_received(self, ended):
        # A gRPC request has no trailers: grpc-go resets the stream (PROTOCOL_ERROR) and
        # the call ends unanswered.
        self.server._abort(self, h2.errors.ErrorCodes.PROTOCOL_ERROR)

    def cancel(self):
        self.pending.clear()
        self.answer = None
        if self.closed:
            return
        self.closed = True
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        if self.deferred is not None:
            d, self.deferred = self.deferred, None
            d.cancel()
        try:
            self.on_cancel()
        except Exception:
            log.failure("error in on_cancel")

    def server_stopping(self):
        if self.method.kind != UNARY:       # a unary call in flight still gets its answer
            self.on_cancel()
            self.finish(ErrStopped())

    def window_opened(self):
        if self.pending:
            self.server._drain(self)

    def drained(self):
        if self.trailers is not None:
            self.server.conn.send_headers(self.stream_id, self.trailers, end_stream=True)
            self.trailers = None
            self.server._stream_done(self.stream_id)

    def _fail(self, error):
        self.on_cancel()
        self.finish(error)


class H2HttpExchange(HttpExchange):
    """A plain HTTP request carried on an HTTP/2 stream (the JSON gateway over h2)."""

    stops_request_when_answered = False

    def __init__(self, server, stream_id, headers, fields):
        HttpExchange.__init__(
            self, method=headers.get(":method", "GET"), uri=headers.get(":path", "/"),
            headers=fields,
            context=CallContext(metadata={}, peer=server.peer, transport="http",
                                peer_identity=server.peer_identity))
        self.server = server
        self.stream_id = stream_id
        self._chunks = []
        self._received = 0
        self.pending = Outbox(server.budget)
        self._end_after = False

    # -- connection-facing -----------------------------------------------------------
    def body_received(self, data):
        self._received += len(data)
        if self._received > self.server.router.max_body_bytes:
            self.body_too_large = True      # keep reading (flow control), keep nothing
            self._chunks = []
        elif not self.body_too_large:
            self._chunks.append(data)

    def request_complete(self):
        self.body = b"".join(self._chunks)
        self._chunks = None
        self.server.router.dispatch(self)

    def trailers_received(self, ended):
        if ended:
            self.request_complete()

    def cancel(self):
        self.pending.clear()
        self._connection_lost()

    def server_stopping(self):
        pass        # the gateway's watch streams are ended by the adapter's drain

    def window_opened(self):
        if self.pending:
            self.server._drain(self)

    def drained(self):
        if self._end_after:
            self.server.conn.end_stream(self.stream_id)
            self.server._stream_done(self.stream_id)

    # -- HttpExchange's transport side ---------------------------------------------------
    def _send_head(self, status, headers):
        hdrs = [(":status", str(status))]
        hdrs.extend((k.lower(), v) for k, v in headers
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"))
        self.server._safe(self.server.conn.send_headers, self.stream_id, hdrs)
        self.server._flush()

    def _send_body(self, data, end):
        self.pending.add(data)
        self._end_after = self._end_after or end
        self.server._drain(self)

    def pending_bytes(self):
        return len(self.pending) + self.server.budget.transport_unsent()
