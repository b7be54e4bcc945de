"""etcd 3.4's data in a bbolt file: which buckets hold what (etcd's ``mvcc/kvstore.go``,
``lease/lessor.go``, ``auth/store.go``, ``etcdserver/api/membership``), checked against
a snapshot a real etcd 3.4 made.

==================  ======================================================================
bucket              keys -> values
==================  ======================================================================
``key``             revision key -> marshaled mvccpb.KeyValue.  A revision key is the
                    revision (8 bytes, big-endian), ``_``, the sub-revision (the event's
                    position in its write, 8 bytes), and ``t`` for a tombstone, whose
                    KeyValue carries only the key.  Compaction at C leaves, at or below
                    C, only each key's version live at C.
``meta``            ``consistent_index`` (8 bytes BE, the raft index applied);
                    ``scheduledCompactRev`` / ``finishedCompactRev``: a revision key
                    without the ``t`` (17 bytes) of the compaction begun / completed
``lease``           lease ID (8 bytes BE) -> leasepb.Lease {ID = 1, TTL = 2} (granted TTL;
                    etcd 3.4 writes no remaining TTL: a restored lease starts afresh)
``auth``            ``authEnabled`` (one byte, 1 or 0), ``authRevision`` (8 bytes BE)
``authUsers``       name -> authpb.User {name, password = bcrypt hash, roles, options}
``authRoles``       name -> authpb.Role {name, keyPermission}
``cluster``         ``clusterVersion`` -> ``3.4.0``
``members``,        the members (JSON) and removed members: written empty, since
``members_removed`` ``etcdctl snapshot restore`` replaces them with the new cluster's
``alarm``           raised alarms: none
==================  ======================================================================

A snapshot file (what Maintenance.Snapshot streams, what ``etcdctl snapshot save``
writes) is the bbolt file followed by the SHA-256 of it (32 bytes); etcdctl recognises the
checksum by the file size: a multiple of 512 plus 32.
"""

import hashlib
import struct
from collections import namedtuple

from google.protobuf.message import DecodeError

from etcdadapter.pb.authpb import auth_pb2 as authpb
from etcdadapter.pb.mvccpb import kv_pb2
from etcdadapter.snapshot.bolt_layout import BoltFormatError
from etcdadapter.snapshot.bolt_reader import BoltReader
from etcdadapter.snapshot.bolt_writer import BoltWriter
from etcdadapter.store.base import KV

CLUSTER_VERSION = b"3.4.0"
BUCKETS = (b"alarm", b"auth", b"authRoles", b"authUsers", b"cluster", b"key", b"lease",
           b"members", b"members_removed", b"meta")
_REV = struct.Struct(">Q")
_REVKEY = struct.Struct(">QcQ")           # revision, "_", sub
TOMBSTONE = b"t"
HASH_SIZE = 32


class SnapshotError(ValueError):
    """The file is not an etcd snapshot we can read (message for the user)."""


#: One lease as a snapshot keeps it: ID and granted TTL in seconds.
Lease = namedtuple("Lease", "id ttl")


def revision_key(revision, sub, tombstone=False):
    key = _REVKEY.pack(revision, b"_", sub)
    return key + TOMBSTONE if tombstone else key


def parse_revision_key(key):
    """(revision, sub, tombstone) of a ``key`` bucket key."""
    if len(key) not in (17, 18) or key[8:9] != b"_" or (
            len(key) == 18 and key[17:] != TOMBSTONE):
        raise SnapshotError("bad revision key %r in the key bucket" % (key,))
    revision, _sep, sub = _REVKEY.unpack_from(key, 0)
    return revision, sub, len(key) == 18


# -- leasepb.Lease, by hand (two varint fields; etcd's leasepb is not among our protos) --

def _varint(n):
    n &= 0xFFFFFFFFFFFFFFFF
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def encode_lease(lease_id, ttl):
    out = b""
    if lease_id:
        out += b"\x08" + _varint(lease_id)
    if ttl:
        out += b"\x10" + _varint(ttl)
    return out


def decode_lease(data):
    """(ID, TTL) of a marshaled leasepb.Lease (other fields skipped)."""
    fields = {}
    i = 0
    try:
        while i < len(data):
            tag = data[i]
            i += 1
            if tag & 7 != 0:
                raise SnapshotError("unexpected field in a lease record")
            n = shift = 0
            while True:
                b = data[i]
                i += 1
                n |= (b & 0x7F) << shift
                shift += 7
                if not b & 0x80:
                    break
            if n >= 1 << 63:
                n -= 1 << 64
            fields[tag >> 3] = n
    except IndexError:
        raise SnapshotError("truncated lease record")
    return fields.get(1, 0), fields.get(2, 0)


# -- writing ---------------------------------------------------------------------------

def kv_bytes(kv):
    if not kv.version:
        return kv_pb2.KeyValue(key=kv.key).SerializeToString()
    return kv_pb2.KeyValue(key=kv.key, create_revision=kv.create_revision,
                           mod_revision=kv.mod_revision, version=kv.version,
                           value=kv.value, lease=kv.lease).SerializeToString()


def _key_bucket(versions):
    for sub, kv in versions:
        yield revision_key(kv.mod_revision, sub, not kv.version), kv_bytes(kv)


def _user_bytes(user):
    u = authpb.User(name=user.name.encode("utf-8"),
                    password=(user.password or "").encode("utf-8"),
                    roles=list(user.roles))
    u.options.no_password = bool(user.no_password)
    return u.SerializeToString()


def write_snapshot(f, revision, compact_revision, versions, leases, auth):
    """Write an etcd 3.4 snapshot into ``f`` (binary, seekable, empty): ``versions`` are
    the (sub, KV) the key bucket keeps, in (revision, sub) order (tombstones have version
    0); ``leases`` [:class:`Lease`]; ``auth`` an :class:`~etcdadapter.security.
    auth_store.AuthState`.  etcd takes its current revision from the newest version or
    the compaction, so when ``revision`` is above both it is recorded as compacted: the
    restored etcd then goes on from ``revision``, never below.  Returns the size
    written (checksum included)."""
    writer = BoltWriter(f)
    last = [0]

    def tracked():
        for sub, kv in versions:
            last[0] = kv.mod_revision
            yield sub, kv
    # The bucket order does not matter to the file; the key bucket goes first so that
    # its last revision is known for meta.
    writer.add_bucket(b"key", _key_bucket(tracked()))
    compact = compact_revision
    if revision > max(last[0], compact, 1):
        compact = revision
    meta = [(b"consistent_index", _REV.pack(max(revision, 0)))]
    if compact > 0:
        mark = revision_key(compact, 0)
        meta += [(b"finishedCompactRev", mark), (b"scheduledCompactRev", mark)]
    writer.add_bucket(b"meta", sorted(meta))
    writer.add_bucket(b"lease", sorted((_REV.pack(l.id), encode_lease(l.id, l.ttl))
                                       for l in leases))
    writer.add_bucket(b"auth", [(b"authEnabled", b"\x01" if auth.enabled else b"\x00"),
                                (b"authRevision", _REV.pack(auth.revision))])
    writer.add_bucket(b"authUsers", sorted(
        (name.encode("utf-8"), _user_bytes(u)) for name, u in auth.users.items()))
    writer.add_bucket(b"authRoles", sorted(
        (name.encode("utf-8"), authpb.Role(name=name.encode("utf-8"),
                                           keyPermission=perms).SerializeToString())
        for name, perms in auth.roles.items()))
    writer.add_bucket(b"cluster", [(b"clusterVersion", CLUSTER_VERSION)])
    for name in (b"alarm", b"members", b"members_removed"):
        writer.add_bucket(name, ())
    size = writer.close()
    # etcd's trailing checksum: SHA-256 of the database bytes.
    f.seek(0)
    sha = hashlib.sha256()
    remaining = size
    while remaining:
        chunk = f.read(min(remaining, 1 << 20))
        if not chunk:
            raise IOError("snapshot file shrank while being written")
        sha.update(chunk)
        remaining -= len(chunk)
    f.seek(size)
    f.write(sha.digest())
    f.flush()
    return size + HASH_SIZE


# -- reading ---------------------------------------------------------------------------

class SnapshotFile(object):
    """An etcd snapshot file opened for reading (``f``: binary, seekable).

    The checksum is verified as ``etcdctl snapshot restore`` does; a file without one
    (a bbolt file copied from an etcd data directory) is read only with
    ``skip_hash_check``.  Attributes: ``revision`` (etcd's current revision after a
    restore), ``compact_revision`` (-1: never compacted), ``leases`` [:class:`Lease`],
    ``auth`` (an AuthState); :meth:`versions` iterates the retained history.  Anything
    unreadable raises SnapshotError."""

    def __init__(self, f, skip_hash_check=False):
        self.f = f
        f.seek(0, 2)
        size = f.tell()
        self.has_hash = size % 512 == HASH_SIZE
        self.db_size = size - HASH_SIZE if self.has_hash else size
        if not skip_hash_check:
            if not self.has_hash:
                # etcdctl snapshot restore refuses such a file too ("snapshot missing
                # hash but --skip-hash-check=false").
                raise SnapshotError("the file has no SHA-256 at its end (a db file copied "
                                    "from an etcd data directory?): pass "
                                    "--skip-hash-check to restore it anyway")
            self._check_hash()
        try:
            self._read_header()
        except (BoltFormatError, DecodeError, struct.error, UnicodeError) as e:
            raise SnapshotError("not an etcd snapshot: %s" % (e,))

    def _read_header(self):
        self.bolt = BoltReader(self.f, self.db_size)
        self.buckets = self.bolt.buckets()
        if b"key" not in self.buckets or b"meta" not in self.buckets:
            raise SnapshotError("not an etcd snapshot: no key or meta bucket")
        meta = dict(self.bolt.items(b"meta", self.buckets))
        compact = -1
        for name in (b"finishedCompactRev", b"scheduledCompactRev"):
            if name in meta:
                # A compaction scheduled but not finished: etcd finishes it at start.
                compact = max(compact, parse_revision_key(meta[name])[0])
        self.compact_revision = compact
        last = 1                                  # a fresh etcd is at revision 1
        for key, _value in self._tail():
            last = parse_revision_key(key)[0]
        self.revision = max(last, compact)
        self.leases = [Lease(*decode_lease(v))
                       for _k, v in self.bolt.items(b"lease", self.buckets)]
        self.auth = self._auth()

    def _check_hash(self):
        f = self.f
        f.seek(0)
        sha = hashlib.sha256()
        remaining = self.db_size
        while remaining:
            chunk = f.read(min(remaining, 1 << 20))
            sha.update(chunk)
            remaining -= len(chunk)
        if f.read(HASH_SIZE) != sha.digest():
            raise SnapshotError("snapshot file integrity check failed: the SHA-256 at "
                                "its end does not match its contents")

    def _tail(self):
        # The key bucket's last key (a full walk; pages are read one at a time).
        last = None
        for item in self.bolt.items(b"key", self.buckets):
            last = item
        return [last] if last is not None else []

    def _auth(self):
        from etcdadapter.security.auth_store import AuthState, User
        st = AuthState()
        flags = dict(self.bolt.items(b"auth", self.buckets))
        st.enabled = flags.get(b"authEnabled", b"\x00") == b"\x01"
        if b"authRevision" in flags:
            st.revision = _REV.unpack(flags[b"authRevision"])[0]
        for _name, data in self.bolt.items(b"authUsers", self.buckets):
            u = authpb.User.FromString(data)
            name = u.name.decode("utf-8")
            st.users[name] = User(name, u.password.decode("utf-8") or None,
                                  list(u.roles), u.options.no_password)
        for _name, data in self.bolt.items(b"authRoles", self.buckets):
            r = authpb.Role.FromString(data)
            st.roles[r.name.decode("utf-8")] = sorted(
                (authpb.Permission(permType=p.permType, key=p.key, range_end=p.range_end)
                 for p in r.keyPermission), key=lambda p: (p.key, p.range_end))
        return st

    def _raw_versions(self):
        previous = (0, -1)
        for key, value in self.bolt.items(b"key", self.buckets):
            revision, sub, tombstone = parse_revision_key(key)
            if (revision, sub) <= previous:
                raise SnapshotError("key bucket out of order at revision %d" % revision)
            previous = (revision, sub)
            kv = kv_pb2.KeyValue.FromString(value)
            if tombstone:
                yield sub, KV(kv.key, 0, revision, 0, b"", 0)
            else:
                yield sub, KV(kv.key, kv.create_revision, revision, kv.version, kv.value,
                              kv.lease)

    def versions(self):
        """(sub, KV) of every version etcd keeps, in (revision, sub) order; at or below
        the compact revision only each key's version live at it (what etcd's compaction
        keeps, also when the file holds a compaction etcd had not finished).  A damaged
        page or record raises SnapshotError."""
        try:
            for item in self._kept_versions():
                yield item
        except (BoltFormatError, DecodeError) as e:
            raise SnapshotError("damaged snapshot: %s" % (e,))

    def _kept_versions(self):
        compact = self.compact_revision
        keep = None
        if compact >= 0:
            keep = {}                  # key -> (revision, sub) of its latest at <= compact
            for sub, kv in self._raw_versions():
                if kv.mod_revision > compact:
                    break
                keep[kv.key] = (kv.mod_revision, sub, kv.version)
        for sub, kv in self._raw_versions():
            if keep is not None and kv.mod_revision <= compact:
                rev, s, version = keep[kv.key]
                if (rev, s) != (kv.mod_revision, sub) or not version:
                    continue
            yield sub, kv
