"""etcdserverpb.Maintenance: Status (what `etcdctl endpoint status` shows), Alarm,
Defragment, Hash, HashKV.  This server is always its own leader.

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
from etcdadapter.services.rpc import Method, UNARY


class MaintenanceService(object):
    def __init__(self, store, identity, authz=None):
        self.store = store
        self.identity = identity
        self.authz = authz or Authorizer()

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

    def methods(self):
        p = "/etcdserverpb.Maintenance/"
        return [
            Method(p + "Status", rpc.StatusRequest, rpc.StatusResponse, UNARY, self.Status,
                   ("/v3/maintenance/status",)),
            Method(p + "Alarm", rpc.AlarmRequest, rpc.AlarmResponse, UNARY, self.Alarm,
                   ("/v3/maintenance/alarm",)),
            Method(p + "Defragment", rpc.DefragmentRequest, rpc.DefragmentResponse, UNARY,
                   self.Defragment, ("/v3/maintenance/defragment",)),
            # etcd 3.4's gateway routes /v3/maintenance/hash to Hash only; 3.5.10+ has
            # /v3/maintenance/hashkv for HashKV.
            Method(p + "Hash", rpc.HashRequest, rpc.HashResponse, UNARY, self.Hash,
                   ("/v3/maintenance/hash",)),
            Method(p + "HashKV", rpc.HashKVRequest, rpc.HashKVResponse, UNARY,
                   self.HashKV, ("/v3/maintenance/hashkv",)),
        ]
