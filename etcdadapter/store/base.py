"""The store contract every backend implements (memory, SQLite, MySQL/TiDB, PostgreSQL).

Layering, borrowed from etcd (v3rpc -> mvcc -> backend) and kine (one generic store, small
per-backend pieces):

* ``etcdadapter.services`` validate requests syntactically (empty keys, txn op counts,
  duplicate keys) and fill the constant header fields (cluster_id, member_id, raft_term).
* A :class:`Store` runs each request atomically and answers with the protobuf response whose
  ``header.revision`` it has set.  Everything about revisions -- compares, create/mod
  revision, version, tombstones, history reads, compaction -- lives in
  :mod:`etcdadapter.store.mvcc`, which is pure code over a small backend view, so the SQL
  stores run the very same logic inside a database transaction.
* The change feed hands every committed write, in revision order, to the watch hub.

All request methods return Deferreds and never block the reactor.  Errors are
:class:`etcdadapter.errors.EtcdError` failures (ErrCompacted, ErrFutureRev, ErrKeyNotFound,
ErrLeaseNotFound, ...).
"""

from collections import namedtuple

from twisted.logger import Logger

_log = Logger()

# One version of one key.  Field names match mvccpb.KeyValue so conversion is mechanical.
# A tombstone (the key was deleted at mod_revision) has version == 0 and create_revision == 0.
KV = namedtuple("KV", "key create_revision mod_revision version value lease")

PUT = 0
DELETE = 1

# A change of one key made by one write request.  ``kv`` for a DELETE carries only key and
# mod_revision (the deletion revision), exactly as etcd's events do.  ``prev_kv`` is the
# key's KV before the write, or None when the key did not exist.
Event = namedtuple("Event", "type kv prev_kv")

# Every event of one write request; all share ``revision``, in execution order.
Change = namedtuple("Change", "revision events")

StoreStatus = namedtuple("StoreStatus",
                         "revision compact_revision db_size db_size_in_use")

# What the physical side of a compaction removed: old versions (log rows) and keys
# forgotten altogether, and how long it took (wall-clock seconds).
Purged = namedtuple("Purged", "revision versions keys seconds")

# LeaseTimeToLive's answer: ``ttl`` = remaining whole seconds (-1 for an unknown lease),
# ``granted_ttl`` (0 for an unknown lease), ``keys`` = sorted attached keys (empty unless
# asked for).
LeaseTTL = namedtuple("LeaseTTL", "ttl granted_ttl keys")


#: ``auth_save``'s ``expected`` when the save is unconditional.
ANY = object()


class Subscribers(object):
    """A change feed's subscribers: ``add`` returns the unsubscribe callable; iterating
    gives the (callback, on_lost) entries of the moment (safe against changes made by
    the callbacks themselves)."""

    def __init__(self):
        self._entries = []

    def add(self, callback, on_lost=None):
        entry = (callback, on_lost)     # a distinct object even if callback is reused
        self._entries.append(entry)

        def unsubscribe():
            try:
                self._entries.remove(entry)
            except ValueError:
                pass
        return unsubscribe

    def __iter__(self):
        return iter(tuple(self._entries))

    def deliver(self, change):
        """Hand ``change`` to every subscriber; one failing does not stop the others."""
        for callback, _on_lost in tuple(self._entries):
            try:
                callback(change)
            except Exception:
                _log.failure("store subscriber failed on revision {rev}",
                             rev=change.revision)


class Store(object):
    """Abstract store.  Subclasses implement every method below."""

    #: The latest committed revision this process knows of (synchronous; for headers of
    #: responses that do not touch the store, e.g. Watch created).
    revision = 0

    #: The revision compacted to; -1 when nothing has been compacted.
    compact_revision = -1

    #: :class:`Purged`: what this process's last compaction removed (None: none yet).
    last_purge = None

    #: The clock lease expiry is measured on (an IReactorTime: ``clock.seconds()``);
    #: ``twisted.internet.task.Clock`` in tests.
    clock = None

    def start(self):
        """Open the store (connect, create/migrate the schema).  Returns a Deferred."""
        raise NotImplementedError

    def stop(self):
        """Close the store.  Returns a Deferred.  From the moment it is called, requests
        fail with ``errors.ErrStopped()`` (Unavailable "etcdserver: server stopped", what
        etcd answers once it is stopping)."""
        raise NotImplementedError

    # -- KV ---------------------------------------------------------------------------
    def range(self, request):
        """RangeRequest -> Deferred[RangeResponse]."""
        raise NotImplementedError

    def put(self, request):
        """PutRequest -> Deferred[PutResponse].  Always one new revision."""
        raise NotImplementedError

    def delete_range(self, request):
        """DeleteRangeRequest -> Deferred[DeleteRangeResponse].  A new revision only if a
        key was deleted."""
        raise NotImplementedError

    def txn(self, request):
        """TxnRequest -> Deferred[TxnResponse].  Atomic; one new revision if the executed
        branch wrote anything."""
        raise NotImplementedError

    def replace_prefix(self, prefix, items):
        """Deferred[(revision, events)]: atomically make the keys under ``prefix`` hold
        exactly ``items`` (key bytes -> value bytes, all under the prefix), emitting only
        the differences as events in ONE new revision, none when nothing differs (see
        :func:`etcdadapter.store.mvcc.replace_prefix`).  Not an etcd request: the
        embedding API's full resync; not bounded by the txn op limit."""
        raise NotImplementedError

    def compact(self, revision, physical=False):
        """Compact history below ``revision``.  Deferred[int]: the current revision.
        Reads and watches below ``revision`` fail with ErrCompacted as soon as it fires;
        with ``physical`` it fires only once the old versions are gone too (a store may
        remove them in the background otherwise)."""
        raise NotImplementedError

    def status(self):
        """Deferred[StoreStatus]."""
        raise NotImplementedError

    def hash_kv(self, revision):
        """Deferred[(hash, current revision, compact revision)]: etcd's HashKV
        (:func:`etcdadapter.store.mvcc.hash_kv`) over one consistent snapshot.  It reads
        every version: it must not hold up the reactor for long on a big store (the SQL
        stores read in their thread pool, the memory store hashes a snapshot in a
        thread)."""
        raise NotImplementedError

    # -- change feed --------------------------------------------------------------------
    def subscribe(self, callback, on_lost=None):
        """Call ``callback(change)`` with every committed :class:`Change`, in strictly
        increasing revision order, on the reactor thread.  ``on_lost(first, last,
        compact_revision)`` is called instead when revisions first..last can never be
        delivered (a SQL store whose other instance compacted them before this process
        read them; the memory store never calls it).  Returns a callable that
        unsubscribes."""
        raise NotImplementedError

    def history(self, start_revision, key, range_end, limit_revisions=1000):
        """Deferred[list of Change]: the changes with revision >= start_revision touching
        [key, range_end) (etcd range rules), oldest first, covering at most
        ``limit_revisions`` distinct revisions, each Change holding only the matching
        events (with prev_kv filled where the previous version is still retained).
        Fails with ErrCompacted if start_revision < compact_revision."""
        raise NotImplementedError

    # -- leases (etcd server/lease/lessor.go; shared rules in etcdadapter.store.lease) ---
    #
    # A lease is (ID, granted TTL, expiry on ``clock``, attached keys).  Keys attach
    # through the KV writes: a Put with ``lease`` attaches its key (detaching it from its
    # previous lease), a Put with ``ignore_lease`` keeps it, a delete detaches it; a Put
    # with an unknown lease fails with ErrLeaseNotFound (mvcc asks
    # ``WriteView.lease_exists``).  Grant, KeepAlive, TimeToLive and Leases never change
    # the revision.  A SQL store keeps leases in a table (expiry as wall-clock time, so
    # that several instances agree) and runs Revoke/expiry in one database transaction.

    def lease_grant(self, lease_id, ttl):
        """Deferred[(lease_id, granted_ttl)].  ``lease_id`` 0 -> the store picks a
        random-looking unused positive int63; a used ID -> ErrLeaseExist; ``ttl`` above
        9000000000 -> ErrLeaseTTLTooLarge (checked first); below the 2 s minimum (0 and
        negative too) -> raised to it.  Expiry = now + granted TTL."""
        raise NotImplementedError

    def lease_revoke(self, lease_id):
        """Deferred[int]: delete every key attached to the lease in ONE new revision
        (DELETE events sorted by key, through the normal commit path and change feed;
        no keys -> no new revision), then forget the lease.  Fires with the revision
        after the deletion.  Unknown lease -> ErrLeaseNotFound."""
        raise NotImplementedError

    def lease_keepalive(self, lease_id):
        """Deferred[int]: reset the expiry to now + granted TTL and fire with the granted
        TTL; 0 (not an error) for an unknown or already expired lease."""
        raise NotImplementedError

    def lease_time_to_live(self, lease_id, keys=False):
        """Deferred[LeaseTTL]; ``LeaseTTL(-1, 0, ())`` for an unknown lease."""
        raise NotImplementedError

    def lease_list(self):
        """Deferred[list of int]: the IDs of all live leases (sorted)."""
        raise NotImplementedError

    def lease_expire(self, limit=500):
        """Deferred[list of int]: revoke (exactly as :meth:`lease_revoke`, each in its
        own revision) up to ``limit`` leases whose expiry is <= now, soonest first; fires
        with their IDs.  The lease service calls this every 500 ms."""
        raise NotImplementedError

    # -- auth (etcd users, roles, enabled flag, auth revision) ---------------------------
    #
    # etcdadapter.security.auth_store keeps etcd's auth state as one opaque blob (JSON,
    # a few KiB: user names with password hashes, roles with key permissions).
    # Adapters sharing one database share it.  Saving it never changes the KV revision
    # and never reaches the change feed.

    def auth_load(self):
        """Deferred[bytes or None]: the blob last saved (by any adapter on this store),
        None if none ever was."""
        raise NotImplementedError

    def auth_save(self, blob, expected=ANY):
        """Deferred[bool]: replace the blob (durably, atomically: a reader sees the old
        or the new blob, never a mix) -- only if the stored blob is still ``expected``
        (bytes, or None for none yet), so that two adapters changing users at once
        cannot lose one change: False (nothing saved) when another saved first.
        ``expected`` left out: unconditionally."""
        raise NotImplementedError

    # -- etcd snapshots (etcdadapter.snapshot) ----------------------------------------

    def snapshot_view(self):
        """Deferred[a :class:`~etcdadapter.store.keyspace.Frozen` keyspace]: every
        retained version as of one moment at or after the call (a SQL store first
        catches up with the database), to read in another thread."""
        raise NotImplementedError

    def import_history(self, history):
        """Deferred: fill this empty, not yet started store with ``history`` (an
        :class:`etcdadapter.store.importing.Imported`): every version at its exact
        revision and sub-revision, the compact revision, the current revision, the
        leases (each starting its full granted TTL) and the auth state.  Fails with
        :class:`~etcdadapter.store.importing.StoreNotEmpty` when the store holds any
        key, history, lease or auth state.  Start the store afterwards."""
        raise NotImplementedError
