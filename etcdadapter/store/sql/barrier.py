"""The read barrier: where is the database's log now?  (etcd's ReadIndex.)

A linearizable read must see every write acknowledged before it arrived, by any adapter.
The replica may lag the database, so a read first asks the database for its current
revision (one cheap query of the counter row), waits until the replica has applied that
revision, and then answers from memory.

One query serves every read that arrived while the previous query was in flight, as etcd
batches ReadIndex requests: a read may only use a query that started after it arrived (an
older answer could predate a write acknowledged before the read), so the reads that
arrive during a query wait for the next one, which starts as soon as that query ends.
A query starts at the end of the reactor's turn, so the reads of one turn (the requests
of one socket read) share it too.  Under load the database sees one query per round
trip, however many reads there are.
"""

from twisted.internet import defer
from twisted.python.failure import Failure


class ReadBarrier(object):
    def __init__(self, query, clock):
        """``query()`` -> Deferred[(revision, compact_revision)] of the database now."""
        self._query = query
        self._clock = clock
        self._in_flight = False
        self._next = []           # Deferreds of the reads waiting for the next query
        #: How many queries ran, and how many reads they served (for /metrics).
        self.queries = 0
        self.reads = 0

    def wait(self):
        """Deferred[(revision, compact_revision)] read after this call."""
        d = defer.Deferred()
        self._next.append(d)
        if not self._in_flight:
            self._in_flight = True
            self._clock.callLater(0, self._start)
        return d

    def _start(self):
        waiters, self._next = self._next, []
        self._in_flight = True
        self.queries += 1
        self.reads += len(waiters)
        q = defer.maybeDeferred(self._query)
        q.addBoth(self._done, waiters)

    def _done(self, result, waiters):
        self._in_flight = False
        if self._next:
            self._in_flight = True
            self._clock.callLater(0, self._start)
        failed = isinstance(result, Failure)
        for d in waiters:
            if failed:
                d.errback(result)
            else:
                d.callback(result)
