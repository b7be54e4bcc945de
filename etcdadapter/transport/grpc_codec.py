"""gRPC-over-HTTP/2 message framing as pure code: bytes in, messages out (and back).

The wire format (grpc/doc/PROTOCOL-HTTP2.md): each message is a 1-byte compressed flag, a
4-byte big-endian length and the payload.  Messages split across DATA frames and several
messages in one frame are both normal, so the decoder is a small buffer machine.
"""

import re
import struct
import zlib

from etcdadapter.errors import EtcdError, StatusCode, message_too_large

_PREFIX = struct.Struct(">BI")

# Encodings we can read; a request naming another one gets UNIMPLEMENTED (gRPC spec).
SUPPORTED_ENCODINGS = ("identity", "gzip", "deflate")
ACCEPT_ENCODING = ",".join(SUPPORTED_ENCODINGS)


def frame_message(payload):
    """Length-prefix one uncompressed message."""
    return _PREFIX.pack(0, len(payload)) + payload


def _decompress(encoding, data, limit):
    """Inflate at most ``limit + 1`` bytes: a small "zip bomb" must not allocate or spin."""
    if encoding not in ("gzip", "deflate"):
        raise EtcdError(StatusCode.INTERNAL,
                        "grpc: compressed flag set with identity or empty encoding")
    wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
    try:
        inflater = zlib.decompressobj(wbits)
        out = inflater.decompress(data, limit + 1)
        if len(out) <= limit and not inflater.eof:
            raise zlib.error("truncated compressed data")
    except zlib.error as e:
        raise EtcdError(StatusCode.INTERNAL,
                        "grpc: failed to decompress the received message: %s" % e)
    if len(out) > limit:
        raise message_too_large(limit + 1, limit)
    return out


class MessageDecoder(object):
    """Splits a stream of DATA payloads into gRPC messages.

    ``max_message_size`` bounds what one message may announce (etcd: max-request-bytes +
    512 KiB); a larger one raises the RESOURCE_EXHAUSTED error grpc-go gives, before the
    payload is buffered.
    """

    def __init__(self, max_message_size, encoding="identity"):
        self.max_message_size = max_message_size
        self.encoding = encoding
        self._buffer = bytearray()

    @property
    def pending(self):
        """Bytes received that do not yet form a whole message."""
        return len(self._buffer)

    def feed(self, data):
        """Add bytes; return the list of whole message payloads now available."""
        buf = self._buffer
        buf += data
        messages = []
        offset = 0
        size = len(buf)
        while size - offset >= 5:
            flag, length = _PREFIX.unpack_from(buf, offset)
            if length > self.max_message_size:
                raise message_too_large(length, self.max_message_size)
            end = offset + 5 + length
            if end > size:
                break
            payload = bytes(buf[offset + 5:end])
            if flag == 1:
                payload = _decompress(self.encoding, payload, self.max_message_size)
            elif flag:
                raise EtcdError(StatusCode.INTERNAL,
                                "grpc: received unexpected payload format %d" % flag)
            messages.append(payload)
            offset = end
        if offset:
            del buf[:offset]
        return messages


# -- metadata helpers ----------------------------------------------------------------------

_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
_TIMEOUT_DIGITS = re.compile(r"[+-]?[0-9]+\Z")


def parse_timeout(value):
    """A ``grpc-timeout`` header ("100m", "5S", ...) in seconds, as grpc-go's
    decodeTimeout reads it: 2 to 9 characters, a unit, an integer that may have a sign
    (zero or less: the deadline has passed).  ValueError if malformed (grpc-go, and so
    etcd, then resets the stream)."""
    digits, unit = value[:-1], value[-1:]
    if not 2 <= len(value) <= 9 or unit not in _TIMEOUT_UNITS or \
            not _TIMEOUT_DIGITS.match(digits):
        raise ValueError("malformed grpc-timeout %r" % (value,))
    return int(digits) * _TIMEOUT_UNITS[unit]


# Percent-encoding of grpc-message: printable ASCII except '%' stays, everything else is
# %XX of its UTF-8 bytes.
_SAFE = frozenset(range(0x20, 0x7F)) - {ord("%")}


def encode_grpc_message(message):
    raw = message.encode("utf-8")
    if all(b in _SAFE for b in raw):
        return raw.decode("ascii")
    return "".join(chr(b) if b in _SAFE else "%%%02X" % b for b in raw)


def decode_grpc_message(value):
    """Inverse of :func:`encode_grpc_message` (lenient, like grpc-go)."""
    if "%" not in value:
        return value
    out = bytearray()
    i = 0
    while i < len(value):
        c = value[i]
        if c == "%" and _ishex(value[i + 1:i + 3]):
            out.append(int(value[i + 1:i + 3], 16))
            i += 3
        else:
            out += c.encode("utf-8")
            i += 1
    return out.decode("utf-8", "replace")


def _ishex(s):
    return len(s) == 2 and all(c in "0123456789abcdefABCDEF" for c in s)
