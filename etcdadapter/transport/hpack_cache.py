"""Pre-encoded HPACK blocks for the header sets every gRPC response repeats.

h2 hands every header block to ``connection.encoder.encode()``.  For our constant response
headers and OK trailers we return bytes computed once, written with representations that
never touch the HPACK dynamic table (static-table indexes and "literal without
indexing"), so the real encoder's state stays valid for everything else it encodes.
This saves a large share of the per-call header cost in pure-Python hpack.
"""

import hpack

_STATIC_INDEX = {entry: i + 1 for i, entry in enumerate(hpack.table.HeaderTable.STATIC_TABLE)}
_STATIC_NAME = {}
for (_name, _value), _i in sorted(_STATIC_INDEX.items(), key=lambda kv: kv[1]):
    _STATIC_NAME.setdefault(_name, _i)


def _integer(value, prefix_bits, first_byte_flags=0):
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first_byte_flags | value])
    out = [first_byte_flags | limit]
    value -= limit
    while value >= 128:
        out.append((value & 127) | 128)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string(data):
    return _integer(len(data), 7) + data


def encode_block(headers):
    """Encode (name, value) byte pairs without using or changing the dynamic table."""
    out = bytearray()
    for name, value in headers:
        index = _STATIC_INDEX.get((name, value))
        if index is not None:
            out += _integer(index, 7, 0x80)             # indexed header field
            continue
        name_index = _STATIC_NAME.get(name)
        if name_index is not None:                      # literal w/o indexing, indexed name
            out += _integer(name_index, 4) + _string(value)
        else:                                           # literal w/o indexing, new name
            out += b"\x00" + _string(name) + _string(value)
    return bytes(out)


def _as_bytes(headers):
    return tuple((n.encode("utf-8") if isinstance(n, str) else n,
                  v.encode("utf-8") if isinstance(v, str) else v) for n, v in headers)


class CachingEncoder(object):
    """Wraps an hpack Encoder; known header sets come from a cache of fixed blocks."""

    def __init__(self, encoder, constant_header_sets):
        object.__setattr__(self, "_encoder", encoder)
        object.__setattr__(self, "_blocks",
                           {_as_bytes(h): encode_block(_as_bytes(h))
                            for h in constant_header_sets})

    def encode(self, headers, huffman=True):
        try:
            block = self._blocks.get(tuple(headers))
        except TypeError:
            block = None
        if block is not None:
            return block
        return self._encoder.encode(headers, huffman)

    def __getattr__(self, name):
        return getattr(self._encoder, name)

    def __setattr__(self, name, value):
        setattr(self._encoder, name, value)
