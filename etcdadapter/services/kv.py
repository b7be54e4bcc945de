"""etcdserverpb.KV: validate like etcd's v3rpc/key.go, then delegate to the store.

All revision logic is in the store's MVCC layer; here are only the request checks etcd
makes before a request reaches raft (empty keys, txn sizes, overlapping writes, request
size), and the constant header fields.
"""

from twisted.internet import defer

from etcdadapter import errors
from etcdadapter.pb.etcdserverpb import rpc_pb2 as rpc
from etcdadapter.security import permissions as perm
from etcdadapter.security.authorizer import Authorizer
from etcdadapter.services.rpc import UNARY, Method, service_methods, then
from etcdadapter.store import mvcc

# Bytes etcd's InternalRaftRequest wrapper adds around a request (header with the
# request ID, the oneof tag and length); the limit applies to the wrapped size.
_RAFT_OVERHEAD = 20

_VALID_SORT_ORDERS = frozenset(rpc.RangeRequest.SortOrder.values())
_VALID_SORT_TARGETS = frozenset(rpc.RangeRequest.SortTarget.values())


#: Not an etcd RPC: the in-process client's full resync (no gRPC path, no HTTP route).
REPLACE_PREFIX = "/etcdadapter.KV/ReplacePrefix"


class ReplacePrefixRequest(object):
    """``items`` (key -> value, bytes) are what the keys starting with ``key`` (the
    prefix: named as etcd's requests name it, for the slow-request log) must hold."""

    __slots__ = ("key", "items")

    def __init__(self, key, items):
        self.key = key
        self.items = items


class KVLimits(object):
    def __init__(self, max_request_bytes=1572864, max_txn_ops=128):
        self.max_request_bytes = max_request_bytes
        self.max_txn_ops = max_txn_ops


# -- request checks (etcd: server/etcdserver/api/v3rpc/key.go) -------------------------

def check_range(r):
    if not r.key:
        raise errors.ErrKeyNotProvided
    if r.sort_order not in _VALID_SORT_ORDERS or r.sort_target not in _VALID_SORT_TARGETS:
        raise errors.ErrInvalidSortOption


def check_put(r):
    if not r.key:
        raise errors.ErrKeyNotProvided
    if r.ignore_value and r.value:
        raise errors.ErrValueProvided
    if r.ignore_lease and r.lease:
        raise errors.ErrLeaseProvided


def check_delete(r):
    if not r.key:
        raise errors.ErrKeyNotProvided


def check_txn(r, max_txn_ops, level=1):
    # Nested txns get what their parent leaves of the budget (etcd's checkTxnRequest),
    # so at most max_txn_ops + 1 levels pass; and never more than MAX_TXN_LEVELS.
    opc = max(len(r.compare), len(r.success), len(r.failure))
    if opc > max_txn_ops or level > errors.MAX_TXN_LEVELS:
        raise errors.ErrTooManyOps
    for c in r.compare:
        if not c.key:
            raise errors.ErrKeyNotProvided
    for ops in (r.success, r.failure):
        for op in ops:
            _check_op(op, max_txn_ops - opc, level)


def _check_op(op, max_txn_ops, level):
    which = op.WhichOneof("request")
    if which == "request_range":
        check_range(op.request_range)
    elif which == "request_put":
        check_put(op.request_put)
    elif which == "request_delete_range":
        check_delete(op.request_delete_range)
    elif which == "request_txn":
        check_txn(op.request_txn, max_txn_ops, level + 1)
    else:
        raise errors.ErrKeyNotFound


def _intersects(intervals, key):
    # Delete intervals are [begin, end) with points stored as [key, key + b"\0"); etcd
    # compares range ends as plain strings, so a range_end of b"\0" covers no put.
    for begin, end in intervals:
        if begin <= key < end:
            return True
    return False


def check_intervals(ops):
    """etcd's checkIntervals: a txn branch may not put one key twice, nor put a key that
    a delete of the same branch covers (nested txns included; a nested txn's success and
    failure may put the same key).  Returns (puts, dels)."""
    dels = []
    for op in ops:
        if op.WhichOneof("request") == "request_delete_range":
            d = op.request_delete_range
            dels.append((d.key, d.range_end) if d.range_end else (d.key, d.key + b"\0"))
    puts = set()
    for op in ops:
        if op.WhichOneof("request") != "request_txn":
            continue
        puts_then, dels_then = check_intervals(op.request_txn.success)
        puts_else, dels_else = check_intervals(op.request_txn.failure)
        for k in puts_then:
            if k in puts or _intersects(dels, k):
                raise errors.ErrDuplicateKey
            puts.add(k)
        for k in puts_else:
            if (k in puts and k not in puts_then) or _intersects(dels, k):
                raise errors.ErrDuplicateKey
            puts.add(k)
        dels.extend(dels_then)
        dels.extend(dels_else)
    for op in ops:
        if op.WhichOneof("request") != "request_put":
            continue
        k = op.request_put.key
        if k in puts or _intersects(dels, k):
            raise errors.ErrDuplicateKey
        puts.add(k)
    return puts, dels


def _txn_writes(r):
    for ops in (r.success, r.failure):
        for op in ops:
            which = op.WhichOneof("request")
            if which in ("request_put", "request_delete_range"):
                return True
            if which == "request_txn" and _txn_writes(op.request_txn):
                return True
    return False


class KVService(object):
    def __init__(self, store, identity, limits=None, authz=None):
        self.store = store
        self.identity = identity
        self.limits = limits or KVLimits()
        self.authz = authz or Authorizer()

    def _authorize(self, check, context, request):
        """The caller's permissions after ``check`` passed (None: no checks at all)."""
        # After the syntax checks, before the store: etcd's order of errors.
        if self.authz.enabled:
            perms = self.authz.permissions(context)
            if perms is not perm.ALL:      # (ALL: every check passes)
                check(perms, request)
            return perms
        return None

    def _after_lease_checks(self, perms, leases, write):
        """``write()`` once etcd's checkLeasePuts passed: a put may attach a lease only if
        the caller may write every key already attached to it (it could not revoke the
        lease otherwise).  Deferred[write()'s result]."""
        if perms is None or not leases or perms.admin:
            return write()          # nothing to check (the common case): no extra step
        checks = [self.store.lease_time_to_live(lease_id, True).addCallback(
            lambda info: perm.check_lease_keys(perms, info.keys))
            for lease_id in sorted(leases)]
        d = defer.gatherResults(checks, consumeErrors=True).addErrback(
            lambda f: f.value.subFailure)
        return d.addCallback(lambda _: write())

    def _check_size(self, request):
        if request.ByteSize() + _RAFT_OVERHEAD > self.limits.max_request_bytes:
            raise errors.ErrRequestTooLarge

    def _header(self, response):
        h = response.header
        ident = self.identity
        h.cluster_id = ident.cluster_id
        h.member_id = ident.member_id
        h.raft_term = ident.raft_term
        return response

    def Range(self, request, context):
        check_range(request)
        self._authorize(perm.check_range, context, request)
        return then(self.store.range(request), self._header)

    def Put(self, request, context):
        check_put(request)
        self._check_size(request)
        perms = self._authorize(perm.check_put, context, request)
        d = self._after_lease_checks(perms, (request.lease,) if request.lease else (),
                                     lambda: self.store.put(request))
        return then(d, self._header)

    def DeleteRange(self, request, context):
        check_delete(request)
        self._check_size(request)
        self._authorize(perm.check_delete, context, request)
        return then(self.store.delete_range(request), self._header)

    def Txn(self, request, context):
        check_txn(request, self.limits.max_txn_ops)
        check_intervals(request.success)
        check_intervals(request.failure)
        if _txn_writes(request):
            self._check_size(request)
        perms = self._authorize(perm.check_txn, context, request)
        # Stricter than etcd, which checks the leases of plain Puts only: a put inside a
        # txn attaches a lease just the same.
        d = self._after_lease_checks(perms, perm.txn_put_leases(request),
                                     lambda: self.store.txn(request))
        return then(d, self._header)

    def ReplacePrefix(self, request, context):
        """Not an etcd RPC (:data:`REPLACE_PREFIX`, for the in-process client only): the
        embedding API's full resync, :meth:`Store.replace_prefix` behind the same checks
        as a DeleteRange of the prefix -- write permission on all of it -- but no txn op
        limit.  Deferred[(revision, events)]; the header fields are the caller's
        business."""
        prefix, items = request.key, request.items
        if not prefix:
            raise errors.ErrKeyNotProvided
        for key in items:
            if not key.startswith(prefix):
                raise errors.ErrKeyOutsidePrefix
        if self.authz.enabled and not self.authz.permissions(context).can_write(
                prefix, mvcc.prefix_end(prefix)):
            raise perm.ErrPermissionDenied
        return self.store.replace_prefix(prefix, items)

    def Compact(self, request, context):
        if self.authz.enabled:
            perm.check_admin(self.authz.permissions(context))

        def done(revision):
            response = rpc.CompactionResponse()
            self.identity.fill(response.header, revision)
            return response
        return self.store.compact(request.revision, request.physical).addCallback(done)

    def methods(self):
        return service_methods("KV", [
            ("Range", self.Range, ("/v3/kv/range",)),
            ("Put", self.Put, ("/v3/kv/put",)),
            ("DeleteRange", self.DeleteRange, ("/v3/kv/deleterange",)),
            ("Txn", self.Txn, ("/v3/kv/txn",)),
            ("Compact", self.Compact, ("/v3/kv/compaction",)),
        ]) + [Method(REPLACE_PREFIX, ReplacePrefixRequest, None, UNARY, self.ReplacePrefix,
                     remote=False)]
