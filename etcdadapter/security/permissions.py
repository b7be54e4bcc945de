"""Key-range permissions with etcd's rules, and the checks etcd makes per request.

A permission is (key, range_end, read, write) with the range rules of requests: empty
``range_end`` = the single key, ``range_end == b"\\0"`` = every key from ``key`` on.  A
request's range is allowed when the union of the permitted intervals covers all of it
(etcd's rangePermCache).  Which permissions a caller has comes from a source (the client
certificate policy now, etcd users and roles later); the request checks below are etcd's
``apply_auth.go`` / ``auth/store.go`` ones and the same for every source.
"""

from collections import namedtuple

from etcdadapter.errors import ErrPermissionDenied  # noqa: F401 (raised from here)
# What a watch create outside the caller's permissions is canceled with (etcd 3.5.6+).
WATCH_PERMISSION_DENIED = ("rpc error: code = PermissionDenied desc = "
                           "etcdserver: permission denied")

Permission = namedtuple("Permission", "key range_end read write")

_INF = None     # the end of an open range


def _interval(key, range_end):
    """[begin, end) with end None = unbounded."""
    if not range_end:
        return key, key + b"\0"
    if range_end == b"\0":
        return key, _INF
    return key, range_end


def _checked_interval(key, range_end):
    """The interval a request on ``key``/``range_end`` needs permission for.  A range
    ending at or before ``key`` touches nothing, yet etcd does not let it through: its
    interval tree looks only for grants holding ``key`` itself (3.4.23: no permission
    -> PermissionDenied, a grant on ``key`` -> an empty answer).  Not exactly: the
    tree's pruning depends on its shape and may miss such a grant (a user with grants
    on prefix /a/ and on key /b is refused [/b, /a)); we answer those, empty."""
    begin, end = _interval(key, range_end)
    if end is not _INF and end <= begin:
        return key, key + b"\0"
    return begin, end


def _covered(intervals, begin, end):
    """Do the sorted intervals cover [begin, end)?"""
    cur = begin
    for b, e in intervals:
        if b > cur:
            return False
        if e is _INF:
            return True
        if e > cur:
            cur = e
        if end is not _INF and cur >= end:
            return True
    return False


class PermissionSet(object):
    """What one caller may do.  ``admin`` = everything (etcd's root role)."""

    def __init__(self, permissions=(), admin=False):
        self.admin = admin
        self._read = sorted(_interval(p.key, p.range_end) for p in permissions if p.read)
        self._write = sorted(_interval(p.key, p.range_end) for p in permissions if p.write)

    def can_read(self, key, range_end=b""):
        if self.admin:
            return True
        return _covered(self._read, *_checked_interval(key, range_end))

    def can_write(self, key, range_end=b""):
        if self.admin:
            return True
        return _covered(self._write, *_checked_interval(key, range_end))


ALL = PermissionSet(admin=True)


# -- etcd's per-request checks -----------------------------------------------------------

def check_range(perms, r):
    if not perms.can_read(r.key, r.range_end):
        raise ErrPermissionDenied


def check_put(perms, r):
    if not perms.can_write(r.key):
        raise ErrPermissionDenied
    if r.prev_kv and not perms.can_read(r.key):
        raise ErrPermissionDenied


def check_delete(perms, r):
    if not perms.can_write(r.key, r.range_end):
        raise ErrPermissionDenied
    if r.prev_kv and not perms.can_read(r.key, r.range_end):
        raise ErrPermissionDenied


def check_txn(perms, r):
    for c in r.compare:
        if not perms.can_read(c.key, c.range_end):
            raise ErrPermissionDenied
    for ops in (r.success, r.failure):
        for op in ops:
            which = op.WhichOneof("request")
            if which == "request_range":
                check_range(perms, op.request_range)
            elif which == "request_put":
                check_put(perms, op.request_put)
            elif which == "request_delete_range":
                check_delete(perms, op.request_delete_range)
            elif which == "request_txn":
                check_txn(perms, op.request_txn)


def txn_put_leases(r):
    """The leases the puts of a txn (both branches, nested txns too) attach."""
    leases = set()
    for ops in (r.success, r.failure):
        for op in ops:
            which = op.WhichOneof("request")
            if which == "request_put" and op.request_put.lease:
                leases.add(op.request_put.lease)
            elif which == "request_txn":
                leases |= txn_put_leases(op.request_txn)
    return leases


def check_lease_keys(perms, keys):
    """etcd's checkLeasePuts over a lease's attached ``keys``: write permission on
    every one."""
    for key in keys:
        if not perms.can_write(key):
            raise ErrPermissionDenied


def check_lease_readers(perms, keys):
    """etcd's checkLeaseTimeToLive over a lease's attached ``keys``: read permission on
    every one."""
    if perms.admin:
        return
    for key in keys:
        if not perms.can_read(key):
            raise ErrPermissionDenied


def check_admin(perms):
    if not perms.admin:
        raise ErrPermissionDenied
