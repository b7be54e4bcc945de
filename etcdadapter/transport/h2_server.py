"""The server side of one HTTP/2 connection, as pure code over ``h2``.

Bytes come in through :meth:`H2Server.data_received`; bytes go out through the ``write``
callable given at construction.  No sockets, no reactor: a clock (``IReactorTime``) is
injected for grpc-timeout, so the whole thing runs in unit tests with ``task.Clock``.

Streams whose content-type is ``application/grpc*`` are gRPC calls dispatched through the
:class:`~etcdadapter.services.rpc.MethodRegistry`; every other stream is an HTTP exchange
handed to the HTTP router (the JSON gateway), exactly as HTTP/1.1 requests are.
"""

import enum
from collections import deque

import h2.config
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import hyperframe.frame
from twisted.internet import defer
from twisted.logger import Logger

from etcdadapter.errors import EtcdError, StatusCode
from etcdadapter.logs import address_text
from etcdadapter.services.rpc import (CallContext, UNARY, as_etcd_error, call_unary,
                                      open_stream)
from etcdadapter.transport import grpc_codec
from etcdadapter.transport.proto_decode import decode
from etcdadapter.transport.h2_connection import ServerConnection
from etcdadapter.transport.h2_frame_guard import FrameGuard, FrameLimitExceeded
from etcdadapter.transport.h2_streams import GrpcCall, H2HttpExchange, error_trailers
from etcdadapter.transport.hpack_cache import CachingEncoder, encode_block
from etcdadapter.transport.output_budget import OutputBudget

log = Logger()

_RESPONSE_HEADERS = ((":status", "200"), ("content-type", "application/grpc"),
                     ("grpc-accept-encoding", grpc_codec.ACCEPT_ENCODING))
_OK_TRAILERS = (("grpc-status", "0"),)
_TRAILERS_ONLY_OK = _RESPONSE_HEADERS[:2] + _OK_TRAILERS
_CONSTANT_HEADER_SETS = (_RESPONSE_HEADERS, _OK_TRAILERS, _TRAILERS_ONLY_OK)
# The same, HPACK-encoded once (static table only) for ServerConnection.send_response.
_RESPONSE_HEADERS_BLOCK = encode_block(_RESPONSE_HEADERS)
_OK_TRAILERS_BLOCK = encode_block(_OK_TRAILERS)
_STREAM_WINDOW = 1 << 20       # per-stream receive window we advertise
_CONNECTION_WINDOW = 16 << 20  # connection receive window
IDLE_LINGER = 1.0              # after an idle GOAWAY, time for the client to see it (Go: 1 s)
MAX_HELD_STREAMS = 1024        # new streams waiting for output to drain; more are refused
# SETTINGS_MAX_CONCURRENT_STREAMS: gRPC clients queue calls beyond it (a watch client
# needs one stream per watch session; APISIX opens about 13).  Each open stream holds
# state here; Go's HTTP/2 server allows 250, nginx 128.
DEFAULT_MAX_CONCURRENT_STREAMS = 1000


MAX_CACHED_HEADS = 64         # per connection (grpc-timeout values make many distinct)


def _request_head(raw_headers):
    """(headers, first) of a request's header list: ``headers`` with the last of a
    repeated name (pseudo and grpc-* headers), ``first`` the non-pseudo ones with the
    first of a repeated name (metadata and HTTP headers: etcd reads the first token /
    Authorization, as Go's Header.Get).  Names and values are bytes on the wire and
    become str byte for byte (latin-1, as on HTTP/1.1): a value that is not UTF-8 is
    carried as grpc-go carries it, not refused."""
    headers, first = {}, {}
    for k, v in raw_headers:
        k, v = k.decode("latin-1"), v.decode("latin-1")
        headers[k] = v
        if not k.startswith(":"):
            first.setdefault(k, v)
    return headers, first


class State(enum.Enum):
    """Where a connection is.  AWAITING_SETTINGS -> OPEN when the client's preface and
    first SETTINGS are in; -> DRAINING when we send GOAWAY (calls in flight finish, new
    streams are refused); -> CLOSED when the connection is lost or broken."""
    AWAITING_SETTINGS = "awaiting-settings"
    OPEN = "open"
    DRAINING = "draining"
    CLOSED = "closed"


class H2Settings(object):
    """Tunables for one connection (set from the daemon's options)."""

    def __init__(self, max_concurrent_streams=DEFAULT_MAX_CONCURRENT_STREAMS,
                 max_receive_message_size=2097152,
                 max_header_list_size=1 << 20):
        self.max_concurrent_streams = max_concurrent_streams
        self.max_receive_message_size = max_receive_message_size
        self.max_header_list_size = max_header_list_size


# Events that belong to one stream's request (held with it while it waits).
_STREAM_INPUT_EVENTS = (h2.events.DataReceived, h2.events.StreamEnded,
                        h2.events.TrailersReceived)


# Unary answers framed during one read are handed to the socket this many at a time
# (and the rest when the read is done): the client can work on the first answers while
# the read's later calls are handled, and a write each cost the server (and the client)
# more CPU than the call itself -- on loopback a send also runs the receiver's TCP path.
ANSWERS_PER_WRITE = 8


class H2Server(object):
    """``budget`` (OutputBudget): the connection's unsent output; while it is over, new
    streams wait (their events are held, in order, and their DATA is not acknowledged,
    so the client's window bounds them).  ``deadlines`` (Deadlines): told when the
    client's preface and SETTINGS are in and whether any stream is open (idle timeout).
    ``stats`` (ConnectionStats): counts the pauses."""

    def __init__(self, write, lose_connection, registry, router, clock,
                 settings=None, peer=None, peer_identity=None, budget=None,
                 deadlines=None, stats=None):
        self._write = write
        self._lose_connection = lose_connection
        self.registry = registry
        self.router = router
        self.clock = clock
        self.settings = settings or H2Settings()
        self.peer = peer
        self.peer_identity = peer_identity
        self.budget = budget or OutputBudget()
        self.deadlines = deadlines
        self.stats = stats
        config = h2.config.H2Configuration(
            client_side=False, header_encoding=None,      # bytes: see _request_head
            validate_outbound_headers=False, normalize_outbound_headers=False,
            validate_inbound_headers=False, normalize_inbound_headers=False)
        self.conn = ServerConnection(config, min(self.settings.max_concurrent_streams,
                                                 2 ** 32 - 1))
        self.conn.encoder = CachingEncoder(self.conn.encoder, _CONSTANT_HEADER_SETS)
        self.conn.local_settings = h2.settings.Settings(client=False, initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS:
                min(self.settings.max_concurrent_streams, 2 ** 32 - 1),
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: _STREAM_WINDOW,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: self.settings.max_header_list_size,
        })
        # Frames larger than the SETTINGS_MAX_FRAME_SIZE we advertise are a FRAME_SIZE
        # error.  h2 checks that only once the whole frame is in (up to 16 MiB later);
        # the FrameGuard checks each frame header as it arrives, and bounds header blocks.
        self.conn.max_inbound_frame_size = self.conn.local_settings.max_frame_size
        self._guard = FrameGuard(self.conn.max_inbound_frame_size,
                                 self.settings.max_header_list_size +
                                 self.conn.max_inbound_frame_size)
        self.streams = {}          # stream_id -> GrpcCall or HttpExchange
        self._heads = {}           # header list -> its _request_head (clients repeat them)
        self.state = State.AWAITING_SETTINGS
        self._held = deque()       # events of streams not dispatched yet (over budget)
        self._held_streams = {}    # stream_id -> number of its events in _held
        self._releasing = False
        self._linger_call = None
        self._in_receive = False
        self._answers = 0          # unary answers framed since the last write
        self._drained = None       # Deferred fired when the last stream ends after GOAWAY
        self._dirty = {}           # streaming calls with unflushed messages (ordered set)
        self._dirty_call = None
        self._waiting = {}         # streams whose output waits for window (ordered set)

    # -- lifecycle -----------------------------------------------------------------
    def initiate(self):
        self.conn.initiate_connection()
        self.conn.increment_flow_control_window(_CONNECTION_WINDOW - 65535)
        self._flush()

    def data_received(self, data):
        if self.state is State.CLOSED:
            return
        self._in_receive = True
        try:
            try:
                self._guard.feed(data)
                events = self.conn.receive_data(data)
            except FrameLimitExceeded as e:
                self._protocol_error(e, goaway=True)
                return
            except h2.exceptions.ProtocolError as e:
                self._protocol_error(e, goaway=False)    # h2 has queued its GOAWAY
                return
            for event in events:
                self._route_event(event)
        finally:
            self._in_receive = False
        self._flush()
        self._release_held()
        self._update_activity()

    def connection_lost(self):
        self._tear_down()
        if self._drained is not None and not self._drained.called:
            self._drained.callback(None)

    def _tear_down(self):
        """The connection is gone (or going): every stream is cancelled, nothing more
        is dispatched or sent on a stream."""
        self.state = State.CLOSED
        if self._linger_call is not None and self._linger_call.active():
            self._linger_call.cancel()
        if self._dirty_call is not None and self._dirty_call.active():
            self._dirty_call.cancel()
        self._dirty_call = None
        self._dirty.clear()
        self._held.clear()
        self._held_streams.clear()
        self._waiting.clear()
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            stream.cancel()

    def shutdown(self, linger=0):
        """Send GOAWAY, let in-flight unary calls finish, end streaming calls with
        'server stopped', then close (``linger`` seconds after the last stream ended).
        Returns a Deferred fired when closed."""
        if self.state is State.CLOSED:
            return defer.succeed(None)
        if self._drained is None:
            self.state = State.DRAINING
            self._drained = defer.Deferred()
            self._linger = linger
            self._held.clear()      # never dispatched: refused like any stream after GOAWAY
            for stream_id in list(self._held_streams):
                self._reset(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
            self._held_streams.clear()
            # h2's close_connection() would close the state machine and drop the calls
            # still running, so the GOAWAY frame is written by hand: in-flight streams
            # finish normally, new ones are refused.
            self._flush()
            self._write(hyperframe.frame.GoAwayFrame(
                0, last_stream_id=self.conn.highest_inbound_stream_id,
                error_code=h2.errors.ErrorCodes.NO_ERROR).serialize())
            for stream in list(self.streams.values()):
                stream.server_stopping()
            self._flush()
            self._maybe_close_drained()
        return self._drained

    def close_idle(self):
        """The idle timeout: GOAWAY with NO_ERROR, so gRPC clients open a new connection
        for their next call (a stream racing the GOAWAY is refused and retried)."""
        return self.shutdown(linger=IDLE_LINGER)

    def _maybe_close_drained(self):
        if self.state is State.DRAINING and not self.streams:
            self._flush()
            if not self._linger:
                self._lose_connection()
            elif self._linger_call is None:
                self._linger_call = self.clock.callLater(self._linger, self._linger_over)

    def _linger_over(self):
        if self.state is not State.CLOSED:
            self._lose_connection()

    def output_drained(self):
        """The transport's write buffer emptied: dispatch the streams held meanwhile."""
        self._release_held()
        self._update_activity()

    def _update_activity(self):
        if self.deadlines is None or self.state in (State.AWAITING_SETTINGS, State.CLOSED):
            return
        if self.streams or self._held_streams:
            self.deadlines.busy()
        elif self.state is State.OPEN:
            self.deadlines.idle()

    def _protocol_error(self, exc, goaway):
        log.debug("HTTP/2 protocol error from {peer}: {exc}", peer=address_text(self.peer),
                  exc=exc)
        if goaway:
            code = getattr(exc, "error_code", None) or h2.errors.ErrorCodes.PROTOCOL_ERROR
            try:
                self.conn.close_connection(error_code=code)
            except h2.exceptions.ProtocolError:
                pass
        self._in_receive = False
        self._flush()
        self._tear_down()
        self._lose_connection()

    def _flush(self):
        if not self._in_receive:
            self._write_framed()

    def _write_framed(self):
        """Hand what h2 has framed to the transport."""
        self._answers = 0
        data = self.conn.data_to_send()
        if data:
            self._write(data)

    def _over_budget(self):
        # What h2 has framed and not handed to the transport counts too.
        return self.budget.unsent() + self.conn.framed_size > self.budget.limit

    # -- holding new streams while the output is over budget --------------------------
    def _route_event(self, event):
        t = type(event)
        if t is h2.events.RequestReceived:
            if self._held or (self.state is not State.DRAINING and self._over_budget()):
                self._hold(event)
                return
        elif t in _STREAM_INPUT_EVENTS and event.stream_id in self._held_streams:
            self._hold(event)
            return
        elif t is h2.events.StreamReset and event.stream_id in self._held_streams:
            del self._held_streams[event.stream_id]
            self._held = deque(e for e in self._held if e.stream_id != event.stream_id)
            return
        self._handle_event(event)

    def _hold(self, event):
        sid = event.stream_id
        if type(event) is h2.events.RequestReceived:
            if len(self._held_streams) >= MAX_HELD_STREAMS:
                self._reset(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
                return
            if not self._held and self.stats is not None:
                self.stats.paused += 1
        self._held.append(event)
        self._held_streams[sid] = self._held_streams.get(sid, 0) + 1

    def _release_held(self):
        if not self._held or self._releasing or self.state is State.CLOSED:
            return
        self._releasing = True
        self._in_receive = True
        try:
            while self._held and not self._over_budget():
                event = self._held.popleft()
                sid = event.stream_id
                left = self._held_streams[sid] - 1
                if left:
                    self._held_streams[sid] = left
                else:
                    del self._held_streams[sid]
                self._handle_event(event)
        finally:
            self._releasing = False
            self._in_receive = False
        self._flush()

    # -- events --------------------------------------------------------------------
    def _handle_event(self, event):
        handler = self._event_handlers.get(type(event))
        if handler is not None:     # PingReceived (auto-acked by h2), SettingsAcknowledged,
            handler(self, event)    # PriorityUpdated...: nothing to do

    def _on_data(self, event):
        if event.flow_controlled_length:
            self.conn.acknowledge_received_data(event.flow_controlled_length,
                                                event.stream_id)
        stream = self.streams.get(event.stream_id)
        if stream is not None:
            stream.body_received(event.data)

    def _on_stream_ended(self, event):
        stream = self.streams.get(event.stream_id)
        if stream is not None:
            stream.request_complete()

    def _on_trailers(self, event):
        stream = self.streams.get(event.stream_id)
        if stream is not None:
            stream.trailers_received(event.stream_ended)

    def _on_reset(self, event):
        stream = self.streams.pop(event.stream_id, None)
        if stream is not None:
            self._cancel_stream(stream)
            self._maybe_close_drained()
            self._update_activity()

    def _on_window_update(self, event):
        if event.stream_id:
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.window_opened()
        else:
            self._windows_opened()

    def _on_remote_settings(self, event):
        if self.state is State.AWAITING_SETTINGS:   # the client's first SETTINGS
            self.state = State.OPEN
        self._windows_opened()

    def _on_terminated(self, event):
        self._tear_down()
        self._lose_connection()


    def _windows_opened(self):
        # Only the streams whose output waits for window: a connection may hold many
        # streams, and a WINDOW_UPDATE may come with every DATA frame the client reads.
        for stream in list(self._waiting):
            stream.window_opened()

    def _request_received(self, event):
        stream_id = event.stream_id
        if self.state is State.DRAINING:
            self._reset(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        key = tuple(event.headers)
        head = self._heads.get(key)
        if head is None:
            if len(self._heads) >= MAX_CACHED_HEADS:
                self._heads.clear()
            head = self._heads[key] = _request_head(event.headers)
        headers, first = head
        content_type = headers.get("content-type", "")
        if content_type.startswith("application/grpc"):
            self._start_grpc(stream_id, headers, first, event.stream_ended)
        else:
            exchange = H2HttpExchange(self, stream_id, dict(headers), dict(first))
            self.streams[stream_id] = exchange
            if event.stream_ended:
                exchange.request_complete()

    def _start_grpc(self, stream_id, headers, metadata, ended):
        timeout = headers.get("grpc-timeout")
        if timeout is not None:
            try:
                timeout = grpc_codec.parse_timeout(timeout)
            except ValueError:
                # grpc-go refuses the stream before looking at anything else.
                self._reset(stream_id, h2.errors.ErrorCodes.PROTOCOL_ERROR)
                return
        path = headers.get(":path", "")
        method = self.registry.lookup(path)
        if headers.get(":method") != "POST":
            self._send_trailers_only(stream_id, EtcdError(
                StatusCode.INTERNAL, "grpc: only POST is allowed"))
            return
        if method is None:
            self._send_trailers_only(stream_id, self.registry.unknown_method_error(path))
            return
        encoding = headers.get("grpc-encoding", "identity")
        if encoding not in grpc_codec.SUPPORTED_ENCODINGS:
            self._send_trailers_only(stream_id, EtcdError(
                StatusCode.UNIMPLEMENTED,
                'grpc: Decompressor is not installed for grpc-encoding "%s"' % encoding))
            return
        context = CallContext(metadata=metadata, peer=self.peer, transport="grpc",
                              peer_identity=self.peer_identity)
        decoder = grpc_codec.MessageDecoder(self.settings.max_receive_message_size, encoding)
        call = GrpcCall(self, stream_id, method, context, decoder)
        self.streams[stream_id] = call
        if timeout is not None:
            context.deadline = self.clock.seconds() + timeout
            if timeout > 0:
                call.timer = self.clock.callLater(timeout, self._deadline_exceeded, call)
        if method.kind != UNARY:
            if self._expired(call):
                self._deadline_exceeded(call)
                return
            self._invoke_streaming(call)
        if ended and not call.closed:
            call.request_complete()

    # -- calls ---------------------------------------------------------------------
    def _expired(self, call):
        # A deadline already past when the call would start (grpc-timeout 0n, -1S, or 1n
        # by now) ends it before its handler runs, as an expired context does in etcd.
        deadline = call.context.deadline
        return deadline is not None and self.clock.seconds() >= deadline

    def _invoke_unary(self, call):
        if self._expired(call):
            self._deadline_exceeded(call)
            return
        payloads = call.request_payloads
        if not payloads:
            # grpc-go reads the request with io.EOF and reports it as is.
            call.finish(EtcdError(StatusCode.UNKNOWN, "EOF"))
            return
        try:
            request = decode(call.method.request_type, payloads[0])   # extras ignored
        except EtcdError as e:
            call.finish(e)
            return
        call.request_payloads = None
        try:
            result = call_unary(call.method, request, call.context)
        except Exception as e:
            call.finish(as_etcd_error(e))
            return
        if isinstance(result, defer.Deferred):
            call.deferred = result
            result.addCallbacks(self._unary_done, self._unary_failed,
                                callbackArgs=(call,), errbackArgs=(call,))
        else:
            self._unary_done(result, call)

    def _unary_done(self, response, call):
        call.deferred = None
        if not call.closed:
            call.send(response)
            call.finish()

    def _unary_failed(self, failure, call):
        call.deferred = None
        if not call.closed:
            call.finish(as_etcd_error(failure))

    def _invoke_streaming(self, call):
        try:
            open_stream(call.method, call)
        except Exception as e:
            call.on_cancel()
            call.finish(as_etcd_error(e))

    def _deadline_exceeded(self, call):
        call.timer = None
        if call.closed:
            return
        call.on_cancel()
        call.finish(EtcdError(StatusCode.DEADLINE_EXCEEDED, "context deadline exceeded"))
        if call.deferred is not None:
            d, call.deferred = call.deferred, None
            d.cancel()

    def _cancel_stream(self, stream):
        self._waiting.pop(stream, None)
        stream.cancel()

    def _abort(self, stream, code):
        """End ``stream`` at once with RST_STREAM ``code`` (no answer)."""
        del self.streams[stream.stream_id]
        self._cancel_stream(stream)
        self._reset(stream.stream_id, code)
        self._maybe_close_drained()
        self._update_activity()

    # -- output --------------------------------------------------------------------
    def _send_grpc_data(self, call, data):
        if call.method.kind == UNARY and call.answer is None and not call.headers_sent:
            call.answer = data      # framed with the trailers by _finish_grpc, at once
            return
        self._begin_response(call)
        call.pending.add(data)
        if call.method.kind == UNARY:
            self._drain(call)
            return
        # A watch fan-out sends many messages to a stream in one reactor turn: frame
        # them together at the end of the turn (one DATA frame and one socket write
        # instead of one per message; h2's per-frame cost dominated watch latency).
        self._dirty[call] = None
        if self._dirty_call is None:
            self._dirty_call = self.clock.callLater(0, self._flush_dirty)

    def _begin_response(self, call):
        """The response headers, if not sent yet, and a unary answer held back (the
        general way: the answer did not fit ServerConnection.send_response)."""
        if not call.headers_sent:
            call.headers_sent = True
            self._safe(self.conn.send_headers, call.stream_id, _RESPONSE_HEADERS)
        if call.answer is not None:
            answer, call.answer = call.answer, None
            call.pending.add(answer)

    def _flush_dirty(self):
        self._dirty_call = None
        dirty, self._dirty = self._dirty, {}
        if self.state is State.CLOSED:
            return
        for call in dirty:
            if self.streams.get(call.stream_id) is call and call.pending:
                self._drain(call, write=False)
        self._flush()

    def _finish_grpc(self, call, error):
        if self.state is State.CLOSED or self.streams.get(call.stream_id) is not call:
            return
        if call.answer is not None:
            # A unary answer: headers, message and trailers in one go when they fit.
            if error is None and self.conn.send_response(
                    call.stream_id, _RESPONSE_HEADERS_BLOCK, call.answer, _OK_TRAILERS_BLOCK):
                call.answer = None
                self._stream_done(call.stream_id)
                # Out now, even amid a read's calls, a few answers at a time (see
                # ANSWERS_PER_WRITE and output_budget.send_now).
                self._answers += 1
                if not self._in_receive or self._answers >= ANSWERS_PER_WRITE:
                    self._write_framed()
                return
            self._begin_response(call)
        elif not call.headers_sent and not call.pending:
            self._send_trailers_only(call.stream_id, error)
            return
        call.trailers = _OK_TRAILERS if error is None else error_trailers(error)
        self._drain(call)

    def _send_trailers_only(self, stream_id, error):
        headers = list(_RESPONSE_HEADERS[:2])
        headers.extend(_OK_TRAILERS if error is None else error_trailers(error))
        self._safe(self.conn.send_headers, stream_id, headers, end_stream=True)
        self._stream_done(stream_id)
        self._flush()

    def _drain(self, stream, write=True):
        """Frame as much of ``stream.pending`` as the flow-control windows allow; a
        stream whose output is all out is told (``drained``: trailers, END_STREAM)."""
        conn = self.conn
        sid = stream.stream_id
        pending = stream.pending
        try:
            while pending:
                window = conn.local_flow_control_window(sid)
                if window <= 0:
                    self._waiting[stream] = None
                    break
                size = min(window, conn.max_outbound_frame_size, len(pending))
                conn.send_data(sid, pending.take(size))
            else:
                self._waiting.pop(stream, None)
                stream.drained()
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            # The client reset the stream or closed the connection meanwhile.
            pending.clear()
            self._waiting.pop(stream, None)
            self._stream_done(sid)
        if write:
            self._flush()

    def _stream_done(self, stream_id):
        stream = self.streams.pop(stream_id, None)
        if stream is not None and stream.stops_request_when_answered \
                and self.state is not State.CLOSED:
            # The client may still be sending (we answered early); tell it to stop.
            state = self.conn.streams.get(stream_id)
            if state is not None and state.open:
                self._reset(stream_id, h2.errors.ErrorCodes.NO_ERROR)
        self._maybe_close_drained()
        self._update_activity()

    def _reset(self, stream_id, code):
        self._safe(self.conn.reset_stream, stream_id, code)
        self._flush()

    def _safe(self, fn, *args, **kwargs):
        try:
            fn(*args, **kwargs)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            pass

    # What each h2 event does (see _handle_event).
    _event_handlers = {
        h2.events.RequestReceived: _request_received,
        h2.events.DataReceived: _on_data,
        h2.events.StreamEnded: _on_stream_ended,
        h2.events.TrailersReceived: _on_trailers,
        h2.events.StreamReset: _on_reset,
        h2.events.WindowUpdated: _on_window_update,
        h2.events.RemoteSettingsChanged: _on_remote_settings,
        h2.events.ConnectionTerminated: _on_terminated,
    }
