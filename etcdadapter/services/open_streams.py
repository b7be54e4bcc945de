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

_log = Logger()


class OpenStreams(object):
    def __init__(self):
        self._open = set()

    def __len__(self):
        return len(self._open)

    def track(self, method):
        """The same method, its streaming calls counted while they are open (unary
        methods are returned unchanged)."""
        if not method.streaming:
            return method
        open_calls = self._open
        handler = method.handler

        def tracked(stream):
            open_calls.add(stream)
            finish = stream.finish

            def tracked_finish(error=None):
                open_calls.discard(stream)
                return finish(error)
            stream.finish = tracked_finish
            result = handler(stream)
            on_cancel = stream.on_cancel     # set by the handler (stream.bind)

            def tracked_cancel():
                open_calls.discard(stream)
                return on_cancel()
            stream.on_cancel = tracked_cancel
            return result
        return type(method)(method.path, method.request_type, method.response_type,
                            method.kind, tracked, method.http_paths)

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
