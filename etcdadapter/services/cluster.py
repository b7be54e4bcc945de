"""etcdserverpb.Cluster: MemberList answers with this one member and its real client URLs
(never a schemeless `://host:port`, which broke api7/etcd-adapter's users)."""

from etcdadapter.pb.etcdserverpb import rpc_pb2 as rpc
from etcdadapter.services.rpc import service_methods


class ClusterService(object):
    def __init__(self, identity):
        self.identity = identity

    def MemberList(self, request, context):
        ident = self.identity
        response = rpc.MemberListResponse()
        ident.fill(response.header)          # etcd leaves the revision out here
        response.members.add(ID=ident.member_id, name=ident.name,
                             peerURLs=ident.peer_urls, clientURLs=ident.client_urls)
        return response

    def methods(self):
        return service_methods("Cluster", [
            ("MemberList", self.MemberList, ("/v3/cluster/member/list",))])
