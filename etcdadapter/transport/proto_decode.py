"""Decode request messages, rejecting malformed input the way etcd does.

etcd's messages are gogo-protobuf generated Go code.  It is stricter than Python's
protobuf in one way that changes behaviour -- a known field sent with the wrong wire type
is an error, not an unknown field -- and its error texts are what clients see
("grpc: error unmarshalling request: unexpected EOF", "proto: wrong wireType = 0 for
field Key", ...).  A small walker over the wire format, driven by our descriptors, gives
the same verdicts and texts; protobuf then does the real parsing.
"""

from google.protobuf.descriptor import FieldDescriptor as FD

from etcdadapter.errors import MAX_TXN_LEVELS, EtcdError, StatusCode
from etcdadapter.pb.etcdserverpb import rpc_pb2 as rpc

_VARINT_TYPES = {FD.TYPE_INT64, FD.TYPE_UINT64, FD.TYPE_INT32, FD.TYPE_UINT32, FD.TYPE_BOOL,
                 FD.TYPE_ENUM, FD.TYPE_SINT32, FD.TYPE_SINT64}
_FIXED64_TYPES = {FD.TYPE_FIXED64, FD.TYPE_SFIXED64, FD.TYPE_DOUBLE}
_FIXED32_TYPES = {FD.TYPE_FIXED32, FD.TYPE_SFIXED32, FD.TYPE_FLOAT}

UNEXPECTED_EOF = "unexpected EOF"
INT_OVERFLOW = "proto: integer overflow"
INVALID_LENGTH = "proto: negative length found during unmarshaling"


class _WireError(Exception):
    pass


def _go_name(name):
    # protoc-gen-gogo's CamelCase: split on "_", upper-case each part's first letter.
    return "".join(p[:1].upper() + p[1:] for p in name.split("_"))


_TABLES = {}


def _table(descriptor):
    table = _TABLES.get(descriptor.full_name)
    if table is None:
        table = {}
        _TABLES[descriptor.full_name] = table     # before recursing: messages nest
        for f in descriptor.fields:
            if f.type in (FD.TYPE_MESSAGE, FD.TYPE_GROUP):
                wire, sub = (2,), f.message_type
            elif f.type in (FD.TYPE_BYTES, FD.TYPE_STRING):
                wire, sub = (2,), None
            elif f.type in _VARINT_TYPES:
                wire, sub = ((0, 2) if _is_repeated(f) else (0,)), None
            elif f.type in _FIXED64_TYPES:
                wire, sub = ((1, 2) if _is_repeated(f) else (1,)), None
            else:
                wire, sub = ((5, 2) if _is_repeated(f) else (5,)), None
            table[f.number] = (wire, _go_name(f.name), sub)
    return table


def _is_repeated(f):
    is_repeated = getattr(f, "is_repeated", None)
    if is_repeated is not None:
        return is_repeated
    return f.label == FD.LABEL_REPEATED


def _varint(data, i, end):
    result = 0
    shift = 0
    while True:
        if shift >= 64:
            raise _WireError(INT_OVERFLOW)
        if i >= end:
            raise _WireError(UNEXPECTED_EOF)
        b = data[i]
        i += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, i
        shift += 7


def _skip(data, i, end):
    """gogo's skipRpc over one field starting at its tag; returns the new index."""
    depth = 0
    while True:
        tag, i = _varint(data, i, end)
        wire = tag & 7
        if wire == 0:
            _, i = _varint(data, i, end)
        elif wire == 1:
            i += 8
        elif wire == 2:
            length, i = _varint(data, i, end)
            if length >= 1 << 63:
                raise _WireError(INVALID_LENGTH)
            i += length
        elif wire == 3:
            depth += 1
        elif wire == 4:
            if depth == 0:
                raise _WireError("proto: unexpected end of group")
            depth -= 1
        elif wire == 5:
            i += 4
        else:
            raise _WireError("proto: illegal wireType %d" % wire)
        if depth == 0:
            return i


def _check(data, i, end, descriptor):
    """Walk the message in ``data[i:end]``; returns how deep its messages nest (the
    message itself: 1).  A loop with its own stack, not recursion: a 2 MiB request can
    nest a txn some 300,000 levels deep."""
    deepest = 1
    stack = []
    table, name = _table(descriptor), descriptor.name
    while True:
        if i >= end:
            if i > end:
                raise _WireError(UNEXPECTED_EOF)
            if not stack:
                return deepest
            i, end, table, name = stack.pop()
            continue
        start = i
        tag, i = _varint(data, i, end)
        field, wire = tag >> 3, tag & 7
        if wire == 4:
            raise _WireError("proto: %s: wiretype end group for non-group" % name)
        if field <= 0:
            raise _WireError("proto: %s: illegal tag %d (wire type %d)" % (name, field, tag))
        entry = table.get(field)
        if entry is None:
            i = _skip(data, start, end)
            if i > end:
                raise _WireError(UNEXPECTED_EOF)
            continue
        wires, go_name, sub = entry
        if wire not in wires:
            raise _WireError("proto: wrong wireType = %d for field %s" % (wire, go_name))
        if wire == 0:
            _, i = _varint(data, i, end)
        elif wire == 2:
            length, i = _varint(data, i, end)
            if length >= 1 << 63:
                raise _WireError(INVALID_LENGTH)
            post = i + length
            if post > end:
                raise _WireError(UNEXPECTED_EOF)
            if sub is not None:
                stack.append((post, end, table, name))
                deepest = max(deepest, len(stack) + 1)
                end, table, name = post, _table(sub), sub.name
            else:
                i = post
        elif wire == 1:
            i += 8
        else:
            i += 4


def unmarshal_error(message):
    return EtcdError(StatusCode.INTERNAL, "grpc: error unmarshalling request: %s" % message)


def decode(request_type, payload):
    """Parse ``payload`` as ``request_type`` or raise etcd's INTERNAL unmarshal error."""
    try:
        depth = _check(payload, 0, len(payload), request_type.DESCRIPTOR)
    except _WireError as e:
        raise unmarshal_error(e.args[0])
    try:
        if depth > _PARSE_DEPTH and request_type is rpc.TxnRequest:
            return _parse_txn(payload)
        return request_type.FromString(payload)
    except Exception as e:           # e.g. invalid UTF-8 in a string field
        raise unmarshal_error(str(e))


# -- nested txns -------------------------------------------------------------------------
#
# protobuf's upb parser refuses messages nested deeper than 100 levels, and a txn level is
# two (TxnRequest, RequestOp): it refused txns nested 50 levels deep, which etcd accepts
# up to 129 (--max-txn-ops 128).  A deep TxnRequest is parsed a level at a time instead,
# each RequestOp's request_txn cut out of its level's bytes and parsed into the op's
# submessage (top down: nothing is copied twice).  Levels past MAX_TXN_LEVELS are not
# parsed: the txn there is left present but empty, which check_txn refuses as etcd
# refuses the real one ("too many operations in txn request"); the wire walk above has
# checked all of them.

_PARSE_DEPTH = 64            # message levels upb parses in one go (its limit: 100)


def _parse_txn(payload):
    root = rpc.TxnRequest()
    work = [(root, 0, len(payload), 1)]
    while work:
        msg, i, end, level = work.pop()
        shallow, nested = _cut_txns(payload, i, end)
        msg.MergeFromString(shallow)
        for branch, index, start, stop in nested:
            child = getattr(msg, branch)[index].request_txn
            child.SetInParent()
            if level < MAX_TXN_LEVELS:
                work.append((child, start, stop, level + 1))
    return root


def _field_at(data, i):
    """(field number, wire type, start of value, end of value, end of field) of the
    already validated field starting at ``i``."""
    tag, j = _varint(data, i, len(data))
    wire = tag & 7
    if wire == 2:
        length, j = _varint(data, j, len(data))
        return tag >> 3, wire, j, j + length, j + length
    end = _skip(data, i, len(data))
    return tag >> 3, wire, j, end, end


def _cut_txns(data, i, end):
    """The TxnRequest in ``data[i:end]`` without its ops' nested txns, and where those
    are: (branch, index of the op in it, start, end).  Of a RequestOp's oneof fields the
    last one on the wire wins (gogo: a later request_txn replaces an earlier one)."""
    out = bytearray()
    nested = []
    counts = {2: 0, 3: 0}
    while i < end:
        field, wire, start, stop, i_next = _field_at(data, i)
        if field in counts and wire == 2:
            op = bytearray()
            txn = None
            j = start
            while j < stop:
                f, w, s, e, j_next = _field_at(data, j)
                if f == 4 and w == 2:
                    txn = (s, e)
                else:
                    if f in (1, 2, 3) and w == 2:
                        txn = None
                    op += data[j:j_next]
                j = j_next
            out += _encode_field(field, op)
            if txn is not None:
                nested.append(("success" if field == 2 else "failure", counts[field]) + txn)
            counts[field] += 1
        else:
            out += data[i:i_next]
        i = i_next
    return bytes(out), nested


def _encode_field(field, value):
    return _varint_bytes((field << 3) | 2) + _varint_bytes(len(value)) + bytes(value)


def _varint_bytes(n):
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)
