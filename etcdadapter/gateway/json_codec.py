"""etcd's gateway JSON <-> protobuf messages, as pure code (bytes in, messages out).

etcd's gateway is grpc-gateway v1 with golang/protobuf's ``jsonpb`` (``OrigName: true``,
unknown fields allowed).  Its exact behaviour is what APISIX and other HTTP clients were
written against, so both directions are reproduced here rather than left to protobuf's
``json_format`` (which accepts unpadded and URL-safe base64, rejects unknown enum numbers
and words every error differently):

Output -- proto field names (``ID``, ``TTL``, ``grantedTTL`` as spelled in the .proto),
64-bit integers as strings, 32-bit as numbers, bytes as padded standard base64, enums by
name, zero values omitted, set-but-empty messages as ``{}``.

Input -- the first JSON value of the body (what follows is ignored, as Go's
``json.Decoder`` does); an empty body is an empty request; proto names or lowerCamelCase
names, matched case-sensitively (the camelCase name wins when both are present); integers as
numbers or as strings holding a JSON number; enums by name or number; ``null`` = unset;
unknown fields ignored.  Every error is InvalidArgument with the text Go gives, e.g.
``illegal base64 data at input byte 0``, ``unexpected EOF``,
``invalid character 'x' looking for beginning of value``,
``json: cannot unmarshal number 1.5 into Go value of type int64``,
``unknown value "FOO" for enum etcdserverpb.RangeRequest_SortOrder``.
"""

import base64
import json
import re

from google.protobuf.descriptor import FieldDescriptor as FD

from etcdadapter.errors import HTTP_STATUS, MAX_TXN_LEVELS, EtcdError, StatusCode

__all__ = ["decode_request", "decode_requests", "encode", "error_body",
           "stream_result", "stream_error", "http_status_text"]


# ---------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------

_INT64_TYPES = frozenset((FD.TYPE_INT64, FD.TYPE_UINT64, FD.TYPE_SINT64,
                          FD.TYPE_FIXED64, FD.TYPE_SFIXED64))
_INT32_TYPES = frozenset((FD.TYPE_INT32, FD.TYPE_UINT32, FD.TYPE_SINT32,
                          FD.TYPE_FIXED32, FD.TYPE_SFIXED32))


def _scalar_out(fd, value):
    t = fd.type
    if t == FD.TYPE_MESSAGE:
        return to_json_object(value)
    if t in _INT64_TYPES:
        return str(value)
    if t == FD.TYPE_BYTES:
        return base64.b64encode(value).decode("ascii")
    if t == FD.TYPE_ENUM:
        ev = fd.enum_type.values_by_number.get(value)
        return ev.name if ev is not None else value
    return value


def to_json_object(msg):
    """The dict jsonpb would marshal ``msg`` to (fields in field-number order)."""
    out = {}
    for fd, value in msg.ListFields():
        if fd.is_repeated:
            out[fd.name] = [_scalar_out(fd, v) for v in value]
        else:
            out[fd.name] = _scalar_out(fd, value)
    return out


def _dumps(obj):
    # Go's encoder writes UTF-8 as is and escapes <, > and & (HTML-safe strings).
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    if "<" in text or ">" in text or "&" in text:
        text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return text.encode("utf-8")


def encode(msg):
    """A response message as the gateway's JSON body."""
    return _dumps(to_json_object(msg))


def http_status_text(status):
    from http import HTTPStatus
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def error_body(error):
    """A unary call's error body (etcd 3.5 key order: error, code, message)."""
    return _dumps({"error": error.message, "code": error.code, "message": error.message})


def stream_result(msg):
    """One message of a streaming response: ``{"result":...}`` and a newline."""
    return b'{"result":' + encode(msg) + b"}\n"


def stream_error(error):
    """The last line of a streaming response that ended with an error (no newline)."""
    status = HTTP_STATUS.get(error.code, 500)
    return _dumps({"error": {"grpc_code": error.code, "http_code": status,
                             "message": error.message,
                             "http_status": http_status_text(status)}})


# ---------------------------------------------------------------------------------------
# Input: JSON text -> Python values, with Go's syntax error texts
# ---------------------------------------------------------------------------------------

def _invalid(message):
    return EtcdError(StatusCode.INVALID_ARGUMENT, message)


class _Number(object):
    """A JSON number that is not a plain integer literal; keeps its text for errors."""
    __slots__ = ("text",)

    def __init__(self, text):
        self.text = text


def _reject_constant(name):
    raise ValueError(name)      # NaN/Infinity are not JSON (Python accepts them)


_DECODER = json.JSONDecoder(parse_float=_Number, parse_constant=_reject_constant)
_WS = " \t\r\n"


_GO_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r",
               "\t": "\\t", "\v": "\\v", "\\": "\\\\"}


def _quote_char(c):
    """Go's encoding/json quoteChar of the byte at an error: Go reports the input byte
    (the first byte of a multi-byte character, taken as a Latin-1 rune) quoted by
    strconv.Quote."""
    b = c.encode("utf-8", "replace")[0]
    r = chr(b)
    if r == "'":
        return "'\\''"
    if r == '"':
        return "'\"'"
    if r in _GO_ESCAPES:
        return "'%s'" % _GO_ESCAPES[r]
    if b < 0x20 or b == 0x7F:
        return "'\\x%02x'" % b
    if 0x80 <= b <= 0xA0 or b == 0xAD:
        return "'\\u%04x'" % b
    return "'%s'" % r


def _outside_strings(text, start=0, stop=None):
    """(index, char) of every character of ``text[start:stop]`` that is not inside a
    string literal (string quotes included)."""
    in_string = escaped = False
    stop = len(text) if stop is None else stop
    for i in range(start, stop):
        ch = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
            continue
        if ch == '"':
            in_string = True
        yield i, ch


def _container_at(text, pos):
    """Is the innermost container open at ``pos`` an object or an array?"""
    stack = []
    for _i, ch in _outside_strings(text, 0, pos):
        if ch in "[{":
            stack.append(ch)
        elif ch in "]}" and stack:
            stack.pop()
    return stack[-1] if stack else None


_LITERALS = {"t": "true", "f": "false", "n": "null"}
_HEX = frozenset("0123456789abcdefABCDEF")
MAX_DEPTH = 10000       # Go's encoding/json maxNestingDepth


def _go_syntax_error(text, exc, eof_message):
    pos = exc.pos
    if pos >= len(text):
        return _invalid(eof_message)
    msg = exc.msg
    ch = text[pos]
    if msg.startswith("Expecting value") and ch in _LITERALS:
        # Go reads a literal byte by byte: the first wrong byte is the error.
        literal = _LITERALS[ch]
        for i, want in enumerate(literal):
            if pos + i >= len(text):
                return _invalid(eof_message)
            if text[pos + i] != want:
                return _invalid("invalid character %s in literal %s (expecting %s)"
                                % (_quote_char(text[pos + i]), literal, _quote_char(want)))
    if msg.startswith("Invalid \\uXXXX"):
        # pos is at the "u": the first non-hex digit after it is the error.
        for i in range(pos + 1, min(pos + 5, len(text))):
            if text[i] not in _HEX:
                return _invalid("invalid character %s in \\u hexadecimal character escape"
                                % _quote_char(text[i]))
        return _invalid(eof_message)
    if msg.startswith("Invalid \\escape"):
        # pos is at the backslash; Go names the character after it.
        if pos + 1 >= len(text):
            return _invalid(eof_message)
        return _invalid("invalid character %s in string escape code"
                        % _quote_char(text[pos + 1]))
    c = _quote_char(ch)
    if msg.startswith("Expecting value"):
        return _invalid("invalid character %s looking for beginning of value" % c)
    if msg.startswith("Expecting property name"):
        return _invalid("invalid character %s looking for beginning of object key string"
                        % c)
    if msg.startswith("Expecting ':'"):
        return _invalid("invalid character %s after object key" % c)
    if msg.startswith("Expecting ','"):
        where = ("after array element" if _container_at(text, pos) == "["
                 else "after object key:value pair")
        return _invalid("invalid character %s %s" % (c, where))
    if msg.startswith("Invalid control character"):
        return _invalid("invalid character %s in string literal" % c)
    if msg.startswith("Unterminated string"):
        return _invalid(eof_message)
    return _invalid("invalid character %s looking for beginning of value" % c)


def _constant_error(text, pos):
    """Python accepts NaN and (-)Infinity; Go rejects them at their first letter."""
    for i, ch in _outside_strings(text, pos):
        if ch == "N" and text.startswith("NaN", i) or ch == "I" and \
                text.startswith("Infinity", i):
            if i > 0 and text[i - 1] == "-":
                return _invalid("invalid character %s in numeric literal" % _quote_char(ch))
            return _invalid("invalid character %s looking for beginning of value"
                            % _quote_char(ch))
    return _invalid("invalid character %s looking for beginning of value"
                    % _quote_char(text[pos]))


def _depth(text, pos):
    """(deepest nesting, index of the bracket that goes beyond MAX_DEPTH or None)."""
    depth = deepest = 0
    for i, ch in _outside_strings(text, pos):
        if ch in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return depth, i
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest, None


def _raw_decode(text, pos):
    try:
        return _DECODER.raw_decode(text, pos)
    except RecursionError:
        # Go nests up to 10,000 levels; Python's default recursion limit is lower.
        deepest, beyond = _depth(text, pos)
        if beyond is not None:
            raise _invalid("invalid character %s exceeded max depth"
                           % _quote_char(text[beyond]))
        import sys
        old = sys.getrecursionlimit()
        sys.setrecursionlimit(max(old, 3 * deepest + 500))
        try:
            return _DECODER.raw_decode(text, pos)
        finally:
            sys.setrecursionlimit(old)


_EOF = object()


def _parse_value(text, pos, eof_message="unexpected EOF"):
    """(value, end) of the JSON value starting at or after ``pos``; ``_EOF`` at the end
    of the text."""
    while pos < len(text) and text[pos] in _WS:
        pos += 1
    if pos >= len(text):
        return _EOF, pos
    try:
        return _raw_decode(text, pos)
    except json.JSONDecodeError as exc:
        raise _go_syntax_error(text, exc, eof_message)
    except ValueError:      # NaN / Infinity
        raise _constant_error(text, pos)


def _as_text(body):
    if isinstance(body, str):
        return body
    return body.decode("utf-8", "replace")


# ---------------------------------------------------------------------------------------
# Input: Python values -> message, jsonpb's rules
# ---------------------------------------------------------------------------------------

def _kind(value):
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, _Number)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _cannot(value, go_type, with_literal=False):
    kind = _kind(value)
    if with_literal and kind == "number":
        literal = value.text if isinstance(value, _Number) else str(value)
        return _invalid("json: cannot unmarshal number %s into Go value of type %s"
                        % (literal, go_type))
    return _invalid("json: cannot unmarshal %s into Go value of type %s" % (kind, go_type))


_INT_RANGES = {
    FD.TYPE_INT64: ("int64", -(1 << 63), (1 << 63) - 1),
    FD.TYPE_SINT64: ("int64", -(1 << 63), (1 << 63) - 1),
    FD.TYPE_SFIXED64: ("int64", -(1 << 63), (1 << 63) - 1),
    FD.TYPE_UINT64: ("uint64", 0, (1 << 64) - 1),
    FD.TYPE_FIXED64: ("uint64", 0, (1 << 64) - 1),
    FD.TYPE_INT32: ("int32", -(1 << 31), (1 << 31) - 1),
    FD.TYPE_SINT32: ("int32", -(1 << 31), (1 << 31) - 1),
    FD.TYPE_SFIXED32: ("int32", -(1 << 31), (1 << 31) - 1),
    FD.TYPE_UINT32: ("uint32", 0, (1 << 32) - 1),
    FD.TYPE_FIXED32: ("uint32", 0, (1 << 32) - 1),
}


def _int_value(value, ftype):
    go_type, lo, hi = _INT_RANGES[ftype]
    value = _go_string(value)
    if isinstance(value, str):
        # jsonpb unquotes and unmarshals the contents as a JSON number.
        inner, end = _parse_value(value, 0, "unexpected end of JSON input")
        if inner is _EOF:
            raise _invalid("unexpected end of JSON input")
        rest = value[end:].lstrip(_WS)
        if rest:
            raise _invalid("invalid character %s after top-level value"
                           % _quote_char(rest[0]))
        if inner is None:
            return 0
        value = inner
    if isinstance(value, bool) or not isinstance(value, int):
        raise _cannot(value, go_type, with_literal=True)
    if not lo <= value <= hi:
        raise _cannot(value, go_type, with_literal=True)
    return value


def _go_enum_name(enum_type):
    # golang/protobuf names nested types Outer_Inner in the proto package.
    full = enum_type.full_name
    package = enum_type.file.package
    local = full[len(package) + 1:] if package else full
    return (package + "." if package else "") + local.replace(".", "_")


def _enum_value(value, fd):
    enum_type = fd.enum_type
    if isinstance(value, str):
        ev = enum_type.values_by_name.get(value)
        if ev is None:
            raise _invalid('unknown value %s for enum %s'
                           % (json.dumps(value), _go_enum_name(enum_type)))
        return ev.number
    if isinstance(value, bool) or not isinstance(value, int):
        raise _cannot(value, _go_enum_name(enum_type), with_literal=True)
    if not -(1 << 31) <= value < (1 << 31):
        raise _cannot(value, _go_enum_name(enum_type), with_literal=True)
    return value


# Go's base64.StdEncoding (padding required; CR/LF skipped); the offset in errors is
# computed exactly as encoding/base64 does.
_B64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_INDEX = {c: i for i, c in enumerate(_B64_ALPHABET)}


def _b64_error(offset):
    return _invalid("illegal base64 data at input byte %d" % offset)


def go_b64decode(text):
    src = text.encode("utf-8")
    n = len(src)
    out = bytearray()
    si = 0
    while si < n:
        quantum = []
        done = False
        while len(quantum) < 4:
            if si == n:
                j = len(quantum)
                if j == 0:
                    return bytes(out)
                raise _b64_error(si - j)
            c = src[si]
            si += 1
            v = _B64_INDEX.get(chr(c))
            if v is not None:
                quantum.append(v)
                continue
            if c in (10, 13):
                continue
            if c != 61:     # '='
                raise _b64_error(si - 1)
            j = len(quantum)
            if j in (0, 1):
                raise _b64_error(si - 1)
            if j == 2:
                while si < n and src[si] in (10, 13):
                    si += 1
                if si == n:
                    raise _b64_error(n)
                if src[si] != 61:
                    raise _b64_error(si - 1)
                si += 1
            while si < n and src[si] in (10, 13):
                si += 1
            if si < n:
                raise _b64_error(si)
            done = True
            break
        j = len(quantum)
        bits = 0
        for v in quantum:
            bits = (bits << 6) | v
        bits <<= 6 * (4 - j)
        chunk = bits.to_bytes(3, "big")
        out += chunk[:j - 1] if j < 4 else chunk
        if done:
            break
    return bytes(out)


_SURROGATE = re.compile("[\ud800-\udfff]")


def _go_string(value):
    """A decoded JSON string as Go's decoder makes it: a ``\\uXXXX`` escape of a
    lone UTF-16 surrogate (Python's decoder keeps it) becomes U+FFFD, so that
    ``{"key":"\\ud800"}`` is bad base64 and a name holding it is just a name, as in
    etcd -- not a str that cannot be encoded."""
    if isinstance(value, str) and _SURROGATE.search(value):
        return _SURROGATE.sub("\ufffd", value)
    return value


def _scalar_in(fd, value):
    t = fd.type
    value = _go_string(value)
    if t in _INT_RANGES:
        return _int_value(value, t)
    if t == FD.TYPE_BYTES:
        if not isinstance(value, str):
            raise _cannot(value, "[]uint8")
        return go_b64decode(value)
    if t == FD.TYPE_BOOL:
        if not isinstance(value, bool):
            raise _cannot(value, "bool")
        return value
    if t == FD.TYPE_STRING:
        if not isinstance(value, str):
            raise _cannot(value, "string")
        return value
    if t == FD.TYPE_ENUM:
        return _enum_value(value, fd)
    raise _invalid("unsupported field type")


def _fields_by_json_name(descriptor, cache={}):
    table = cache.get(descriptor.full_name)
    if table is None:
        table = []
        for fd in descriptor.fields:
            table.append((fd.name, fd.json_name, fd))
        cache[descriptor.full_name] = table
    return table


def fill_message(msg, obj):
    """Set ``msg``'s fields from the decoded JSON ``obj`` (jsonpb's rules).

    Depth first, as jsonpb (the first error on the way is the one reported), with a stack
    of its own: JSON may nest 10,000 levels.  A message nested in messages of its own type
    more than errors.MAX_TXN_LEVELS deep (a txn: no other request nests) is left present
    but empty -- check_txn refuses it as etcd refuses the real one -- and what the JSON
    holds below is checked on stand-alone messages."""
    root = type(msg)
    stack = [(_fill_steps(msg, obj), 1)]
    while stack:
        steps, level = stack[-1]
        step = next(steps, None)
        if step is None:
            stack.pop()
            continue
        child, child_obj = step
        if type(child) is root:
            level += 1
            if level > MAX_TXN_LEVELS:
                child = type(child)()
        stack.append((_fill_steps(child, child_obj), level))
    return msg


def _fill_steps(msg, obj):
    """Fill ``msg``'s scalar fields from ``obj``; yield (submessage, its JSON) for the
    message fields, in field order, for the caller to fill."""
    if not isinstance(obj, dict):
        raise _cannot(obj, "map[string]json.RawMessage")
    for name, camel, fd in _fields_by_json_name(msg.DESCRIPTOR):
        if camel in obj:
            value = obj[camel]
        elif name in obj:
            value = obj[name]
        else:
            continue
        if value is None:
            continue
        if fd.is_repeated:
            if not isinstance(value, list):
                raise _cannot(value, "[]json.RawMessage")
            target = getattr(msg, fd.name)
            for item in value:
                if fd.type == FD.TYPE_MESSAGE:
                    yield target.add(), item if item is not None else {}
                elif item is not None:
                    target.append(_scalar_in(fd, item))
        elif fd.type == FD.TYPE_MESSAGE:
            sub = getattr(msg, fd.name)
            sub.SetInParent()
            yield sub, value
        else:
            setattr(msg, fd.name, _scalar_in(fd, value))


def decode_request(request_type, body):
    """The request message of a unary call from its body (empty body: empty request)."""
    text = _as_text(body)
    obj, _end = _parse_value(text, 0)
    msg = request_type()
    if obj is not _EOF and obj is not None:
        fill_message(msg, obj)
    return msg


def decode_requests(request_type, body):
    """A streaming call's requests: JSON values one after another.

    Returns ``(messages, error)``: ``error`` (an EtcdError) is what stopped decoding
    before the end of the body, or None.  The gateway fails the call only when the FIRST
    value is bad; after that a bad value just ends the client's side of the stream."""
    text = _as_text(body)
    messages = []
    pos = 0
    while True:
        try:
            obj, pos = _parse_value(text, pos)
            if obj is _EOF:
                return messages, None
            msg = request_type()
            if obj is not None:
                fill_message(msg, obj)
            messages.append(msg)
        except EtcdError as error:
            return messages, error
