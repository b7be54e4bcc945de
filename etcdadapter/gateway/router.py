"""Path -> handler dispatch for HTTP exchanges (HTTP/1.1 and HTTP/2 alike).

etcd's gateway rewrites a leading ``/v3beta/`` to ``/v3/`` before routing; so do we.
Unknown paths get a JSON 404 and a known path with the wrong method a JSON 405, never a
5xx (APISIX marks an endpoint unhealthy for a while after a 5xx).
"""

import json

from twisted.logger import Logger

log = Logger()

JSON = ("Content-Type", "application/json")

# etcd's client handler with its default --cors "*": on every response, and OPTIONS on
# any path answers 200 with them (browser tools preflight their POSTs).
CORS_HEADERS = (("Access-Control-Allow-Headers", "accept, content-type, authorization"),
                ("Access-Control-Allow-Methods", "POST, GET, OPTIONS, PUT, DELETE"),
                ("Access-Control-Allow-Origin", "*"))


def json_body(obj):
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


class HttpRouter(object):
    #: Request bodies above this are not kept; the request is answered 413 (the server
    #: sets it from --max-request-bytes: JSON with base64 is ~4/3 of the message).
    max_body_bytes = 64 << 20

    def __init__(self):
        self._routes = {}   # path -> {METHOD: handler(exchange)}

    def add(self, path, handler, methods=("POST",)):
        table = self._routes.setdefault(path, {})
        for m in methods:
            table[m] = handler

    def dispatch(self, exchange):
        exchange.default_headers = CORS_HEADERS
        if exchange.method == "OPTIONS":
            exchange.respond(200, [], b"")
            return
        path = exchange.path
        if path.startswith("/v3beta/"):
            path = "/v3/" + path[len("/v3beta/"):]
        table = self._routes.get(path)
        if table is None:
            exchange.respond(404, [JSON], json_body(
                {"error": "Not Found", "code": 5, "message": "Not Found"}))
            return
        handler = table.get(exchange.method)
        if handler is not None and exchange.body_too_large:
            # Go's http.MaxBytesReader error; a 4xx, the server is fine.
            message = "http: request body too large"
            exchange.respond(413, [JSON], json_body(
                {"error": message, "code": 8, "message": message}))
            return
        if handler is None:
            exchange.respond(405, [JSON, ("Allow", ", ".join(sorted(table)))], json_body(
                {"error": "Method Not Allowed", "code": 12,
                 "message": "Method Not Allowed"}))
            return
        try:
            handler(exchange)
        except Exception:
            log.failure("error handling {method} {path}", method=exchange.method, path=path)
            if not exchange.started:
                exchange.respond(500, [JSON], json_body(
                    {"error": "internal error", "code": 13, "message": "internal error"}))
