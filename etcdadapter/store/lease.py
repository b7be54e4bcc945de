"""Lease rules shared by every store (etcd ``server/lease/lessor.go``), as pure code.

A store keeps, per lease: its ID, the granted TTL (seconds), its expiry (seconds on the
store's clock) and the set of keys attached to it.  The store's key history already says
which lease each key is attached to (``KV.lease`` of its latest version), so a SQL store
may derive the attached keys with a query instead of keeping a separate set.

Attaching follows the writes: a committed version with ``lease != 0`` attaches its key to
that lease and detaches it from the lease of the key's previous version; a tombstone
detaches it.  Revoking deletes all attached keys in one revision (:func:`revoke_events`).
"""

import random

from etcdadapter import errors
from etcdadapter.store import mvcc

MIN_TTL = 2                    # ceil(1.5 * election timeout of 1 s), etcd's default
MAX_TTL = 9000000000           # etcd MaxLeaseTTL
EXPIRY_INTERVAL = 0.5          # etcd checks expired leases every 500 ms
MAX_REVOKES_PER_PASS = 500     # etcd leaseRevokeRate 1000/s -> 500 per 500 ms pass

_rng = random.SystemRandom()


def granted_ttl(ttl):
    """The TTL a Grant asking for ``ttl`` gets: ErrLeaseTTLTooLarge above MAX_TTL, raised
    to MIN_TTL below it (0 and negative too)."""
    if ttl > MAX_TTL:
        raise errors.ErrLeaseTTLTooLarge
    return ttl if ttl >= MIN_TTL else MIN_TTL


def new_lease_id(in_use):
    """A random-looking positive int63 for which ``in_use(id)`` is false."""
    while True:
        lease_id = _rng.getrandbits(63)
        if lease_id and not in_use(lease_id):
            return lease_id


def remaining_ttl(expiry, now):
    """TimeToLive's TTL: whole seconds left, truncated toward zero (Go int64(seconds))."""
    return int(expiry - now)


def revoke_events(view, keys):
    """Revoke a lease whose attached keys are ``keys`` (a write view): a DELETE of every
    one still live, in key order, in one new revision -- mvcc's write path, as for a
    DeleteRange (:func:`~etcdadapter.store.mvcc.delete_keys`).  Returns the revision the
    Revoke response reports (the new one, or the current one when nothing was deleted)."""
    return mvcc.delete_keys(view, keys)
