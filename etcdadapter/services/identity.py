"""Who this server says it is: versions, cluster/member IDs, the response header.

IDs are derived from names (not random per start) so they stay stable across restarts:
clients and operators see the same member ID after a restart, as with a real etcd member.
"""

import hashlib

SERVER_VERSION = "3.5.17"     # the etcd release whose behaviour we follow
CLUSTER_VERSION = "3.5.0"     # etcd reports major.minor.0; APISIX requires >= 3.4.0
RAFT_TERM = 2                 # a fresh single-member etcd cluster sits at term 2


def _id(*parts):
    digest = hashlib.sha256("\0".join(parts).encode("utf-8")).digest()
    value = int.from_bytes(digest[:8], "big") & 0x7FFFFFFFFFFFFFFF
    return value or 1


class ServerIdentity(object):
    def __init__(self, name="default", cluster_name="etcd-adapter", client_urls=(),
                 peer_urls=("http://localhost:2380",)):
        self.name = name
        self.cluster_name = cluster_name
        self.client_urls = list(client_urls)
        self.peer_urls = list(peer_urls)
        self.cluster_id = _id("cluster", cluster_name)
        self.member_id = _id("member", cluster_name, name)
        self.raft_term = RAFT_TERM

    def fill(self, header, revision=None):
        """Set the constant fields of a ResponseHeader (and the revision if given)."""
        header.cluster_id = self.cluster_id
        header.member_id = self.member_id
        header.raft_term = self.raft_term
        if revision is not None:
            header.revision = revision
        return header
