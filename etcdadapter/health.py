"""``GET /health``: does the store answer a read, within a bounded time?

Like etcd 3.5's check (a keys-only Range of one key): ``(True, "")`` when the store
answers, ``(False, "RANGE ERROR:<error>")`` when it fails (a SQL store whose database
cannot be reached answers at once with "etcdserver: no leader") or has not answered
within ``timeout`` seconds (a database that accepts connections but never replies):
"RANGE ERROR:etcdserver: request timed out".

At most one probe runs at a time: callers arriving while one is in flight share its
answer, each still bounded by its own timeout, so a probe stuck on a dead database
never piles more work onto the store's thread pool.  The next call after a probe ends
starts a new one, so health comes back as soon as the store does.
"""

from twisted.internet import defer

from etcdadapter import errors
from etcdadapter.pb.etcdserverpb import rpc_pb2 as rpc

TIMEOUT = 1.0           # seconds (etcd 3.4's health check allows its QGET one second)

_PROBE = rpc.RangeRequest(key=b"\0", range_end=b"\0", keys_only=True, limit=1)


class HealthCheck(object):
    def __init__(self, store, clock, timeout=TIMEOUT):
        self.store = store
        self.clock = clock
        self.timeout = timeout
        self._waiting = None         # callers' Deferreds while a probe is in flight

    def __call__(self):
        """Deferred[(healthy, reason)]; never fails, fires within ``timeout``."""
        d = defer.Deferred()
        entry = (d, self.clock.callLater(self.timeout, self._timed_out, d))
        if self._waiting is not None:
            self._waiting.append(entry)
            return d
        self._waiting = [entry]
        probe = defer.maybeDeferred(self.store.range, _PROBE)
        probe.addCallbacks(lambda _: (True, ""), lambda f: (False, _reason(f.value)))
        probe.addCallback(self._probed)
        return d

    def _probed(self, result):
        waiting, self._waiting = self._waiting, None
        for d, timer in waiting:
            if timer.active():
                timer.cancel()
            self._answer(d, result)

    def _timed_out(self, d):
        if self._waiting is not None:      # forget it: a stuck probe keeps no backlog
            self._waiting = [e for e in self._waiting if e[0] is not d]
        self._answer(d, (False, _reason(errors.ErrTimeout())))

    @staticmethod
    def _answer(d, result):
        if not d.called:
            d.callback(result)


def _reason(error):
    message = error.message if isinstance(error, errors.EtcdError) else str(error)
    return "RANGE ERROR:%s" % (message or error.__class__.__name__)
