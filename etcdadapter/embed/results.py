"""What the in-process client answers with: small immutable records, made from the very
protobuf responses remote clients get (so the numbers cannot differ).

Keys and values are ``bytes`` (etcd's keys and values are byte strings).  Every result
carries ``revision``: the response header's revision, as etcd reports it.
"""

from typing import NamedTuple, Optional, Tuple, Union

from etcdadapter.pb.mvccpb import kv_pb2
from etcdadapter.store import base

#: Event types (as etcdctl prints them).
PUT = "PUT"
DELETE = "DELETE"


class KeyValue(NamedTuple):
    """One version of one key (etcd's mvccpb.KeyValue)."""

    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    #: How many times the key was written since it was created (1 after the first put).
    version: int
    #: The lease the key is attached to, 0 for none.
    lease: int


class Event(NamedTuple):
    """One change of one key, as a watch reports it."""

    #: :data:`PUT` or :data:`DELETE`.
    type: str
    #: The key after the change; for a DELETE only ``key`` and ``mod_revision`` are set.
    kv: KeyValue
    #: The key before the change, when the watch asked for ``prev_kv`` and it existed.
    prev_kv: Optional[KeyValue]

    @property
    def revision(self) -> int:
        """The revision of the write that made this event."""
        return self.kv.mod_revision


class RangeResult(NamedTuple):
    """The answer to a get (etcd's RangeResponse)."""

    revision: int
    kvs: Tuple[KeyValue, ...]
    #: How many keys the range holds (with ``limit``, possibly more than ``kvs``).
    count: int
    #: True when ``limit`` cut the answer short.
    more: bool

    @property
    def kv(self) -> Optional[KeyValue]:
        """The first key-value (the only one of a single-key get), or None."""
        return self.kvs[0] if self.kvs else None


class PutResult(NamedTuple):
    """The answer to a put."""

    revision: int
    #: The key before the put, when asked for with ``prev_kv`` and it existed.
    prev_kv: Optional[KeyValue]


class DeleteResult(NamedTuple):
    """The answer to a delete."""

    revision: int
    deleted: int
    #: The deleted keys, when asked for with ``prev_kv``.
    prev_kvs: Tuple[KeyValue, ...]


class TxnResult(NamedTuple):
    """The answer to a txn: which branch ran and one result per operation of it."""

    revision: int
    succeeded: bool
    responses: Tuple[Union[RangeResult, PutResult, DeleteResult, "TxnResult"], ...]


class ReplaceResult(NamedTuple):
    """The answer to :meth:`Client.replace_prefix`: the revision the prefix now holds
    the items at (the current revision when nothing differed) and how many keys were
    created, updated and deleted -- one event each, all at ``revision``."""

    revision: int
    created: int
    updated: int
    deleted: int

    @property
    def changed(self) -> bool:
        """Whether anything was written (a new revision exists)."""
        return bool(self.created or self.updated or self.deleted)


class Lease(NamedTuple):
    """A granted lease."""

    id: int
    #: The granted TTL in seconds (at least etcd's minimum of 2).
    ttl: int
    revision: int


# -- from protobuf ---------------------------------------------------------------------

def key_value(m):
    """mvccpb.KeyValue -> KeyValue."""
    return KeyValue(m.key, m.value, m.create_revision, m.mod_revision, m.version, m.lease)


def event(m):
    """mvccpb.Event -> Event."""
    return Event(DELETE if m.type == kv_pb2.Event.DELETE else PUT, key_value(m.kv),
                 key_value(m.prev_kv) if m.HasField("prev_kv") else None)


def range_result(r):
    """RangeResponse -> RangeResult."""
    return RangeResult(r.header.revision, tuple(key_value(kv) for kv in r.kvs), r.count,
                       r.more)


def put_result(r):
    """PutResponse -> PutResult."""
    return PutResult(r.header.revision,
                     key_value(r.prev_kv) if r.HasField("prev_kv") else None)


def delete_result(r):
    """DeleteRangeResponse -> DeleteResult."""
    return DeleteResult(r.header.revision, r.deleted,
                        tuple(key_value(kv) for kv in r.prev_kvs))


def txn_result(r):
    """TxnResponse -> TxnResult (nested txns included)."""
    out = []
    for op in r.responses:
        which = op.WhichOneof("response")
        if which == "response_range":
            out.append(range_result(op.response_range))
        elif which == "response_put":
            out.append(put_result(op.response_put))
        elif which == "response_delete_range":
            out.append(delete_result(op.response_delete_range))
        elif which == "response_txn":
            out.append(txn_result(op.response_txn))
    return TxnResult(r.header.revision, r.succeeded, tuple(out))


def replace_result(revision_events):
    """The store's (revision, events) -> ReplaceResult."""
    revision, events = revision_events
    created = updated = deleted = 0
    for e in events:
        if e.type == base.DELETE:
            deleted += 1
        elif e.prev_kv is None:
            created += 1
        else:
            updated += 1
    return ReplaceResult(revision, created, updated, deleted)
