"""What a service method is, independent of the transport that carries it.

Both faces -- gRPC over HTTP/2 and the HTTP/JSON gateway -- look methods up in one
:class:`MethodRegistry` and call the same handlers, so behaviour cannot drift between them.

* A unary handler is ``handler(request, context)`` returning the response message or a
  Deferred firing with it, or raising/failing with :class:`~etcdadapter.errors.EtcdError`.
* A streaming handler (Watch, LeaseKeepAlive) is ``handler(stream)`` where ``stream`` is a
  :class:`ServerStream`: it sets the three callbacks and calls ``send``/``finish``.

Every way a handler is called -- gRPC (:mod:`etcdadapter.transport`), the JSON gateway
(:mod:`etcdadapter.gateway`), the in-process client (:mod:`etcdadapter.embed`) -- goes
through :func:`call_unary` or :func:`open_stream`, which run the registry's
:class:`Interceptor` hooks around it: call metrics, slow-request logging and open-stream
tracking are interceptors (see ``AdapterService``, which installs them), not code in the
handlers or the transports.  Authorization is not one: etcd checks the request's syntax
before the caller's permissions, so the handlers ask the Authorizer where etcd does.
"""

import time

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from etcdadapter.errors import EtcdError, StatusCode

_log = Logger()

UNARY = "unary"
SERVER_STREAM = "server_stream"
BIDI_STREAM = "bidi_stream"


class Method(object):
    __slots__ = ("path", "request_type", "response_type", "kind", "handler",
                 "http_paths", "remote", "starts", "ends", "opens", "clock")

    def __init__(self, path, request_type, response_type, kind, handler, http_paths=(),
                 remote=True):
        self.path = path                    # "/etcdserverpb.KV/Range"
        self.request_type = request_type
        self.response_type = response_type
        self.kind = kind
        self.handler = handler
        self.http_paths = tuple(http_paths)  # gateway routes, e.g. ("/v3/kv/range",)
        # False: no etcd RPC -- only the in-process client calls it (no gRPC path, no
        # HTTP route), through the same interceptors.
        self.remote = remote
        # The registry's interceptor hooks (see Interceptor), set when it is registered.
        self.starts = self.ends = self.opens = ()
        self.clock = time.monotonic

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


class Interceptor(object):
    """Behaviour around every call of the methods a registry holds (metrics, logging,
    tracking), whichever face carries the call.  The registry asks it once per method;
    a method it returns nothing for pays nothing per call -- this is the hottest path,
    so per call it costs only the hooks it returns."""

    def unary(self, method):
        """For a unary ``method``: None, or ``(start, end)`` (either may be None):
        ``start(request, context)`` as a call begins, ``end(request, context, elapsed,
        code)`` once it is answered (seconds it took, the gRPC status code)."""
        return None

    def stream(self, method):
        """For a streaming ``method``: None, or ``opened(stream)``, called as a call
        begins; it may return ``ended(code)``, called once when the call ends: finished
        with that status, or Canceled (the client went away, the server stopped it)."""
        return None


class MethodRegistry(object):
    def __init__(self, clock=time.monotonic):
        self._by_path = {}
        self._by_http_path = {}
        self._local = {}            # every method, remote or not (the in-process client)
        self._services = set()
        self._interceptors = []
        self.clock = clock          # times unary calls for the interceptors

    def intercept(self, *interceptors):
        """Apply ``interceptors`` (in order, after those applied already) to every call
        of every method, those registered already and those to come."""
        self._interceptors.extend(interceptors)
        for method in self._local.values():
            self._apply(method, interceptors)

    def _apply(self, method, interceptors):
        starts, ends, opens = list(method.starts), list(method.ends), list(method.opens)
        for interceptor in interceptors:
            if method.kind == UNARY:
                hooks = interceptor.unary(method)
                if hooks is not None:
                    start, end = hooks
                    if start is not None:
                        starts.append(start)
                    if end is not None:
                        ends.append(end)
            else:
                opened = interceptor.stream(method)
                if opened is not None:
                    opens.append(opened)
        method.starts, method.ends, method.opens = tuple(starts), tuple(ends), tuple(opens)
        method.clock = self.clock

    def add(self, method):
        method.starts = method.ends = method.opens = ()
        self._apply(method, self._interceptors)
        self._local[method.path] = method
        if not method.remote:
            return
        self._by_path[method.path] = method
        self._services.add(method.path[1:].rpartition("/")[0])
        for p in method.http_paths:
            self._by_http_path[p] = method

    def lookup(self, path):
        return self._by_path.get(path)

    def lookup_local(self, path):
        """A method the in-process client may call (a remote one or not)."""
        return self._local.get(path)

    def unknown_method_error(self, path):
        """grpc-go's error for a path no method is registered at: the service is what
        precedes the last "/"."""
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


def status_code(error):
    """The gRPC status a call ends with: None (OK), an EtcdError, a Failure or another
    exception (what :func:`as_etcd_error` makes of it, without logging)."""
    if error is None:
        return StatusCode.OK
    exc = error.value if isinstance(error, Failure) else error
    if isinstance(exc, EtcdError):
        return exc.code
    if isinstance(exc, CancelledError):
        return StatusCode.CANCELLED
    return StatusCode.UNKNOWN


_OK = StatusCode.OK


def fired_with_value(d):
    """Whether Deferred ``d`` has fired with a value that is final: no callback waits on
    another Deferred (a fired Deferred that is not paused has run its callbacks: a
    memory store's answer).  Its ``result``
    can then be used as it is, without a callback run (Twisted's callback machinery
    cost more than a memory store's write).  A handler never hands back a Deferred whose
    callbacks are running -- that would be its own caller."""
    return d.called and not d.paused and not isinstance(d.result, Failure)


def then(d, fn):
    """``d.addCallback(fn)``, or ``fn(d.result)`` itself when ``d`` has fired with a
    value (:func:`fired_with_value`): handlers return either, see :func:`call_unary`."""
    if fired_with_value(d):
        return fn(d.result)
    return d.addCallback(fn)


def call_unary(method, request, context):
    """Call a unary method as every face does: its interceptors around its handler.

    Returns what the handler does -- the response or a Deferred of it -- or raises
    what it raises; a Deferred that has already fired with a response (the memory
    store's answers, cached reads) comes back as the response itself, so the caller
    needs no callback for it."""
    ends = method.ends
    for start in method.starts:
        start(request, context)
    if not ends:
        return method.handler(request, context)
    clock = method.clock
    t0 = clock()
    try:
        result = method.handler(request, context)
    except Exception as e:
        _ended(None, ends, request, context, clock() - t0, status_code(e))
        raise
    if isinstance(result, Deferred):
        if not fired_with_value(result):
            return result.addBoth(_ended_later, ends, request, context, clock, t0)
        result = result.result
    elapsed = clock() - t0
    for end in ends:
        end(request, context, elapsed, _OK)
    return result


def _ended(result, ends, request, context, elapsed, code):
    for end in ends:
        end(request, context, elapsed, code)
    return result


def _ended_later(result, ends, request, context, clock, t0):
    code = status_code(result) if isinstance(result, Failure) else _OK
    return _ended(result, ends, request, context, clock() - t0, code)


def open_stream(method, stream):
    """Start a streaming call as every face does: its interceptors, then its handler
    (which binds the stream's callbacks).  A handler that raises ends the call with
    what it raised (the transport then answers it)."""
    ends = []
    for opened in method.opens:
        ended = opened(stream)
        if ended is not None:
            ends.append(ended)
    if ends:
        stream._ended = ends[0] if len(ends) == 1 else _every(ends)
    try:
        return method.handler(stream)
    except Exception as e:
        stream._end(status_code(e))
        raise


def _every(ends):
    def ended(code):
        for end in ends:
            end(code)
    return ended


class ServerStream(object):
    """The handler's side of a streaming call.  Transports subclass this and implement
    ``send`` and ``_finish``.

    The handler assigns:
      ``on_message(request)``  -- each request message, in order
      ``on_half_close()``      -- the client will send no more (the stream stays open)
      ``on_cancel()``          -- the client went away or the server is shutting down;
                                  release everything, do not send
    and calls ``send(response)`` (any number of times) and ``finish(error=None)``.
    The interceptors' ``ended(code)`` (:func:`open_stream`) runs at the first of
    ``finish`` and ``on_cancel``.
    """

    _ended = None

    def __init__(self, context):
        self.context = context
        self.on_message = _ignore
        self.on_half_close = _ignore0
        self._on_cancel = _ignore0
        self.closed = False

    @property
    def on_cancel(self):
        return self._on_cancel if self._ended is None else self._cancelled

    @on_cancel.setter
    def on_cancel(self, callback):
        self._on_cancel = callback

    def _cancelled(self):
        self._end(StatusCode.CANCELLED)
        self._on_cancel()

    def _end(self, code):
        ended = self._ended
        if ended is not None:
            self._ended = None
            ended(code)

    def bind(self, handler):
        """Route the three callbacks to ``handler``'s methods of the same names."""
        self.on_message = handler.on_message
        self.on_half_close = handler.on_half_close
        self.on_cancel = handler.on_cancel
        return handler

    def send(self, response):
        raise NotImplementedError

    def finish(self, error=None):
        """End the call: OK, or ``error`` (an EtcdError).  Only the first call counts."""
        if self.closed:
            return
        self.closed = True
        if self._ended is not None:
            self._end(status_code(error))
        self._finish(error)

    def _finish(self, error):
        """The transport's part of ``finish``: send the call's end."""
        raise NotImplementedError


def as_etcd_error(failure_or_exc):
    """What a handler's exception or Failure reaches the client as: EtcdErrors as they
    are, a cancelled Deferred as grpc-go's "context canceled", anything else (a bug) is
    logged and becomes Unknown."""
    exc = failure_or_exc.value if isinstance(failure_or_exc, Failure) else failure_or_exc
    if isinstance(exc, EtcdError):
        return exc
    if isinstance(exc, CancelledError):
        return EtcdError(StatusCode.CANCELLED, "context canceled")
    _log.failure("unexpected error in handler", failure_or_exc
                 if isinstance(failure_or_exc, Failure) else Failure(exc))
    return EtcdError(StatusCode.UNKNOWN, str(exc) or exc.__class__.__name__)


def _ignore(_msg):
    pass


def _ignore0():
    pass
