"""Slow-request logging: a unary call answered after ``--slow-request-threshold`` is
logged (event ``slow-request``), like etcd's "request took too long" warnings.  An
interceptor of the method registry, so it sees every call whichever face carries it.
"""

from twisted.logger import Logger

from etcdadapter.errors import CODE_NAMES
from etcdadapter.logs import address_text
from etcdadapter.services.rpc import Interceptor

log = Logger()

SLOW_REQUEST = 1.0      # seconds; a unary call taking longer is logged (slow-request)


class SlowRequests(Interceptor):
    def __init__(self, threshold=SLOW_REQUEST):
        self.threshold = threshold

    def unary(self, method):
        threshold = self.threshold

        def end(request, context, elapsed, code):
            if elapsed >= threshold:
                _log_slow(method, request, context, elapsed, code)
        return None, end


def _log_slow(method, request, context, elapsed, code):
    key = getattr(request, "key", None)
    log.warn("slow request: {method} took {duration:.3f}s ({code}, peer {peer})",
             event="slow-request", method=method.path, duration=round(elapsed, 6),
             code=CODE_NAMES.get(code, str(code)), peer=address_text(context.peer),
             transport=context.transport,
             key=key[:128] if isinstance(key, bytes) and key else None)
