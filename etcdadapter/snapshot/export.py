"""A store's state as an etcd 3.4 snapshot file (:mod:`.etcd_format`): what
Maintenance.Snapshot streams and ``etcdctl snapshot save`` stores.

The state is taken at one moment on the reactor thread (a frozen view of the keyspace --
for a SQL store its replica, once it has caught up with the database --, the leases and
the auth state); the file is then written in a thread into an anonymous temporary file,
page by page, so memory stays small whatever the store's size.

What the file holds: the history etcd's compaction would keep (each key's version live
at the compact revision, then every version above it, tombstones included), the
compact revision, the leases with their granted TTLs (etcd restarts them in full), users
with their password hashes and roles with their permissions, the auth flag and revision.
Passwords: the adapter hashes them with bcrypt as etcd does, so they work on etcd too;
a scrypt hash (made by older adapters) is carried as it is, but etcd checks only bcrypt:
such a user cannot authenticate on etcd until an admin sets the password again.
"""

import tempfile

from twisted.internet import defer, threads

from etcdadapter.security.auth_store import AuthState
from etcdadapter.snapshot import etcd_format


def retained_versions(view):
    """(sub, KV) of a :class:`~etcdadapter.store.keyspace.Frozen` keyspace, as etcd's key
    bucket keeps them."""
    compact = view.compact_revision
    if compact > 0:
        for item in view.live_versions(compact, compact):
            yield item
    for item in view.versions(max(compact, 0), view.revision):
        yield item


def write_view(f, view, leases, auth):
    """Write the snapshot of ``view`` into ``f``; returns its size (checksum included)."""
    return etcd_format.write_snapshot(f, view.revision, view.compact_revision,
                                      retained_versions(view), leases, auth)


@defer.inlineCallbacks
def snapshot_file(store, run_in_thread=threads.deferToThread):
    """Deferred[(file, size)]: the store's snapshot in an anonymous temporary file,
    positioned at its start (the caller closes it)."""
    lease_ids = yield store.lease_list()
    view = yield store.snapshot_view()
    infos = yield defer.gatherResults([store.lease_time_to_live(i) for i in lease_ids])
    blob = yield store.auth_load()
    # A lease that expired meanwhile answers granted TTL 0: left out.
    leases = [etcd_format.Lease(i, info.granted_ttl)
              for i, info in zip(lease_ids, infos) if info.granted_ttl > 0]
    f = tempfile.TemporaryFile()
    try:
        size = yield run_in_thread(write_view, f, view, leases, AuthState.from_blob(blob))
    except BaseException:
        f.close()
        raise
    f.seek(0)
    return f, size
