"""The requests of the in-process client, as small records that build etcd's protobuf
requests: :class:`Get`, :class:`Put`, :class:`Delete` and :class:`Txn` (with
:class:`Compare`) -- the operations of a txn, and what the client's methods of the same
names send.

Keys and values may be ``bytes`` or ``str`` (encoded as UTF-8).  A range is ``key``
alone (one key), ``prefix=True`` (every key starting with ``key``; an empty ``key``
then means every key) or ``range_end`` (the keys in ``[key, range_end)``; ``"\\0"``
means every key from ``key`` on), as in etcdctl.
"""

from typing import NamedTuple, Optional, Sequence, Union

from etcdadapter.pb.etcdserverpb import rpc_pb2 as rpc
from etcdadapter.store.mvcc import prefix_end

Bytes = Union[bytes, str]

_TARGETS = {
    "value": (rpc.Compare.VALUE, "value"),
    "version": (rpc.Compare.VERSION, "version"),
    "create_revision": (rpc.Compare.CREATE, "create_revision"),
    "mod_revision": (rpc.Compare.MOD, "mod_revision"),
    "lease": (rpc.Compare.LEASE, "lease"),
}
_RESULTS = {"==": rpc.Compare.EQUAL, "!=": rpc.Compare.NOT_EQUAL,
            "<": rpc.Compare.LESS, ">": rpc.Compare.GREATER}


def as_bytes(data):
    """``bytes`` for a key or value given as bytes(-like) or str (UTF-8)."""
    if isinstance(data, bytes):
        return data
    if isinstance(data, str):
        return data.encode("utf-8")
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    raise TypeError("keys and values are bytes or str, not %s" % type(data).__name__)


def key_range(key, range_end=None, prefix=False):
    """(key, range_end) bytes for etcd's request fields."""
    key = as_bytes(key)
    if prefix:
        if range_end is not None:
            raise ValueError("give prefix=True or range_end, not both")
        if not key:
            return b"\0", b"\0"          # etcdctl get --prefix "": every key
        return key, prefix_end(key)
    return key, as_bytes(range_end) if range_end is not None else b""


class Compare(NamedTuple):
    """A txn condition: ``Compare(key, target, op, value)``, e.g.
    ``Compare("/k", "version", "==", 0)`` (the key does not exist) or
    ``Compare("/k", "value", "!=", "v")``.

    ``target``: ``"value"``, ``"version"``, ``"create_revision"``, ``"mod_revision"``
    or ``"lease"``; ``op``: ``"=="``, ``"!="``, ``"<"`` or ``">"``.  With ``range_end``
    (or ``prefix=True``) every key of the range must satisfy it (etcd's rule)."""

    key: Bytes
    target: str
    op: str
    value: Union[Bytes, int]
    range_end: Optional[Bytes] = None
    prefix: bool = False

    def to_pb(self):
        """The rpc.Compare."""
        if self.target not in _TARGETS:
            raise ValueError("compare target must be one of %s, not %r"
                             % (", ".join(_TARGETS), self.target))
        if self.op not in _RESULTS:
            raise ValueError("compare op must be one of %s, not %r"
                             % (", ".join(_RESULTS), self.op))
        target, field = _TARGETS[self.target]
        key, range_end = key_range(self.key, self.range_end, self.prefix)
        c = rpc.Compare(key=key, range_end=range_end, target=target,
                        result=_RESULTS[self.op])
        if field == "value":
            c.value = as_bytes(self.value)
        else:
            setattr(c, field, int(self.value))
        return c


class Get(NamedTuple):
    """Read one key or a range (etcd's RangeRequest).  ``revision`` > 0 reads the past;
    ``limit`` > 0 caps the keys returned; ``keys_only`` leaves values out;
    ``count_only`` returns only the count."""

    key: Bytes
    range_end: Optional[Bytes] = None
    prefix: bool = False
    revision: int = 0
    limit: int = 0
    keys_only: bool = False
    count_only: bool = False

    def to_pb(self):
        key, range_end = key_range(self.key, self.range_end, self.prefix)
        return rpc.RangeRequest(key=key, range_end=range_end, revision=self.revision,
                                limit=self.limit, keys_only=self.keys_only,
                                count_only=self.count_only)

    def to_op(self):
        return rpc.RequestOp(request_range=self.to_pb())


class Put(NamedTuple):
    """Write one key (etcd's PutRequest).  ``lease``: attach the key to this lease (0:
    none, detaching it from any); ``prev_kv``: answer with the key before the put."""

    key: Bytes
    value: Bytes
    lease: int = 0
    prev_kv: bool = False

    def to_pb(self):
        return rpc.PutRequest(key=as_bytes(self.key), value=as_bytes(self.value),
                              lease=self.lease, prev_kv=self.prev_kv)

    def to_op(self):
        return rpc.RequestOp(request_put=self.to_pb())


class Delete(NamedTuple):
    """Delete one key or a range (etcd's DeleteRangeRequest); ``prev_kv``: answer with
    the deleted keys."""

    key: Bytes
    range_end: Optional[Bytes] = None
    prefix: bool = False
    prev_kv: bool = False

    def to_pb(self):
        key, range_end = key_range(self.key, self.range_end, self.prefix)
        return rpc.DeleteRangeRequest(key=key, range_end=range_end, prev_kv=self.prev_kv)

    def to_op(self):
        return rpc.RequestOp(request_delete_range=self.to_pb())


class Txn(NamedTuple):
    """If every ``compare`` holds, run ``success``, else ``failure`` -- atomically, in
    one revision if anything is written.  Operations are :class:`Get`, :class:`Put`,
    :class:`Delete` and nested :class:`Txn`."""

    compare: Sequence[Compare] = ()
    success: Sequence["Op"] = ()
    failure: Sequence["Op"] = ()

    def to_pb(self):
        return rpc.TxnRequest(compare=[c.to_pb() for c in self.compare],
                              success=[op.to_op() for op in self.success],
                              failure=[op.to_op() for op in self.failure])

    def to_op(self):
        return rpc.RequestOp(request_txn=self.to_pb())


#: An operation of a txn branch.
Op = Union[Get, Put, Delete, Txn]
