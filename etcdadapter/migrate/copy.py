"""What ``etcd-adapter migrate`` copies first: etcd's state at one revision R.

* Keys: Range over the whole keyspace at revision R, in pages, each key with its
  create_revision, mod_revision, version, value and lease.  The store gets them at their
  mod_revision (keys one write made share a revision; their order within it -- the
  sub-revision -- is not in a Range answer: key order), its revision R and compact
  revision R - 1 with R's events exact (:func:`snapshot`), so history below R - 1 is
  ErrCompacted, as in an etcd compacted at R - 1.
* Leases: the same IDs and granted TTLs, with etcd's remaining time.
* Auth: users with their roles, roles with their permissions, the enabled flag (again
  at the cut-over, for changes made meanwhile).  etcd
  never answers a password hash: the ``--user`` used to read etcd gets the hash of its
  password; every other user gets no password (it cannot log in until ``etcdctl user
  passwd`` sets one after the cut-over); an etcd snapshot carries the hashes instead
  (docs/etcd-snapshots.md).
"""

from etcdadapter.pb.etcdserverpb import rpc_pb2 as rpc
from etcdadapter.store.base import KV
from etcdadapter.store.importing import Imported

PAGE = 1000


def keys_at(client, revision, page=PAGE):
    """Every live KV at ``revision`` (sorted by key)."""
    out = []
    key = b"\0"
    while True:
        r = client.range(rpc.RangeRequest(key=key, range_end=b"\0", revision=revision,
                                          limit=page))
        for kv in r.kvs:
            out.append(KV(kv.key, kv.create_revision, kv.mod_revision, kv.version,
                          kv.value, kv.lease))
        if not r.more or not r.kvs:
            return out
        key = r.kvs[-1].key + b"\0"


def leases(client):
    """{id: (granted TTL, remaining seconds)} of etcd's live leases."""
    out = {}
    for lease_id in client.lease_ids():
        ttl = client.lease_ttl(lease_id)
        if ttl is not None:
            out[lease_id] = ttl
    return out


def auth_blob(client, previous=None):
    """etcd's users, roles and auth flag as the adapter's auth state blob; None when
    etcd has no users and no roles and auth is off.  ``previous``: the blob copied
    before (at the cut-over, which copies users and roles again): password hashes the
    store already has and its token secret are kept."""
    from etcdadapter.security import tokens
    from etcdadapter.security.auth_store import (AuthState, User, check_password,
                                                 hash_password)
    users = client.users()
    roles = client.roles()
    if not users and not roles and not client.auth_enabled:
        return None
    before = AuthState.from_blob(previous)
    state = AuthState()
    state.enabled = client.auth_enabled
    state.revision = before.revision
    for name, user_roles in users.items():
        password = before.password_of(name)
        if name == client.user and not (password and check_password(client.password,
                                                                     password)):
            password = hash_password(client.password)
        state.users[name] = User(name, password, user_roles)
    for name, perms in roles.items():
        state.roles[name] = sorted(perms, key=lambda p: (p.key, p.range_end))
    if state.enabled:
        state.token_secret = before.token_secret or tokens.new_secret()
    blob = state.to_blob()
    if previous is not None and blob != previous:
        state.revision += 1                 # as etcd bumps it with each auth change
        blob = state.to_blob()
    return blob


def events_at(client, revision, timeout=10.0):
    """The events of ``revision`` in etcd's order, each with its prev_kv; None when
    that cannot be had exactly (no events: revision 1; a previous version compacted)."""
    from etcdadapter.pb.mvccpb import kv_pb2 as mvccpb
    if revision <= 1:
        return None
    stream = client.watch(revision, timeout)
    try:
        for response in stream:
            if response.compact_revision or response.canceled:
                return None
            if not response.events:
                continue
            events = [e for e in response.events if e.kv.mod_revision == revision]
            for e in events:
                deleted = e.type == mvccpb.Event.DELETE
                if not e.HasField("prev_kv") and (deleted or e.kv.version > 1):
                    return None
            return events or None
        return None
    finally:
        stream.close()


def _kv(kv):
    return KV(kv.key, kv.create_revision, kv.mod_revision, kv.version, kv.value, kv.lease)


def _numbered(kvs):
    """(sub, KV) in (revision, key) order, numbered within each revision."""
    out = []
    sub, last = 0, None
    for kv in sorted(kvs, key=lambda kv: (kv.mod_revision, kv.key)):
        sub = sub + 1 if kv.mod_revision == last else 0
        last = kv.mod_revision
        out.append((sub, kv))
    return out


def snapshot(client):
    """(Imported, {lease id: (ttl, remaining)}, number of keys) of etcd now.

    The copy is compacted at R - 1, R's own events exact: the keys at R - 1 (those R
    did not touch, and the previous versions of those it did) and then R's events in
    etcd's order, so that a watcher resuming at R gets R's events as etcd sends them
    (deletions, prev_kv).  When R's events cannot be had (a fresh etcd, R itself
    compacted), compacted at R."""
    from etcdadapter.pb.mvccpb import kv_pb2 as mvccpb
    revision = client.revision()
    kvs = keys_at(client, revision)
    count = len(kvs)
    events = events_at(client, revision)
    if events is None:
        compact = revision
        versions = _numbered(kvs)
    else:
        compact = revision - 1
        touched = set(e.kv.key for e in events)
        before = [kv for kv in kvs if kv.key not in touched]
        before += [_kv(e.prev_kv) for e in events if e.HasField("prev_kv")]
        versions = _numbered(before)
        for sub, e in enumerate(events):
            if e.type == mvccpb.Event.DELETE:
                kv = KV(e.kv.key, 0, revision, 0, b"", 0)
            else:
                kv = _kv(e.kv)
            versions.append((sub, kv))
    live = leases(client)
    history = Imported(revision, compact, lambda: iter(versions),
                       sorted((i, ttl) for i, (ttl, _left) in live.items()),
                       auth_blob(client))
    return history, live, count
