"""HPACK work done once instead of once per call: pure-Python hpack is a large share of a
unary call's cost.

Encoding: h2 hands every header block to ``connection.encoder.encode()``.  For our
constant response headers and OK trailers we return bytes computed once, written with
representations that never touch the HPACK dynamic table (static-table indexes and
"literal without indexing"), so the real encoder's state stays valid for everything else
it encodes.

Decoding: a gRPC client repeats the same request headers call after call, and once they
are in its dynamic table it sends them as the same few index bytes (grpcio: 9 bytes per
Range).  The result of decoding such a block depends only on the bytes and on the dynamic
table, so :class:`CachingDecoder` keeps the headers of blocks whose decoding left the
table unchanged, valid while the table's generation (bumped by every insertion and
resize) is the one they were decoded under.
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
    """Encode (name, value) pairs (str as UTF-8, or bytes) without using or changing the
    dynamic table."""
    out = bytearray()
    for name, value in _as_bytes(headers):
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
                           {_as_bytes(h): encode_block(h)
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


class _CountingTable(hpack.table.HeaderTable):
    """A dynamic table that counts its changes (insertions and resizes)."""

    generation = 0

    def add(self, name, value):
        self.generation += 1
        hpack.table.HeaderTable.add(self, name, value)

    @property
    def maxsize(self):
        return self._maxsize

    @maxsize.setter
    def maxsize(self, newmax):
        self.generation += 1
        hpack.table.HeaderTable.maxsize.fset(self, newmax)


class CachingDecoder(hpack.Decoder):
    """An hpack Decoder that answers a repeated, table-neutral block from a cache."""

    MAX_BLOCKS = 256        # blocks remembered (grpc-timeout values make many distinct)
    MAX_BLOCK_BYTES = 512   # longer blocks are decoded every time

    def __init__(self, max_header_list_size=hpack.hpack.DEFAULT_MAX_HEADER_LIST_SIZE):
        hpack.Decoder.__init__(self, max_header_list_size)
        self.header_table = _CountingTable()
        self._blocks = {}

    def decode(self, data, raw=False):
        table = self.header_table
        # What a cached result was checked against: the table, the list size limit and
        # the table size limit (both set from our SETTINGS).
        state = (table.generation, raw, self.max_header_list_size,
                 self.max_allowed_table_size)
        key = bytes(data)
        hit = self._blocks.get(key)
        if hit is not None and hit[0] == state:
            return list(hit[1])
        headers = hpack.Decoder.decode(self, data, raw)
        if table.generation == state[0] and len(key) <= self.MAX_BLOCK_BYTES:
            if len(self._blocks) >= self.MAX_BLOCKS:
                self._blocks.clear()
            self._blocks[key] = (state, tuple(headers))
        return headers
