"""Bounds on inbound HTTP/2 frames, checked on each frame header before h2 buffers the
frame.

h2 (4.x) waits for a whole frame before it checks its length against the
SETTINGS_MAX_FRAME_SIZE we advertised, so a header announcing 16 MiB made us buffer
16 MiB; and it joins a header block's CONTINUATION frames in memory up to 64 frames of any
size before HPACK sees them.  Here a frame longer than the limit is a FRAME_SIZE_ERROR as
soon as its 9-byte header arrives, and a header block (HEADERS or PUSH_PROMISE plus its
CONTINUATIONs) is cut off once it exceeds ``max_header_block`` bytes -- an encoded block
is never larger than the decoded header list (the SETTINGS_MAX_HEADER_LIST_SIZE we
advertise) by more than a frame, so honest clients never hit it.
"""

import struct

import h2.errors

PREFACE_LENGTH = 24
_HEADERS, _PUSH_PROMISE, _CONTINUATION = 0x1, 0x5, 0x9
_END_HEADERS = 0x4
_HEAD = struct.Struct(">HBBB")     # length (24 bits: 16 + 8), type, flags


class FrameLimitExceeded(Exception):
    def __init__(self, error_code, message):
        Exception.__init__(self, message)
        self.error_code = error_code


class FrameGuard(object):
    def __init__(self, max_frame_size, max_header_block):
        self.max_frame_size = max_frame_size
        self.max_header_block = max_header_block
        self._skip = PREFACE_LENGTH    # bytes that are not frame headers (preface, bodies)
        self._head = b""               # a frame header split across reads
        self._block = None             # bytes of the open header block, None if none

    def feed(self, data):
        """Look at the frame headers in ``data`` (the connection's next bytes); raise
        :class:`FrameLimitExceeded` on the first one over a limit."""
        pos, end = 0, len(data)
        while pos < end:
            if self._skip:
                n = min(self._skip, end - pos)
                self._skip -= n
                pos += n
                continue
            if self._head or end - pos < 9:     # a header split across reads
                need = 9 - len(self._head)
                self._head += data[pos:pos + need]
                pos += need
                if len(self._head) < 9:
                    return
                high, low, kind, flags = _HEAD.unpack_from(self._head)
                self._head = b""
            else:
                high, low, kind, flags = _HEAD.unpack_from(data, pos)
                pos += 9
            length = (high << 8) | low
            if length > self.max_frame_size:
                raise FrameLimitExceeded(
                    h2.errors.ErrorCodes.FRAME_SIZE_ERROR,
                    "frame of %d bytes, limit %d" % (length, self.max_frame_size))
            if kind in (_HEADERS, _PUSH_PROMISE, _CONTINUATION):
                self._header_block(kind, flags, length)
            self._skip = length

    def _header_block(self, kind, flags, length):
        if kind == _CONTINUATION:
            if self._block is None:
                return              # h2 reports the protocol error
            self._block += length
        else:
            self._block = length
        if self._block > self.max_header_block:
            raise FrameLimitExceeded(
                h2.errors.ErrorCodes.ENHANCE_YOUR_CALM,
                "header block over %d bytes" % self.max_header_block)
        if flags & _END_HEADERS:
            self._block = None
