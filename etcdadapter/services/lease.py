"""etcdserverpb.Lease: etcd's v3rpc/lease.go over the store's lease methods, plus the
expiry loop (etcd's lessor runLoop: every 500 ms, at most 500 expired leases revoked).

Behaviour checked against etcd 3.4.23:

* LeaseGrant answers {header, ID, TTL = granted TTL}; the revision does not change.
* LeaseRevoke answers {header} with the revision after the attached keys were deleted.
* LeaseKeepAlive: every request gets {header, ID, TTL} in order (TTL 0 for an unknown
  lease; the header is captured before the renewal).  When the client half-closes, the
  stream ends with status OK once every request received so far is answered (etcd's
  recv loop returns nil on EOF).
* LeaseTimeToLive: unknown lease -> {header, ID, TTL: -1}, not an error.  With
  ``keys`` and auth on, as etcd 3.4.26+/3.5.9+ (not the 3.4.23 reference, which leaks
  them): no user -> "user name is empty", a user who may not read every attached key
  -> PermissionDenied.  Without ``keys`` no token is needed (3.4).
* LeaseLeases: {header, leases: [{ID}...]}.
"""

from twisted.internet import defer, task
from twisted.logger import Logger

from etcdadapter.logs import background_failure
from etcdadapter.pb.etcdserverpb import rpc_pb2 as rpc
from etcdadapter.security import permissions as perm
from etcdadapter.security.authorizer import Authorizer
from etcdadapter.services.rpc import service_methods
from etcdadapter.store import lease as lease_rules

log = Logger()


class LeaseService(object):
    def __init__(self, store, identity, clock=None,
                 interval=lease_rules.EXPIRY_INTERVAL,
                 revokes_per_pass=lease_rules.MAX_REVOKES_PER_PASS, authz=None):
        self.authz = authz or Authorizer()
        self.store = store
        self.identity = identity
        self.clock = clock if clock is not None else store.clock
        self.interval = interval
        self.revokes_per_pass = revokes_per_pass
        self._loop = None
        self._running = None
        self.streams = set()

    # -- expiry loop ------------------------------------------------------------------
    def start(self):
        """Start revoking expired leases every ``interval`` seconds."""
        if self._loop is None:
            self._loop = task.LoopingCall(self._expire)
            self._loop.clock = self.clock
            d = self._loop.start(self.interval, now=False)
            d.addErrback(lambda f: log.failure("lease expiry loop stopped", f))

    def stop(self):
        """Stop the expiry loop; Deferred firing once a running pass is done."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        running, self._running = self._running, None
        return running if running is not None else defer.succeed(None)

    def _expire(self):
        if self._running is not None:
            return                           # the previous pass is still running
        d = self.store.lease_expire(self.revokes_per_pass)

        def done(result):
            self._running = None
            return result

        def failed(f):
            background_failure(log, "lease expiry pass failed", f)

        d.addBoth(done)
        d.addErrback(failed)
        if not d.called:
            self._running = d
        return None

    # -- unary methods ----------------------------------------------------------------
    def _fill(self, response, revision=None):
        self.identity.fill(response.header,
                           self.store.revision if revision is None else revision)
        return response

    def LeaseGrant(self, request, context):
        def done(result):
            lease_id, ttl = result
            return self._fill(rpc.LeaseGrantResponse(ID=lease_id, TTL=ttl))
        return self.store.lease_grant(request.ID, request.TTL).addCallback(done)

    def LeaseRevoke(self, request, context):
        def revoke(_):
            return self.store.lease_revoke(request.ID).addCallback(
                lambda revision: self._fill(rpc.LeaseRevokeResponse(), revision))
        if not self.authz.enabled:
            return revoke(None)
        perms = self.authz.permissions(context)
        if perms.admin:
            return revoke(None)

        # etcd's checkLeasePuts: revoking deletes the keys, so it needs write
        # permission on every one of them.
        return self.store.lease_time_to_live(request.ID, True).addCallback(
            lambda info: perm.check_lease_keys(perms, info.keys)).addCallback(revoke)

    def LeaseTimeToLive(self, request, context):
        # CVE-2023-32082 (fixed in etcd 3.4.26/3.5.9): the key names only for a caller
        # who may read every one of them.
        readers = self.authz.lease_key_readers(context) if request.keys else None

        def done(info):
            if readers is not None:
                perm.check_lease_readers(readers, info.keys)
            r = rpc.LeaseTimeToLiveResponse(ID=request.ID, TTL=info.ttl,
                                            grantedTTL=info.granted_ttl)
            if request.keys:
                r.keys.extend(info.keys)
            return self._fill(r)
        return self.store.lease_time_to_live(request.ID, request.keys).addCallback(done)

    def LeaseLeases(self, request, context):
        def done(ids):
            r = rpc.LeaseLeasesResponse()
            for lease_id in ids:
                r.leases.add().ID = lease_id
            return self._fill(r)
        return self.store.lease_list().addCallback(done)

    # -- streaming --------------------------------------------------------------------
    def LeaseKeepAlive(self, stream):
        ks = stream.bind(KeepAliveStream(self, stream))
        self.streams.add(ks)
        return ks

    def methods(self):
        return service_methods("Lease", [
            ("LeaseGrant", self.LeaseGrant, ("/v3/lease/grant",)),
            ("LeaseRevoke", self.LeaseRevoke, ("/v3/lease/revoke", "/v3/kv/lease/revoke")),
            ("LeaseKeepAlive", self.LeaseKeepAlive, ("/v3/lease/keepalive",)),
            ("LeaseTimeToLive", self.LeaseTimeToLive,
             ("/v3/lease/timetolive", "/v3/kv/lease/timetolive")),
            ("LeaseLeases", self.LeaseLeases, ("/v3/lease/leases", "/v3/kv/lease/leases")),
        ])


class KeepAliveStream(object):
    """One LeaseKeepAlive stream: requests are answered strictly in order, even when the
    store answers asynchronously."""

    def __init__(self, service, stream):
        self.service = service
        self.stream = stream
        self.tail = defer.succeed(None)       # the last request's answer
        self.closed = False

    def on_message(self, request):
        if self.closed:
            return
        self.tail.addCallback(lambda _: self._renew(request.ID))

    def _renew(self, lease_id):
        if self.closed:
            return None
        response = rpc.LeaseKeepAliveResponse(ID=lease_id)
        self.service.identity.fill(response.header, self.service.store.revision)

        def done(ttl):
            if not self.closed:
                response.TTL = ttl
                self.stream.send(response)

        def failed(f):
            if not self.closed:
                from etcdadapter.errors import EtcdError, StatusCode
                err = f.value if isinstance(f.value, EtcdError) else EtcdError(
                    StatusCode.UNKNOWN, str(f.value))
                self._end(err)
        return self.service.store.lease_keepalive(lease_id).addCallbacks(done, failed)

    def on_half_close(self):
        self.tail.addCallback(lambda _: self._end(None))

    def _end(self, error):
        if self.closed:
            return
        self.closed = True
        self.service.streams.discard(self)
        self.stream.finish(error)

    def on_cancel(self):
        self.closed = True
        self.service.streams.discard(self)
