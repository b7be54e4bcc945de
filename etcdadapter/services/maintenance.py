"""etcdserverpb.Maintenance: Status (what `etcdctl endpoint status` shows), Alarm,
Defragment, Hash, HashKV, Snapshot.  This server is always its own leader.

Snapshot streams the store as etcd 3.4 would (:mod:`etcdadapter.snapshot.export`): a
bbolt file in 32 KiB chunks, each with the bytes still to come, then the file's SHA-256
as the last message (remaining_bytes 0) -- ``etcdctl snapshot save`` checks it.  Like
etcd, it is an admin call when auth is on.  Chunks are sent only while the stream's
unsent output stays under :data:`SNAPSHOT_BACKLOG`, so a slow client holds one temporary
file on disk, not the snapshot in memory.

Defragment, Hash and HashKV are admin calls, as in etcd (its authMaintenanceServer):
with auth on they need the root role (and, under a certificate policy, ``all``).  etcd
3.4 returns those refusals unconverted (gRPC Unknown, "auth: permission denied"); we
answer as etcd 3.5+ does, with the usual codes and texts ("etcdserver: permission
denied", PermissionDenied), so that a refusal never looks like a server failure (HTTP
403, not 500).

HashKV is etcd's (:func:`etcdadapter.store.mvcc.hash_kv`): the same history from the
same first revision hashes to the same value as on etcd.  Hash (etcd: a hash of its
whole bbolt file, auth and lease buckets included) cannot match etcd's; ours is HashKV
at the current revision, which changes with every write as etcd's does.
"""

from etcdadapter.pb.etcdserverpb import rpc_pb2 as rpc
from etcdadapter.security.authorizer import Authorizer
from etcdadapter.services.identity import SERVER_VERSION
from etcdadapter.services.rpc import as_etcd_error, service_methods

SNAPSHOT_CHUNK = 32 * 1024          # etcd's snapshotSendBufferSize
SNAPSHOT_BACKLOG = 1024 * 1024      # unsent bytes on the stream before sending pauses
SNAPSHOT_RETRY = 0.005              # seconds between looks at a paused stream


class MaintenanceService(object):
    def __init__(self, store, identity, authz=None, clock=None):
        self.store = store
        self.identity = identity
        self.authz = authz or Authorizer()
        if clock is None:
            from twisted.internet import reactor as clock
        self.clock = clock

    def _check_admin(self, context):
        if self.authz.enabled:
            self.authz.check_admin(context)

    def Status(self, request, context):
        def done(status):
            ident = self.identity
            response = rpc.StatusResponse(
                version=SERVER_VERSION, dbSize=status.db_size,
                dbSizeInUse=status.db_size_in_use, leader=ident.member_id,
                raftIndex=max(status.revision, 0), raftTerm=ident.raft_term,
                raftAppliedIndex=max(status.revision, 0))
            ident.fill(response.header, status.revision)
            return response
        return self.store.status().addCallback(done)

    def Alarm(self, request, context):
        # No alarms are ever raised (no space quota yet): GET lists none, others are no-ops.
        response = rpc.AlarmResponse()
        self.identity.fill(response.header, self.store.revision)
        return response

    def Defragment(self, request, context):
        self._check_admin(context)
        response = rpc.DefragmentResponse()
        self.identity.fill(response.header, self.store.revision)
        return response

    def Hash(self, request, context):
        self._check_admin(context)

        def done(result):
            hash_, current, _compact = result
            response = rpc.HashResponse(hash=hash_)
            self.identity.fill(response.header, current)
            return response
        return self.store.hash_kv(0).addCallback(done)

    def HashKV(self, request, context):
        self._check_admin(context)

        def done(result):
            hash_, current, compact = result
            # The header has the current revision, whatever revision was hashed (etcd).
            response = rpc.HashKVResponse(hash=hash_, compact_revision=compact)
            self.identity.fill(response.header, current)
            return response
        return self.store.hash_kv(request.revision).addCallback(done)

    def Snapshot(self, stream):
        stream.bind(SnapshotSender(self, stream))

    def methods(self):
        return service_methods("Maintenance", [
            ("Status", self.Status, ("/v3/maintenance/status",)),
            ("Alarm", self.Alarm, ("/v3/maintenance/alarm",)),
            ("Defragment", self.Defragment, ("/v3/maintenance/defragment",)),
            # etcd 3.4's gateway routes /v3/maintenance/hash to Hash only; 3.5.10+ has
            # /v3/maintenance/hashkv for HashKV.
            ("Hash", self.Hash, ("/v3/maintenance/hash",)),
            ("HashKV", self.HashKV, ("/v3/maintenance/hashkv",)),
            ("Snapshot", self.Snapshot, ("/v3/maintenance/snapshot",)),
        ])


class SnapshotSender(object):
    """One Snapshot call: takes the snapshot when the request arrives, then sends it."""

    def __init__(self, service, stream):
        self.service = service
        self.stream = stream
        self.file = None
        self.remaining = 0
        self.timer = None
        self.started = False
        self.cancelled = False

    def on_message(self, request):
        if self.started:
            return
        self.started = True
        try:
            self.service._check_admin(self.stream.context)
        except Exception as e:
            self._end(as_etcd_error(e))
            return
        from etcdadapter.snapshot.export import snapshot_file
        snapshot_file(self.service.store).addCallbacks(self._ready, self._failed)

    def on_half_close(self):
        if not self.started:                 # no request at all: an empty one
            self.on_message(rpc.SnapshotRequest())

    def on_cancel(self):
        self.cancelled = True
        self._release()

    def _failed(self, failure):
        if not self.cancelled:
            self._end(as_etcd_error(failure))

    def _ready(self, result):
        self.file, self.remaining = result
        if self.cancelled:
            self._release()
            return
        self._pump()

    def _pump(self):
        self.timer = None
        stream = self.stream
        if self.cancelled or stream.closed:
            self._release()
            return
        pending = getattr(stream, "pending_bytes", lambda: 0)
        while self.remaining > 0 and pending() < SNAPSHOT_BACKLOG:
            # The file ends with the checksum: its last 32 bytes are the last message,
            # as etcd sends the hash apart from the data.
            tail = 32
            if self.remaining > tail:
                blob = self.file.read(min(SNAPSHOT_CHUNK, self.remaining - tail))
            else:
                blob = self.file.read(tail)
            if not blob:
                self._end(as_etcd_error(IOError("snapshot file shorter than expected")))
                return
            self.remaining -= len(blob)
            # etcd counts the database bytes still to come, not the checksum's.
            stream.send(rpc.SnapshotResponse(remaining_bytes=max(self.remaining - tail, 0),
                                             blob=blob))
        if self.remaining > 0:
            self.timer = self.service.clock.callLater(SNAPSHOT_RETRY, self._pump)
            return
        self._end(None)

    def _end(self, error):
        self._release()
        if not self.stream.closed:
            self.stream.finish(error)

    def _release(self):
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        if self.file is not None:
            self.file.close()
            self.file = None
