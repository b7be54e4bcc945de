"""The HPACK caches give exactly what plain hpack gives, whatever the dynamic table did."""

import hpack
import pytest

from etcdadapter.transport.hpack_cache import CachingDecoder, CachingEncoder, encode_block


class CountingDecoder(CachingDecoder):
    decoded = 0     # blocks really decoded (cache misses), counted by _count_misses


def _count_misses(decoder):
    real = hpack.Decoder.decode

    def counted(self, data, raw=False):
        decoder.decoded += 1
        return real(self, data, raw)
    return counted


GRPC_RANGE = [(":method", "POST"), (":scheme", "http"), (":path", "/etcdserverpb.KV/Range"),
              (":authority", "127.0.0.1:2379"), ("content-type", "application/grpc"),
              ("te", "trailers"), ("user-agent", "grpc-python/1.0")]
GRPC_PUT = GRPC_RANGE[:2] + [(":path", "/etcdserverpb.KV/Put")] + GRPC_RANGE[3:]


def _blocks(encoder, header_lists):
    return [encoder.encode(h) for h in header_lists]


def test_repeated_indexed_block_is_decoded_once(monkeypatch):
    enc = hpack.Encoder()
    dec = CountingDecoder()
    monkeypatch.setattr(hpack.Decoder, "decode", _count_misses(dec))
    blocks = _blocks(enc, [GRPC_RANGE] * 5)
    assert blocks[1] == blocks[4]           # indexed from the dynamic table from then on
    results = [dec.decode(b, raw=True) for b in blocks]
    assert all(r == [(n.encode(), v.encode()) for n, v in GRPC_RANGE] for r in results)
    # The first block inserts into the table (not cached); the second is decoded once and
    # remembered; the other three come from the cache.
    assert dec.decoded == 2


def test_same_bytes_under_a_changed_table_are_decoded_again():
    # Index 62 is the newest dynamic entry: the same byte means another header once a
    # new entry went in.
    dec = CachingDecoder()
    plain = hpack.Decoder()
    first = b"\x40" + bytes([3]) + b"aaa" + bytes([1]) + b"1"     # literal, incremental
    second = b"\x40" + bytes([3]) + b"bbb" + bytes([1]) + b"2"
    index62 = b"\xbe"
    for block in (first, index62, index62, second, index62, index62):
        assert dec.decode(block, raw=True) == plain.decode(block, raw=True)
    assert dec.decode(index62, raw=True) == [(b"bbb", b"2")]


def test_table_size_update_invalidates():
    dec = CachingDecoder()
    plain = hpack.Decoder()
    insert = b"\x40" + bytes([3]) + b"abc" + bytes([1]) + b"v"
    for d in (dec, plain):
        d.decode(insert, raw=True)
    assert dec.decode(b"\xbe", raw=True) == [(b"abc", b"v")]
    shrink = b"\x20"                        # dynamic table size update to 0: evicts all
    for d in (dec, plain):
        d.decode(shrink, raw=True)
    with pytest.raises(hpack.HPACKError):
        plain.decode(b"\xbe", raw=True)
    with pytest.raises(hpack.HPACKError):
        dec.decode(b"\xbe", raw=True)


def test_limits_still_apply_to_cached_blocks():
    dec = CachingDecoder()
    enc = hpack.Encoder()
    big = [("x-big", "v" * 100)]
    blocks = _blocks(enc, [big, big])
    dec.decode(blocks[0], raw=True)
    assert dec.decode(blocks[1], raw=True) == [(b"x-big", b"v" * 100)]
    dec.max_header_list_size = 50
    with pytest.raises(hpack.OversizedHeaderListError):
        dec.decode(blocks[1], raw=True)


def test_random_sequences_match_plain_hpack():
    import random
    rnd = random.Random(7)
    names = ["a", "b", "grpc-timeout", "authorization", "x"]
    enc = hpack.Encoder()
    enc.header_table_size = 256            # small: entries get evicted
    dec, plain = CachingDecoder(), hpack.Decoder()
    for _ in range(2000):
        headers = [(rnd.choice(names), str(rnd.randrange(6)))
                   for _ in range(rnd.randrange(1, 4))]
        if rnd.random() < 0.3:
            headers = GRPC_RANGE if rnd.random() < 0.5 else GRPC_PUT
        block = enc.encode(headers)
        assert dec.decode(block, raw=True) == plain.decode(block, raw=True)


def test_encoder_cache_blocks_decode_to_their_headers():
    headers = ((":status", "200"), ("content-type", "application/grpc"))
    enc = CachingEncoder(hpack.Encoder(), [headers])
    block = enc.encode(tuple((n.encode(), v.encode()) for n, v in headers))
    assert block == encode_block(tuple((n.encode(), v.encode()) for n, v in headers))
    assert hpack.Decoder().decode(block) == list(headers)
