"""HTTP/1.1 via twisted.web (keep-alive, pipelining, chunked bodies come with it).

twisted.web parses; every request becomes an :class:`HttpExchange` for the same router the
HTTP/2 side uses.

Limits: twisted.web's own timeout is off (it would cut a quiet watch); the connection's
:class:`~etcdadapter.transport.deadlines.Deadlines` follow the request cycle instead
(head, body, busy, idle).  twisted.web answers pipelined requests one at a time, but
replays every request already read as soon as the previous one is done, however full
the socket is; so a request waits for dispatch while the connection's unsent output is
over its budget, until the transport drains (``resumeProducing``).
"""

import re

from twisted.web import http, resource, server

from etcdadapter.security.peer import peer_identity
from etcdadapter.services.rpc import CallContext
from etcdadapter.transport import deadlines as phases
from etcdadapter.transport.http_exchange import HttpExchange
from etcdadapter.transport.output_budget import unsent_bytes


class TwistedWebExchange(HttpExchange):
    def __init__(self, request, peer_identity=None):
        # A repeated header: the first wins, as Go's Header.Get (etcd's gateway reads the
        # first Authorization).
        headers = {k.decode("latin-1").lower(): v[0].decode("latin-1")
                   for k, v in request.requestHeaders.getAllRawHeaders()}
        HttpExchange.__init__(
            self, method=request.method.decode("latin-1"),
            uri=request.uri.decode("latin-1"), headers=headers,
            context=CallContext(metadata={}, peer=request.getClientAddress(),
                                transport="http", peer_identity=peer_identity),
            body=request.content.read() if request.content is not None else b"")
        self.request = request
        request.notifyFinish().addErrback(lambda _: self._connection_lost())

    def pending_bytes(self):
        return unsent_bytes(self.request.channel.transport)

    def _send_head(self, status, headers):
        req = self.request
        req.setResponseCode(status)
        for name, value in headers:
            req.responseHeaders.setRawHeaders(name, [value])

    def _send_body(self, data, end):
        req = self.request
        if req._disconnected:
            return
        if data:
            req.write(data)
        if end:
            req.finish()


def _peer_identity(request):
    """The TLS client certificate's identity, computed once per connection."""
    channel = request.channel
    try:
        return channel.etcd_peer_identity
    except AttributeError:
        ident = channel.etcd_peer_identity = peer_identity(channel.transport)
        return ident


class _RouterResource(resource.Resource):
    isLeaf = True

    def __init__(self, router):
        resource.Resource.__init__(self)
        self.router = router

    def render(self, request):
        if request.clientproto == b"HTTP/1.1" and not request.requestHeaders.hasHeader(b"host"):
            # Go's net/http (so etcd) refuses these before any handler runs.
            reason = b"Bad Request: missing required Host header"
            request.setResponseCode(400, reason)
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            request.setHeader(b"Connection", b"close")
            return b"400 " + reason
        # etcd (Go net/http) sends no Server header.
        request.responseHeaders.removeHeader(b"server")
        exchange = TwistedWebExchange(request, peer_identity=_peer_identity(request))
        exchange.body_too_large = request.body_too_large
        channel = request.channel
        if channel.output_over_budget():
            channel.hold(lambda: self.router.dispatch(exchange))
        else:
            self.router.dispatch(exchange)
        return server.NOT_DONE_YET


class _Request(server.Request):
    # Handlers always set Content-Type themselves; twisted.web's default (text/html) would
    # otherwise appear on responses that have none.
    defaultContentType = None
    body_too_large = False
    _received = 0

    def handleContentChunk(self, data):
        # Bodies above the router's limit are read (the connection stays in sync) but
        # not kept.
        self._received += len(data)
        if self._received > self.channel.site.router.max_body_bytes:
            if not self.body_too_large:
                self.body_too_large = True
                self.content.seek(0)
                self.content.truncate()
            return
        server.Request.handleContentChunk(self, data)


_TOKENS = re.compile(rb"[\s,]+")


class _Channel(http.HTTPChannel):
    """twisted.web's channel, used directly (our protocol already chose HTTP/1.x).

    ``Connection`` is a comma-separated token list (RFC 9110 7.6.1); twisted.web splits
    it on spaces only, so APISIX's CLI ``Connection: close, TE`` kept the connection open
    where etcd closes it."""

    deadlines = None        # set by EtcdProtocol, with budget and stats
    budget = None
    stats = None
    _held = None            # the dispatch of a request waiting for the output to drain

    # -- deadlines ----------------------------------------------------------------------
    def dataReceived(self, data):
        d = self.deadlines
        if d is not None:
            if d.phase == phases.IDLE:
                d.head()            # the next request begins
            elif d.phase == phases.BODY:
                d.body()            # the body is still coming
        http.HTTPChannel.dataReceived(self, data)

    def allHeadersReceived(self):
        http.HTTPChannel.allHeadersReceived(self)
        if self.deadlines is not None:
            self.deadlines.body()

    def allContentReceived(self):
        if self.deadlines is not None:
            self.deadlines.busy()
        http.HTTPChannel.allContentReceived(self)

    def requestDone(self, request):
        if self.deadlines is not None:
            if self._dataBuffer and self.persistent:
                self.deadlines.head()   # the next request has begun already
            else:
                self.deadlines.idle()
        http.HTTPChannel.requestDone(self, request)

    # -- output budget --------------------------------------------------------------
    def output_over_budget(self):
        return self.budget is not None and self.budget.over()

    def hold(self, dispatch):
        self._held = dispatch
        if self.stats is not None:
            self.stats.paused += 1

    def resumeProducing(self):
        # The transport's write buffer is empty.
        http.HTTPChannel.resumeProducing(self)
        held, self._held = self._held, None
        if held is not None:
            held()

    def checkPersistence(self, request, version):
        values = request.requestHeaders.getRawHeaders(b"Connection") or []
        tokens = set(t.lower() for v in values for t in _TOKENS.split(v) if t)
        if version == b"HTTP/1.1" and b"close" not in tokens:
            return True
        if version == b"HTTP/1.1":
            request.responseHeaders.setRawHeaders(b"Connection", [b"close"])
        return False


def make_site(router):
    site = server.Site(_RouterResource(router))
    site.protocol = _Channel
    site.router = router
    site.requestFactory = _Request
    site.displayTracebacks = False
    site.noisy = False
    site.timeOut = None     # the connection's Deadlines do it (see above)
    return site
