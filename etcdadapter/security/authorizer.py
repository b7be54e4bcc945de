"""Who may do what, decided once per request from the call context, for every face.

The services ask :meth:`Authorizer.permissions` with the call's context (the same object
for gRPC, the JSON gateway and, later, the in-process client) and apply etcd's request
checks (:mod:`etcdadapter.security.permissions`).  Today the permissions come from the
client-certificate policy; etcd users and roles will be a second source.
"""

from etcdadapter.security.permissions import ALL


class Authorizer(object):
    def __init__(self, cert_policy=None):
        self.cert_policy = cert_policy

    @property
    def enabled(self):
        """False: every caller may do everything (no checks are made)."""
        return self.cert_policy is not None

    def permissions(self, context):
        if self.cert_policy is None:
            return ALL
        return self.cert_policy.permissions_for(context.peer_identity)
