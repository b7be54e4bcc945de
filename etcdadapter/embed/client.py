"""The host program's in-process client of an embedded adapter.

Every call goes through the adapter's method registry -- the handlers and interceptors
gRPC and the JSON gateway call, with a :class:`~etcdadapter.services.rpc.CallContext`
carrying the client's credentials -- so requests are validated, authorized, counted in
``/metrics`` and answered exactly as for a remote client, only without encoding or a
network hop.  ``replace_prefix`` is no etcd call: its registry entry
(``/etcdadapter.KV/ReplacePrefix``) has no gRPC path and no HTTP route.
"""

from typing import Awaitable, Callable, Mapping, Optional, Sequence

from twisted.internet import defer
from twisted.python.failure import Failure

from etcdadapter import errors
from etcdadapter.embed import results
from etcdadapter.embed.ops import (Bytes, Compare, Delete, Get, Op, Put, Txn, as_bytes,
                                   key_range)
from etcdadapter.embed.watch import LocalStream, Watch
from etcdadapter.pb.etcdserverpb import rpc_pb2 as rpc
from etcdadapter.security.peer import PeerIdentity
from etcdadapter.services.kv import REPLACE_PREFIX, ReplacePrefixRequest
from etcdadapter.services.rpc import CallContext, call_unary, open_stream

_KV = "/etcdserverpb.KV/"
_LEASE = "/etcdserverpb.Lease/"


class Client(object):
    """Talk to the embedded adapter from the host program (made by
    :meth:`EmbeddedAdapter.client`).

    Call it on the reactor's thread (under asyncio: the loop's thread).  Every method
    returns a Deferred (Twisted) or an awaitable future (asyncio) of a result record
    (:mod:`etcdadapter.embed.results`), or fails with
    :class:`~etcdadapter.errors.EtcdError` carrying etcd's gRPC code and message.

    Credentials decide what the client may do, exactly as for a remote client: ``user``
    and ``password`` (etcd auth; the client authenticates when first needed and again
    when its token has expired, like etcd's Go client; while auth is disabled it needs
    none), or an auth ``token``, and/or ``identity`` -- the
    :class:`~etcdadapter.security.peer.PeerIdentity` a client certificate would have,
    for ``--client-cert-policy`` rules and ``--client-cert-auth`` (its CN names the
    user).  Without credentials the client is an anonymous caller.
    """

    def __init__(self, adapter, token: Optional[str] = None, user: Optional[str] = None,
                 password: Optional[str] = None,
                 identity: Optional[PeerIdentity] = None):
        if (user is None) != (password is None):
            raise ValueError("give both user and password, or neither")
        self._adapter = adapter
        self._registry = adapter.service.registry
        self._futures = adapter.futures
        self._token = token
        self._user = user
        self._password = password
        self._identity = identity
        self._login_waiters = None

    # -- plumbing ------------------------------------------------------------------------
    def _context(self):
        metadata = {"token": self._token} if self._token else {}
        return CallContext(metadata=metadata, transport="embed",
                           peer_identity=self._identity)

    def _run(self, call):
        """Deferred[call(context)] with this client's credentials."""
        if not self._adapter.running:
            return defer.fail(errors.ErrStopped())
        if self._password is None:
            return defer.maybeDeferred(call, self._context())
        d = self._logged_in().addCallback(lambda _: call(self._context()))

        def again(failure):
            failure.trap(errors.EtcdError)
            stale = failure.value == errors.ErrInvalidAuthToken or (
                failure.value == errors.ErrUserEmpty and self._token == "")
            if not stale:
                return failure
            self._token = None
            return self._logged_in().addCallback(lambda _: call(self._context()))
        return d.addErrback(again)

    def _logged_in(self):
        """Deferred firing once the client has a token ("" while auth is disabled);
        concurrent calls share one Authenticate."""
        if self._token is not None:
            return defer.succeed(None)
        waiter = defer.Deferred()
        if self._login_waiters is not None:
            self._login_waiters.append(waiter)
            return waiter
        self._login_waiters = [waiter]
        method = self._registry.lookup("/etcdserverpb.Auth/Authenticate")
        request = rpc.AuthenticateRequest(name=self._user, password=self._password)
        d = defer.maybeDeferred(call_unary, method, request,
                                CallContext(transport="embed",
                                            peer_identity=self._identity))

        def got(response):
            self._token = response.token

        def failed(failure):
            failure.trap(errors.EtcdError)
            if failure.value != errors.ErrAuthNotEnabled:
                return failure
            self._token = ""            # no auth: calls go without a token

        def settle(result):
            waiters, self._login_waiters = self._login_waiters, None
            for w in waiters:
                if isinstance(result, Failure):
                    w.errback(result)
                else:
                    w.callback(None)
        d.addCallbacks(got, failed)
        d.addBoth(settle)
        return waiter

    def _unary(self, path, request, convert):
        method = self._registry.lookup_local(path)
        d = self._run(lambda context: call_unary(method, request, context))
        return self._futures.out(d.addCallback(convert))

    # -- KV ------------------------------------------------------------------------------
    def get(self, key: Bytes, range_end: Optional[Bytes] = None, *, prefix: bool = False,
            revision: int = 0, limit: int = 0, keys_only: bool = False,
            count_only: bool = False) -> Awaitable[results.RangeResult]:
        """Read ``key``, or a range (``prefix=True`` or ``range_end``) -> RangeResult
        (``.kv`` is the key's KeyValue or None; ``.kvs`` in key order)."""
        request = Get(key, range_end, prefix, revision, limit, keys_only,
                      count_only).to_pb()
        return self._unary(_KV + "Range", request, results.range_result)

    def put(self, key: Bytes, value: Bytes, *, lease: int = 0,
            prev_kv: bool = False) -> Awaitable[results.PutResult]:
        """Write ``key`` = ``value`` (attached to ``lease`` if non-zero) -> PutResult."""
        return self._unary(_KV + "Put", Put(key, value, lease, prev_kv).to_pb(),
                           results.put_result)

    def delete(self, key: Bytes, range_end: Optional[Bytes] = None, *,
               prefix: bool = False,
               prev_kv: bool = False) -> Awaitable[results.DeleteResult]:
        """Delete ``key``, or a range (``prefix=True`` or ``range_end``) ->
        DeleteResult."""
        return self._unary(_KV + "DeleteRange",
                           Delete(key, range_end, prefix, prev_kv).to_pb(),
                           results.delete_result)

    def txn(self, compare: Sequence[Compare] = (), success: Sequence[Op] = (),
            failure: Sequence[Op] = ()) -> Awaitable[results.TxnResult]:
        """Atomically: if every :class:`Compare` holds run the ``success`` operations,
        else the ``failure`` ones (:class:`Get`, :class:`Put`, :class:`Delete`,
        :class:`Txn`) -> TxnResult.  At most ``max_txn_ops`` operations per branch."""
        return self._unary(_KV + "Txn", Txn(compare, success, failure).to_pb(),
                           results.txn_result)

    def replace_prefix(self, prefix: Bytes,
                       items: Mapping[Bytes, Bytes]) -> Awaitable[results.ReplaceResult]:
        """Make the keys starting with ``prefix`` hold exactly ``items`` (a mapping
        key -> value; every key must start with ``prefix``) -> ReplaceResult.

        For a controller's full resync: in ONE revision it creates the missing keys,
        rewrites those whose value differs (or that are attached to a lease: the
        result holds no lease), deletes the others -- one watch event per difference
        and nothing at all (no event, no new revision) when nothing differs.  Needs
        write permission on the whole prefix; not bounded by ``max_txn_ops``."""
        prefix = as_bytes(prefix)
        data = {}
        for key, value in items.items():
            data[as_bytes(key)] = as_bytes(value)
        return self._unary(REPLACE_PREFIX, ReplacePrefixRequest(prefix, data),
                           results.replace_result)

    # -- Watch ---------------------------------------------------------------------------
    def watch(self, key: Bytes, range_end: Optional[Bytes] = None, *,
              prefix: bool = False, start_revision: int = 0, prev_kv: bool = False,
              callback: Optional[Callable[[results.Event], None]] = None) -> Watch:
        """Watch ``key``, or a range (``prefix=True`` or ``range_end``) -> Watch.

        From ``start_revision`` on (replaying the retained history first), or from now
        when 0; ``prev_kv`` adds each key's previous version to its events.  Events go
        to ``callback(event)`` if given, else ``async for event in watch``."""
        key, range_end = key_range(key, range_end, prefix)
        request = rpc.WatchRequest(create_request=rpc.WatchCreateRequest(
            key=key, range_end=range_end, start_revision=start_revision,
            prev_kv=prev_kv))
        adapter = self._adapter
        w = Watch(self._futures, callback, on_end=adapter._watches.discard)
        if not adapter.running:
            w._open_failed(errors.ErrStopped())
            return w
        adapter._watches.add(w)
        method = self._registry.lookup("/etcdserverpb.Watch/Watch")

        def handler(stream):
            open_stream(method, stream)
        if self._password is None:
            w._open(handler, self._context(), request)
        else:
            self._logged_in().addCallbacks(
                lambda _: w._open(handler, self._context(), request),
                lambda failure: w._open_failed(failure.value))
        return w

    # -- leases --------------------------------------------------------------------------
    def lease_grant(self, ttl: int, lease_id: int = 0) -> Awaitable[results.Lease]:
        """Grant a lease of ``ttl`` seconds (``lease_id`` 0: the adapter picks the ID)
        -> Lease.  Keys put with ``lease=lease.id`` go when it expires or is revoked."""
        def convert(r):
            return results.Lease(r.ID, r.TTL, r.header.revision)
        return self._unary(_LEASE + "LeaseGrant", rpc.LeaseGrantRequest(TTL=ttl,
                                                                        ID=lease_id),
                           convert)

    def lease_revoke(self, lease_id: int) -> Awaitable[int]:
        """Revoke a lease, deleting its keys (in one revision) -> the revision after."""
        return self._unary(_LEASE + "LeaseRevoke", rpc.LeaseRevokeRequest(ID=lease_id),
                           lambda r: r.header.revision)

    def lease_keepalive(self, lease_id: int) -> Awaitable[int]:
        """Renew a lease once -> its TTL, 0 if it does not exist (any more)."""
        method = self._registry.lookup(_LEASE + "LeaseKeepAlive")

        def call(context):
            d = defer.Deferred()
            answers = []

            def finished(error):
                if error is not None:
                    d.errback(error)
                else:
                    d.callback(answers[0].TTL if answers else 0)
            stream = LocalStream(context, answers.append, finished)
            open_stream(method, stream)
            stream.on_message(rpc.LeaseKeepAliveRequest(ID=lease_id))
            stream.on_half_close()
            return d
        return self._futures.out(self._run(call))
