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

The reads a query served are handed over together, in arrival order, to ``serve`` (the
store answers them all in one pass), not one Deferred chain each: per read the barrier
costs a list append.
"""

from twisted.python.failure import Failure


class ReadBarrier(object):
    def __init__(self, query, clock, serve, fail):
        """``query()`` -> Deferred[(revision, compact_revision)] of the database now;
        ``serve(result, waiters)`` with its answer and the waiters (what :meth:`wait`
        was given) that arrived before it started; ``fail(failure, waiters)`` if it
        failed."""
        self._query = query
        self._clock = clock
        self._serve = serve
        self._fail = fail
        self._in_flight = False
        self._next = []           # the waiters for the next query
        #: How many queries ran, and how many reads they served (for /metrics).
        self.queries = 0
        self.reads = 0

    def wait(self, waiter):
        """Hand ``waiter`` to ``serve`` (or ``fail``) with a query started after now."""
        self._next.append(waiter)
        if not self._in_flight:
            self._in_flight = True
            self._clock.callLater(0, self._start)

    def _start(self):
        waiters, self._next = self._next, []
        self.queries += 1
        self.reads += len(waiters)
        try:
            q = self._query()
        except Exception:
            self._done(Failure(), waiters)
            return
        q.addBoth(self._done, waiters)

    def _done(self, result, waiters):
        self._in_flight = False
        if self._next:
            self._in_flight = True
            self._clock.callLater(0, self._start)
        if isinstance(result, Failure):
            self._fail(result, waiters)
        else:
            self._serve(result, waiters)
