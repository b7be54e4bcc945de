"""etcdserverpb.Maintenance: Status (what `etcdctl endpoint status` shows), Alarm,
Defragment.  This server is always its own leader."""

from etcdadapter.pb.etcdserverpb import rpc_pb2 as rpc
from etcdadapter.services.identity import SERVER_VERSION
from etcdadapter.services.rpc import Method, UNARY


class MaintenanceService(object):
    def __init__(self, store, identity):
        self.store = store
        self.identity = identity

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
        response = rpc.DefragmentResponse()
        self.identity.fill(response.header, self.store.revision)
        return response

    def methods(self):
        p = "/etcdserverpb.Maintenance/"
        return [
            Method(p + "Status", rpc.StatusRequest, rpc.StatusResponse, UNARY, self.Status,
                   ("/v3/maintenance/status",)),
            Method(p + "Alarm", rpc.AlarmRequest, rpc.AlarmResponse, UNARY, self.Alarm,
                   ("/v3/maintenance/alarm",)),
            Method(p + "Defragment", rpc.DefragmentRequest, rpc.DefragmentResponse, UNARY,
                   self.Defragment, ("/v3/maintenance/defragment",)),
        ]
