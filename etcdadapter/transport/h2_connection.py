"""h2's server connection, with a cost per new stream that does not grow with the open
streams, and streams over the limit refused one by one.

h2 (4.x) counts the open inbound streams for every new HEADERS by walking all of its
streams (``H2Connection._open_streams``, which also drops the closed ones): n streams
cost O(n^2), and one client opening 10,000 HEADERS-only streams held the reactor for
seconds.  Here the count is kept as streams change state: after each received frame (for
that frame's stream) and each send on a stream, the stream is looked at once; a closed
stream moves to ``_closed_streams`` at once, as h2's walk would have moved it.

h2 also makes a HEADERS beyond SETTINGS_MAX_CONCURRENT_STREAMS a connection error
(PROTOCOL_ERROR: every call on the connection fails).  A client may open streams before
it has seen our SETTINGS; grpc-go (etcd's server) refuses just the extra stream with
RST_STREAM REFUSED_STREAM (RFC 7540 5.1.2), which gRPC clients retry transparently.  So
do we -- after decoding its header block, so the HPACK state stays in step.  A client
refused more streams than the limit itself ignores it: each refusal still costs a
header block's decoding, so its connection is then closed (GOAWAY ENHANCE_YOUR_CALM).

And trailers without END_STREAM reset their stream (a malformed request, RFC 7540 8.1:
a stream error, as etcd does) where h2 would end the connection.

Two shortcuts for the frames every unary call brings, each doing what h2 does (the
stream's own methods, the same events), for a third of a call's CPU: DATA, WINDOW_UPDATE
and single-frame HEADERS are taken straight from the receive buffer (``receive_data``), and a
whole answer -- headers, one message, trailers -- is framed in one go (``send_response``).
Anything h2 would treat otherwise goes h2's way (tests/unit/test_h2_receive_path.py and
test_h2_server.py compare the two).
"""

import struct

import h2.connection
import h2.errors
from h2.connection import ConnectionInputs, ConnectionState, _decode_headers
from h2.events import StreamReset, WindowUpdated
from h2.exceptions import (DenialOfServiceError, ProtocolError, StreamClosedError,
                           StreamIDTooLowError)
from hyperframe.exceptions import InvalidPaddingError
from hyperframe.frame import DataFrame, HeadersFrame, RstStreamFrame
from h2.stream import StreamClosedBy, StreamInputs, StreamState

from etcdadapter.transport.hpack_cache import CachingDecoder

MIN_REFUSALS = 100      # refused streams a connection may have even under a small limit
# States in which the client may still send on a stream.
_RECEIVING = (StreamState.OPEN, StreamState.HALF_CLOSED_LOCAL)
# States in which we may still answer on a stream.
_ANSWERABLE = (StreamState.OPEN, StreamState.HALF_CLOSED_REMOTE)
_FRAME_HEAD = struct.Struct(">HBBBL")      # length (24 bits), type, flags, stream id
_WINDOW_INCREMENT = struct.Struct(">L")
_MAX_WINDOW = 2 ** 31 - 1
_STREAM_ID = 0x7FFFFFFF                    # (the top bit is reserved)
_DATA, _HEADERS, _WINDOW_UPDATE = 0x0, 0x1, 0x8
_END_STREAM, _END_HEADERS, _PADDED, _PADDED_OR_PRIORITY = 0x1, 0x4, 0x8, 0x28
_HEADERS_FLAGS = {0: frozenset(["END_HEADERS"]),
                  _END_STREAM: frozenset(["END_HEADERS", "END_STREAM"])}
# States in which a stream takes WINDOW_UPDATE (h2's transitions, not closed).
_WINDOWED = (StreamState.OPEN, StreamState.HALF_CLOSED_LOCAL, StreamState.HALF_CLOSED_REMOTE)


class ServerConnection(h2.connection.H2Connection):
    """``max_inbound_streams``: the SETTINGS_MAX_CONCURRENT_STREAMS we advertise."""

    def __init__(self, config, max_inbound_streams):
        h2.connection.H2Connection.__init__(self, config=config)
        decoder = CachingDecoder(self.decoder.max_header_list_size)
        decoder.max_allowed_table_size = self.decoder.max_allowed_table_size
        self.decoder = decoder
        self.max_inbound_streams = max_inbound_streams
        self.max_refused_streams = max(max_inbound_streams, MIN_REFUSALS)
        self.refused_streams = 0
        self._open_inbound = set()      # ids of inbound streams open (or half-closed)

    @property
    def open_inbound_streams(self):
        return len(self._open_inbound)

    @property
    def framed_size(self):
        """Bytes framed and not yet taken by ``data_to_send()``."""
        return len(self._data_to_send)

    def _settle(self, stream_id):
        """Count ``stream_id`` as open or not, after something happened on it."""
        stream = self.streams.get(stream_id)
        if stream is None:
            self._open_inbound.discard(stream_id)
        elif stream.closed:
            del self.streams[stream_id]
            self._closed_streams[stream_id] = stream.closed_by
            self._open_inbound.discard(stream_id)
        elif stream.open and stream_id % 2:     # clients open the odd ones
            self._open_inbound.add(stream_id)

    # -- received frames -------------------------------------------------------------
    def receive_data(self, data):
        """h2's receive loop, with the frames of every call -- DATA on an open stream,
        WINDOW_UPDATE, a header block in one HEADERS frame -- taken straight from the
        buffer: h2 makes a frame object, its flags set and (but for HEADERS) a dispatch
        per frame, a third of a unary call's receiving.  What they change and the events
        they give are h2's own (the stream's methods do the work); any other frame, and
        any such frame h2 would refuse or treat specially (padding, a window overflow, an
        unknown or closed stream...), goes h2's way."""
        buf = self.incoming_buffer
        buf.add_data(data)
        buf.max_frame_size = self.max_inbound_frame_size
        raw = buf._data
        events = []
        try:
            while True:
                if len(raw) >= 9 and not buf._headers_buffer and not buf._preamble_len:
                    high, low, kind, flags, stream_id = _FRAME_HEAD.unpack_from(raw)
                    length = (high << 8) | low
                    if len(raw) >= 9 + length and length <= buf.max_frame_size \
                            and self._take(raw, kind, flags, stream_id & _STREAM_ID,
                                           length, events):
                        del raw[:9 + length]
                        continue
                # One frame the general way (h2 checks a frame's header before its body
                # is in: so here too).
                frame = next(buf, None)
                if frame is None:
                    break
                events.extend(self._receive_frame(frame))
        except InvalidPaddingError as e:
            self._terminate_connection(h2.errors.ErrorCodes.PROTOCOL_ERROR)
            raise ProtocolError("Received frame with invalid padding.") from e
        except ProtocolError as e:
            self._terminate_connection(e.error_code)
            raise
        return events

    def _take(self, raw, kind, flags, stream_id, length, events):
        """Handle the whole frame at the start of ``raw`` if it is one of the kinds taken
        straight from the buffer; False (nothing done) when h2 must see it."""
        if kind == _DATA:
            return not flags & _PADDED and self._data(raw, stream_id, length,
                                                      flags & _END_STREAM, events)
        if kind == _WINDOW_UPDATE:
            return length == 4 and self._window_update(raw, stream_id, events)
        if kind == _HEADERS and flags & _END_HEADERS and not flags & _PADDED_OR_PRIORITY \
                and stream_id:
            # A whole header block in one frame: h2's handling, minus hyperframe's
            # object (no padding or priority fields to parse).
            frame = HeadersFrame.__new__(HeadersFrame)
            frame.stream_id = stream_id
            frame.flags = _HEADERS_FLAGS[flags & _END_STREAM]
            frame.data = bytes(raw[9:9 + length])
            frame.body_len = length
            events.extend(self._receive_frame(frame))
            return True
        return False

    def _window_update(self, raw, stream_id, events):
        """A WINDOW_UPDATE frame at the start of ``raw``, as h2 takes it; False when h2
        must see it (invalid, an overflow, a stream it would not know)."""
        if self.state_machine.state is not ConnectionState.SERVER_OPEN:
            return False
        increment = _WINDOW_INCREMENT.unpack_from(raw, 9)[0]
        if not 1 <= increment <= _MAX_WINDOW:
            return False                    # (hyperframe refuses it: a connection error)
        if not stream_id:
            if self.outbound_flow_control_window + increment > _MAX_WINDOW:
                return False
            self.outbound_flow_control_window += increment
            events.append(WindowUpdated(stream_id=0, delta=increment))
            return True
        stream = self.streams.get(stream_id)
        if stream is None:
            # An inbound stream closed and forgotten: h2 ignores it (a client returns
            # window for a response it read after the stream ended).
            return stream_id % 2 == 1 and stream_id <= self.highest_inbound_stream_id
        if stream.state_machine.state not in _WINDOWED:
            return False
        frames, stream_events = stream.receive_window_update(increment)
        if frames:
            self._prepare_for_sending(frames)
        events.extend(stream_events)
        return True

    def _data(self, raw, stream_id, length, end_stream, events):
        """An unpadded DATA frame at the start of ``raw`` for a stream still receiving, as
        h2 takes it; False when h2 must see it."""
        stream = self.streams.get(stream_id)
        if stream is None or stream.state_machine.state not in _RECEIVING \
                or self.state_machine.state is not ConnectionState.SERVER_OPEN:
            return False
        self._inbound_flow_control_window_manager.window_consumed(length)
        frames, stream_events = stream.receive_data(bytes(raw[9:9 + length]),
                                                    bool(end_stream), length)
        if frames:
            self._prepare_for_sending(frames)
        events.extend(stream_events)
        self._settle(stream_id)
        return True

    def _receive_frame(self, frame):
        # h2's own version formats every frame with repr() for a trace log line, even
        # when nothing logs (4 % of a unary call).  The rest is as h2 does it: a frame
        # for a stream we reset is answered with RST_STREAM (a stream error); one for a
        # stream ended normally is a connection error.
        try:
            frames, events = self._frame_dispatch_table[frame.__class__](frame)
        except StreamClosedError as e:
            if not self._stream_is_closed_by_reset(e.stream_id):
                raise
            frames, events = [_rst_stream(e.stream_id, e.error_code)], e._events
        except StreamIDTooLowError as e:
            if self._stream_is_closed_by_reset(e.stream_id):
                frames = [_rst_stream(e.stream_id, h2.errors.ErrorCodes.STREAM_CLOSED)]
                events = []
            elif self._stream_is_closed_by_end(e.stream_id):
                raise StreamClosedError(e.stream_id) from e
            else:
                raise
        if frames:
            self._prepare_for_sending(frames)
        # Only these can open or close a stream (WINDOW_UPDATE, PRIORITY: never).
        if frame.stream_id and frame.__class__ in _STATE_FRAMES:
            self._settle(frame.stream_id)
        return events

    def _receive_headers_frame(self, frame):
        stream = self.streams.get(frame.stream_id)
        if stream is None:
            if len(self._open_inbound) >= self.max_inbound_streams:
                return self._refuse(frame)
        elif "END_STREAM" not in frame.flags and stream.state_machine.headers_received \
                and stream.state_machine.state in _RECEIVING:
            return self._malformed_trailers(stream, frame)
        return h2.connection.H2Connection._receive_headers_frame(self, frame)

    def _refuse(self, frame):
        # What h2 does with a new stream's HEADERS (HPACK, the connection's state, stream
        # id rules), then a reset instead of a RequestReceived.
        _decode_headers(self.decoder, frame.data)
        events = self.state_machine.process_input(ConnectionInputs.RECV_HEADERS)
        stream = self._begin_new_stream(frame.stream_id,
                                        h2.connection.AllowedStreamIDs.ODD)
        stream.state_machine.process_input(StreamInputs.RECV_HEADERS)
        self.refused_streams += 1
        if self.refused_streams > self.max_refused_streams:
            raise DenialOfServiceError("%d streams over the limit of %d"
                                       % (self.refused_streams, self.max_inbound_streams))
        return stream.reset_stream(h2.errors.ErrorCodes.REFUSED_STREAM), events

    def _malformed_trailers(self, stream, frame):
        # Trailers without END_STREAM make the request malformed (RFC 7540 8.1), a stream
        # error (8.1.2.6); h2 makes it a connection error.  etcd resets the stream.
        _decode_headers(self.decoder, frame.data)
        events = self.state_machine.process_input(ConnectionInputs.RECV_HEADERS)
        code = h2.errors.ErrorCodes.PROTOCOL_ERROR
        frames = stream.reset_stream(code)
        events.append(StreamReset(stream_id=stream.stream_id, error_code=code,
                                  remote_reset=False))
        return frames, events

    # -- sends that can close a stream ---------------------------------------------------
    def send_response(self, stream_id, head_block, data, trailer_block):
        """A whole answer at once: HEADERS ``head_block``, one DATA frame ``data``, HEADERS
        ``trailer_block`` with END_STREAM -- the stream and window changes h2's
        send_headers/send_data/send_headers make, framed here in one go (h2 builds,
        checks and serialises frame objects per send: a third of a unary call's cost).
        The blocks are HPACK-encoded by the caller without the dynamic table
        (:func:`~etcdadapter.transport.hpack_cache.encode_block`).  Returns False, having
        done nothing, when the answer does not fit that shape (a window or a frame too
        small, the response already begun, the stream or connection no longer open):
        the caller then sends it the general way."""
        stream = self.streams.get(stream_id)
        size = len(data)
        limit = self.max_outbound_frame_size
        if (stream is None or self.state_machine.state is not ConnectionState.SERVER_OPEN
                or stream.state_machine.state not in _ANSWERABLE
                or stream.state_machine.headers_sent
                or size > limit or len(head_block) > limit or len(trailer_block) > limit
                or size > self.outbound_flow_control_window
                or size > stream.outbound_flow_control_window):
            return False
        machine = stream.state_machine          # (the connection's: no-op transitions)
        if machine.state is StreamState.HALF_CLOSED_REMOTE and machine.client is False:
            # The request is all in (a unary call's case): where h2's four transitions
            # -- response headers, data, trailers, END_STREAM -- take the stream.
            machine.headers_sent = machine.trailers_sent = True
            machine.stream_closed_by = StreamClosedBy.SEND_END_STREAM
            machine.state = StreamState.CLOSED
        else:
            machine.process_input(StreamInputs.SEND_HEADERS)
            machine.process_input(StreamInputs.SEND_DATA)
            machine.process_input(StreamInputs.SEND_HEADERS)
            machine.process_input(StreamInputs.SEND_END_STREAM)
        stream.outbound_flow_control_window -= size
        self.outbound_flow_control_window -= size
        pack = _FRAME_HEAD.pack
        n = len(head_block)
        self._data_to_send += pack(n >> 8, n & 0xFF, _HEADERS, _END_HEADERS, stream_id)
        self._data_to_send += head_block
        self._data_to_send += pack(size >> 8, size & 0xFF, _DATA, 0, stream_id)
        self._data_to_send += data
        n = len(trailer_block)
        self._data_to_send += pack(n >> 8, n & 0xFF, _HEADERS, _END_HEADERS | _END_STREAM,
                                   stream_id)
        self._data_to_send += trailer_block
        self._settle(stream_id)
        return True

    def send_headers(self, stream_id, headers, end_stream=False, **kwargs):
        try:
            h2.connection.H2Connection.send_headers(self, stream_id, headers,
                                                    end_stream=end_stream, **kwargs)
        finally:
            self._settle(stream_id)

    def send_data(self, stream_id, data, end_stream=False, pad_length=None):
        try:
            h2.connection.H2Connection.send_data(self, stream_id, data,
                                                 end_stream=end_stream,
                                                 pad_length=pad_length)
        finally:
            if end_stream:
                self._settle(stream_id)

    def end_stream(self, stream_id):
        try:
            h2.connection.H2Connection.end_stream(self, stream_id)
        finally:
            self._settle(stream_id)

    def reset_stream(self, stream_id, error_code=0):
        try:
            h2.connection.H2Connection.reset_stream(self, stream_id, error_code)
        finally:
            self._settle(stream_id)


_STATE_FRAMES = frozenset((HeadersFrame, DataFrame, RstStreamFrame))


def _rst_stream(stream_id, error_code):
    frame = RstStreamFrame(stream_id)
    frame.error_code = error_code
    return frame
