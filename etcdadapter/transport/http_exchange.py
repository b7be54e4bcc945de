"""One HTTP request/response, the same shape whether it came over HTTP/1.1 or HTTP/2.

The gateway (router and handlers) only sees this class, so the JSON face behaves the same
on both protocols.  Transports subclass it and implement ``_send_head``/``_send_body``.
"""

from urllib.parse import parse_qs, unquote


class HttpExchange(object):
    #: Headers every response carries (the router sets etcd's CORS headers here).
    default_headers = ()

    def __init__(self, method, uri, headers, context, body=b""):
        self.method = method
        self.uri = uri
        path, _, query = uri.partition("?")
        if "://" in path:
            # absolute-form (RFC 9112 3.2.2): route on the path part, as Go does
            rest = path.partition("://")[2]
            path = "/" + rest.partition("/")[2]
        self.path = unquote(path)       # Go routes on the decoded URL.Path
        self.query = parse_qs(query) if query else {}
        self.headers = headers          # lower-case name -> str
        self.context = context
        self.body = body
        self.body_too_large = False     # set by the transport (body not kept)
        self.on_close = None            # called once if the client goes away first
        self.started = False
        self.finished = False

    # -- for handlers ------------------------------------------------------------------
    def respond(self, status, headers, body):
        """Send a complete response."""
        headers = list(headers)
        headers.append(("Content-Length", str(len(body))))
        self.start(status, headers)
        self.finished = True
        self._send_body(body, True)

    def start(self, status, headers):
        """Begin a streamed response (e.g. the watch stream)."""
        if self.started:
            raise RuntimeError("response already started")
        self.started = True
        self._send_head(status, list(self.default_headers) + list(headers))

    def write(self, data):
        if not self.finished:
            self._send_body(data, False)

    def end(self):
        if not self.finished:
            self.finished = True
            self._send_body(b"", True)

    def pending_bytes(self):
        """Response bytes written but not yet sent (the watch hub's slow-consumer
        signal)."""
        return 0

    # -- for transports ------------------------------------------------------------------
    def _connection_lost(self):
        if self.finished:
            return
        self.finished = True
        callback, self.on_close = self.on_close, None
        if callback is not None:
            callback()

    def _send_head(self, status, headers):
        raise NotImplementedError

    def _send_body(self, data, end):
        raise NotImplementedError
