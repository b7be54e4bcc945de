"""Every streaming call in progress (Watch, LeaseKeepAlive), whichever face carries it.

Shutdown ends them all at once with a status clients retry elsewhere, instead of letting
long-lived watches hang until the drain timeout cuts the connections: gRPC calls get
trailers (Unavailable "etcdserver: server stopped"), HTTP/JSON streams their last line
(``{"error":{"grpc_code":14,"http_code":503,...}}``, the shape etcd's gateway writes when
its stream breaks) and the end of the chunked body.  Etcd clients (Go clientv3, APISIX's
lua-resty-etcd) then reconnect -- to another endpoint if they have one -- and resume
their watches from the last revision they saw + 1.
"""

from twisted.logger import Logger

from etcdadapter.services.rpc import Interceptor

_log = Logger()


class OpenStreams(Interceptor):
    """The streaming calls open now: an interceptor of the method registry."""

    def __init__(self):
        self._open = set()

    def __len__(self):
        return len(self._open)

    def stream(self, method):
        return self._opened

    def _opened(self, stream):
        self._open.add(stream)
        return lambda _code: self._open.discard(stream)

    def end_all(self, error):
        """Finish every open call with ``error``, then let its handler release what it
        holds (watchers, keep-alive state).  Returns how many were ended."""
        calls, self._open = list(self._open), set()
        for stream in calls:
            try:
                stream.finish(error)
                stream.on_cancel()
            except Exception:
                _log.failure("ending a stream at shutdown failed")
        return len(calls)
