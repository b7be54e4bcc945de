"""The bbolt file format code (etcdadapter/snapshot/bolt_*.py) and etcd's buckets in it
(etcd_format.py), in-process; tests/compat/test_snapshot.py checks the files against a real
etcd and etcdctl."""

import hashlib
import io
import random

import pytest

from etcdadapter.security.auth_store import AuthState
from etcdadapter.snapshot import etcd_format
from etcdadapter.snapshot.bolt_layout import PAGE_SIZE, BoltFormatError
from etcdadapter.snapshot.bolt_reader import BoltReader
from etcdadapter.snapshot.bolt_writer import BoltWriter
from etcdadapter.snapshot.etcd_format import SnapshotError, SnapshotFile, revision_key
from etcdadapter.store.base import KV


def write(buckets):
    f = io.BytesIO()
    w = BoltWriter(f)
    for name, items in buckets.items():
        w.add_bucket(name, items)
    size = w.close()
    return f, size


def test_round_trip_of_many_pages_branches_and_overflow():
    rnd = random.Random(17)
    keys = sorted({rnd.randbytes(rnd.randint(1, 40)) for _ in range(3000)})
    big = {keys[7]: b"o" * 100000, keys[2000]: b"p" * (PAGE_SIZE - 10)}
    items = [(k, big.get(k, rnd.randbytes(rnd.randint(0, 300)))) for k in keys]
    buckets = {b"key": items, b"empty": [], b"one": [(b"k", b"")]}
    f, size = write(buckets)
    assert size == len(f.getvalue()) and size % PAGE_SIZE == 0
    r = BoltReader(f, size)
    assert sorted(r.buckets()) == [b"empty", b"key", b"one"]
    assert list(r.items(b"key")) == items
    assert list(r.items(b"empty")) == [] and list(r.items(b"one")) == [(b"k", b"")]
    assert list(r.items(b"missing")) == []
    assert r.txid == 1 and r.high_water * PAGE_SIZE == size


def test_keys_must_come_in_order():
    w = BoltWriter(io.BytesIO())
    with pytest.raises(ValueError) as e:
        w.add_bucket(b"b", [(b"b", b""), (b"a", b"")])
    assert str(e.value) == "bucket b'b': keys out of order (b'a' after b'b')"


def test_not_a_bolt_file():
    data = b"x" * 8192
    with pytest.raises(BoltFormatError) as e:
        BoltReader(io.BytesIO(data), len(data))
    assert str(e.value) == "not a bbolt database (no valid meta page)"
    f, size = write({b"k": [(b"a", b"b" * 9000)]})
    with pytest.raises(BoltFormatError) as e:
        BoltReader(io.BytesIO(f.getvalue()[:size - PAGE_SIZE]), size - PAGE_SIZE)
    assert "bbolt file truncated" in str(e.value)


def snapshot_bytes(revision, compact, versions, leases=()):
    f = io.BytesIO()
    etcd_format.write_snapshot(f, revision, compact, versions, list(leases), AuthState())
    return f.getvalue()


def test_snapshot_checksum_and_revision_kept_when_no_version_carries_it():
    # An empty store seeded at a high revision: recorded as compacted there, so that a
    # restored etcd starts at it.
    data = snapshot_bytes(1796537173878846, -1, [])
    assert len(data) % 512 == 32
    assert data[-32:] == hashlib.sha256(data[:-32]).digest()
    s = SnapshotFile(io.BytesIO(data))
    assert (s.revision, s.compact_revision, list(s.versions())) == (1796537173878846,
                                                                    1796537173878846, [])
    damaged = bytearray(data)
    damaged[5000] ^= 1
    with pytest.raises(SnapshotError):
        SnapshotFile(io.BytesIO(bytes(damaged)))


def test_versions_round_trip_with_leases():
    versions = [(0, KV(b"a", 2, 2, 1, b"1", 0)), (0, KV(b"b", 3, 3, 1, b"2", 7)),
                (1, KV(b"a", 0, 3, 0, b"", 0)), (0, KV(b"a", 4, 4, 1, b"x", 0))]
    s = SnapshotFile(io.BytesIO(snapshot_bytes(4, -1, versions,
                                               [etcd_format.Lease(7, 60)])))
    assert (s.revision, s.compact_revision) == (4, -1)
    assert list(s.versions()) == versions
    assert s.leases == [etcd_format.Lease(7, 60)]


def test_an_unfinished_compaction_is_finished_on_reading():
    """etcd finishes a scheduled compaction at start: only each key's version live at
    it remains below it."""
    def kv_item(rev, sub, kv):
        return revision_key(rev, sub, not kv.version), etcd_format.kv_bytes(kv)
    rows = [(2, 0, KV(b"a", 2, 2, 1, b"1", 0)), (3, 0, KV(b"a", 2, 3, 2, b"2", 0)),
            (4, 0, KV(b"b", 4, 4, 1, b"b", 0)), (5, 0, KV(b"b", 0, 5, 0, b"", 0)),
            (6, 0, KV(b"a", 2, 6, 3, b"3", 0))]
    f = io.BytesIO()
    w = BoltWriter(f)
    w.add_bucket(b"key", [kv_item(*r) for r in rows])
    w.add_bucket(b"meta", [(b"finishedCompactRev", revision_key(2, 0)),
                           (b"scheduledCompactRev", revision_key(5, 0))])
    size = w.close()
    data = f.getvalue()[:size]
    s = SnapshotFile(io.BytesIO(data + hashlib.sha256(data).digest()))
    assert (s.revision, s.compact_revision) == (6, 5)
    assert [kv for _sub, kv in s.versions()] == [rows[1][2], rows[4][2]]


def test_garbage_is_a_clear_error():
    for data in (b"", b"\0" * 4096 * 4 + b"x" * 32, bytes(range(256)) * 64):
        with pytest.raises(SnapshotError) as e:
            SnapshotFile(io.BytesIO(data), skip_hash_check=True)
        assert str(e.value).startswith("not an etcd snapshot: ")
    # A valid bbolt file whose key bucket holds a record that is not a KeyValue.
    f, size = write({b"key": [(revision_key(2, 0), b"\xff\xff\xff")], b"meta": []})
    data = f.getvalue()[:size]
    s = SnapshotFile(io.BytesIO(data + hashlib.sha256(data).digest()))
    with pytest.raises(SnapshotError) as e:
        list(s.versions())
    assert str(e.value).startswith("damaged snapshot: ")
