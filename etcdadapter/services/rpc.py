"""What a service method is, independent of the transport that carries it.

Both faces -- gRPC over HTTP/2 and the HTTP/JSON gateway -- look methods up in one
:class:`MethodRegistry` and call the same handlers, so behaviour cannot drift between them.

* A unary handler is ``handler(request, context)`` returning the response message or a
  Deferred firing with it, or raising/failing with :class:`~etcdadapter.errors.EtcdError`.
* A streaming handler (Watch, LeaseKeepAlive) is ``handler(stream)`` where ``stream`` is a
  :class:`ServerStream`: it sets the three callbacks and calls ``send``/``finish``.
"""

from twisted.logger import Logger

_log = Logger()

UNARY = "unary"
SERVER_STREAM = "server_stream"
BIDI_STREAM = "bidi_stream"


class Method(object):
    __slots__ = ("path", "request_type", "response_type", "kind", "handler",
                 "http_paths")

    def __init__(self, path, request_type, response_type, kind, handler, http_paths=()):
        self.path = path                    # "/etcdserverpb.KV/Range"
        self.request_type = request_type
        self.response_type = response_type
        self.kind = kind
        self.handler = handler
        self.http_paths = tuple(http_paths)  # gateway routes, e.g. ("/v3/kv/range",)

    @property
    def streaming(self):
        return self.kind != UNARY

    def __repr__(self):
        return "<Method %s %s>" % (self.path, self.kind)


def service_methods(service, table):
    """The Methods of one service of rpc.proto (``service``: "KV", "Watch", ...): the
    gRPC path, message types and kind come from the generated service descriptor; the
    ``table`` rows (method name, handler, gateway paths) say only what is ours."""
    from google.protobuf.message_factory import GetMessageClass

    from etcdadapter.pb.etcdserverpb import rpc_pb2
    descriptor = rpc_pb2.DESCRIPTOR.services_by_name[service]
    methods = []
    for name, handler, http_paths in table:
        m = descriptor.methods_by_name[name]
        if m.client_streaming:
            kind = BIDI_STREAM          # etcd has no client-streaming-only method
        elif m.server_streaming:
            kind = SERVER_STREAM
        else:
            kind = UNARY
        methods.append(Method("/%s/%s" % (descriptor.full_name, name),
                              GetMessageClass(m.input_type), GetMessageClass(m.output_type),
                              kind, handler, http_paths))
    return methods


# etcd methods left out on purpose, and the answer that says why (instead of grpc-go's
# "unknown method ..."); a method registered later wins over its row here.
_MEMBERS = ("etcd-adapter's members are its processes: start or stop an adapter on the "
            "same store instead (docs/deployment.md)")
NOT_IMPLEMENTED = {
    "/etcdserverpb.Maintenance/MoveLeader":
        "etcd-adapter has no raft leader to move: every adapter serves reads and writes "
        "from the shared store (README: Migrating from etcd)",
    "/etcdserverpb.Cluster/MemberAdd": _MEMBERS,
    "/etcdserverpb.Cluster/MemberRemove": _MEMBERS,
    "/etcdserverpb.Cluster/MemberUpdate": _MEMBERS,
    "/etcdserverpb.Cluster/MemberPromote": _MEMBERS,
}


class MethodRegistry(object):
    def __init__(self):
        self._by_path = {}
        self._by_http_path = {}
        self._services = set()

    def add(self, method):
        self._by_path[method.path] = method
        self._services.add(method.path[1:].rpartition("/")[0])
        for p in method.http_paths:
            self._by_http_path[p] = method

    def lookup(self, path):
        return self._by_path.get(path)

    def unknown_method_error(self, path):
        """grpc-go's error for a path no method is registered at: the service is what
        precedes the last "/"."""
        from etcdadapter.errors import EtcdError, StatusCode
        name = path[1:] if path.startswith("/") else path
        service, slash, method = name.rpartition("/")
        if not slash:
            # grpc-go of etcd 3.4/3.5 answers this with RESOURCE_EXHAUSTED.
            return EtcdError(StatusCode.RESOURCE_EXHAUSTED,
                             "malformed method name: %s" % _go_quote(path))
        why = NOT_IMPLEMENTED.get("/" + name)
        if why is not None:
            return EtcdError(StatusCode.UNIMPLEMENTED, why)
        if service in self._services:
            return EtcdError(StatusCode.UNIMPLEMENTED,
                             "unknown method %s for service %s" % (method, service))
        return EtcdError(StatusCode.UNIMPLEMENTED, "unknown service %s" % service)

    def lookup_http(self, http_path):
        return self._by_http_path.get(http_path)

    def __iter__(self):
        return iter(self._by_path.values())


def _go_quote(text):
    """Go's %q for the printable ASCII strings that reach us."""
    return '"%s"' % text.replace("\\", "\\\\").replace('"', '\\"')


class CallContext(object):
    """Per-call facts a handler may need: metadata (auth token), the peer, the transport.

    ``metadata`` maps lower-case names to str values (gRPC metadata; for the gateway the
    HTTP headers as grpc-gateway forwards them).  ``peer_identity`` is filled by the TLS
    layer with the verified client certificate's identity.
    """

    __slots__ = ("metadata", "peer", "transport", "peer_identity", "deadline")

    def __init__(self, metadata=None, peer=None, transport="grpc", peer_identity=None,
                 deadline=None):
        self.metadata = metadata if metadata is not None else {}
        self.peer = peer
        self.transport = transport
        self.peer_identity = peer_identity
        self.deadline = deadline


class ServerStream(object):
    """The handler's side of a streaming call.  Transports subclass this.

    The handler assigns:
      ``on_message(request)``  -- each request message, in order
      ``on_half_close()``      -- the client will send no more (the stream stays open)
      ``on_cancel()``          -- the client went away or the server is shutting down;
                                  release everything, do not send
    and calls ``send(response)`` (any number of times) and ``finish(error=None)``.
    """

    def __init__(self, context):
        self.context = context
        self.on_message = _ignore
        self.on_half_close = _ignore0
        self.on_cancel = _ignore0
        self.closed = False

    def bind(self, handler):
        """Route the three callbacks to ``handler``'s methods of the same names."""
        self.on_message = handler.on_message
        self.on_half_close = handler.on_half_close
        self.on_cancel = handler.on_cancel
        return handler

    def send(self, response):
        raise NotImplementedError

    def finish(self, error=None):
        raise NotImplementedError


def as_etcd_error(failure_or_exc):
    """What a handler's exception or Failure reaches the client as: EtcdErrors as they
    are, a cancelled Deferred as grpc-go's "context canceled", anything else (a bug) is
    logged and becomes Unknown."""
    from twisted.internet import defer
    from twisted.python.failure import Failure
    from etcdadapter.errors import EtcdError, StatusCode
    exc = failure_or_exc.value if isinstance(failure_or_exc, Failure) else failure_or_exc
    if isinstance(exc, EtcdError):
        return exc
    if isinstance(exc, defer.CancelledError):
        return EtcdError(StatusCode.CANCELLED, "context canceled")
    _log.failure("unexpected error in handler", failure_or_exc
                 if isinstance(failure_or_exc, Failure) else Failure(exc))
    return EtcdError(StatusCode.UNKNOWN, str(exc) or exc.__class__.__name__)


def _ignore(_msg):
    pass


def _ignore0():
    pass
