"""The physical side of a SQL compaction: deleting, in small batches, the rows that a
compaction made garbage.

A compaction first records its revision C in etcd_meta (one short write transaction:
from then on every instance answers reads and watches below C with ErrCompacted, and reads
at or above C do not need the old rows).  What remains is garbage collection, done here
in batches of about ``batch`` log rows, each one short write transaction that takes the
revision-counter lock like every writer -- so writers wait for one batch at most, never for
the whole purge:

* the log rows older than a newer row of the same key at or below C (superseded);
* the tombstones below C (a tombstone AT C stays: it is that revision's watch event),
  with the rows their revision wrote for the same key before them;
* the etcd_current rows of keys that are deleted as of a revision below C.

Only the rows written since the previous purge can make anything garbage, so a batch
walks the log upwards from where the previous purge stopped (``etcd_compaction``, see
:mod:`.schema`), whole revisions at a time, and moves that cursor in the same
transaction as its deletions.  So a purge interrupted by a crash or a stop resumes where
it stopped; a purge running on several instances at once shares the one cursor (the
counter lock orders their batches); and a compaction recorded while a purge runs simply
extends it (each batch reads the current C).

Each row a batch walks names the row it superseded: its (prev_revision, prev_sub) is the
key's version just before it (for a tombstone, the version it deleted).  So superseded
rows go by primary key, however many versions a key has.  The one row nothing names --
the put of a txn that puts and then deletes one key -- goes with its tombstone.
"""

import collections
import time

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from etcdadapter.store.base import Purged
from etcdadapter.store.sql.schema import COMPACTION, CURRENT, LOG
from etcdadapter.store.sql.replica import read_meta

log = Logger()

BATCH = 1000          # log rows per batch (whole revisions: a bigger one is taken whole)

#: What one batch did: the compact revision it worked for, log rows and keys deleted,
#: and whether the purge is complete.
Batch = collections.namedtuple("Batch", "compact rows keys done")

_STATE = "SELECT purged_revision, purge_cursor FROM " + COMPACTION + " WHERE id = 1"
_BOUND = ("SELECT revision FROM " + LOG + " WHERE revision >= %s "
          "ORDER BY revision, sub LIMIT 1 OFFSET %s")


def purge_batch(tx, dialect, batch=BATCH):
    """One batch, inside a write transaction (it locks the revision counter first)."""
    d = dialect
    _revision, compact = read_meta(tx, d.counter_lock)
    purged, cursor = tx.one(_STATE)
    if purged >= compact:
        return Batch(compact, 0, 0, True)
    lo = max(purged, cursor)
    # The revision holding the batch-th row from lo: the batch ends just below it.
    row = tx.one(_BOUND, (lo, batch))
    if row is None or row[0] > compact:
        hi = compact
    elif row[0] == lo:
        hi = lo                      # one revision with more rows than a batch
    else:
        hi = row[0] - 1
    done = hi >= compact
    keys = tx.run(*d.purge_dead_keys(LOG, CURRENT, lo, hi, compact))
    rows = tx.run(*d.purge_superseded(LOG, lo, hi))
    rows += tx.run(*d.purge_tombstones(LOG, lo, hi, compact))
    if done:
        # The rows AT the compact revision stay the start of the next purge: a later
        # compaction may make some of them garbage.
        tx.run("UPDATE " + COMPACTION + " SET purged_revision = %s, purge_cursor = %s "
               "WHERE id = 1", (compact, compact))
    else:
        tx.run("UPDATE " + COMPACTION + " SET purge_cursor = %s WHERE id = 1", (hi + 1,))
    return Batch(compact, max(rows, 0), max(keys, 0), done)


class Purger(object):
    """Runs purge passes, one at a time per process, each batch an exclusive job of the
    store's write batches (:meth:`.group_commit.GroupCommitter.exclusive`): write requests
    queued meanwhile go first.

    :meth:`request` after recording a compaction: the Deferred fires with a
    :class:`~etcdadapter.store.base.Purged` once a pass that started after the request
    has finished (requests made while a pass runs share the next one); ``on_done`` gets
    it too, on the reactor thread."""

    def __init__(self, committer, dialect, batch=BATCH, on_done=None):
        self.committer = committer
        self.dialect = dialect
        self.batch = batch
        self.on_done = on_done
        #: Set by the store when it stops: the running pass ends after its batch (the
        #: cursor is in the database: the next pass resumes there).
        self.stopping = False
        self._running = False
        self._next = []              # Deferreds waiting for the next pass

    def request(self):
        d = defer.Deferred()
        self._next.append(d)
        if not self._running:
            self._start()
        return d

    def _start(self):
        waiters, self._next = self._next, []
        self._running = True
        started = time.monotonic()
        d = self._work()
        d.addBoth(self._finished, waiters, started)

    @defer.inlineCallbacks
    def _work(self):
        """Batches until the purge is complete (or the store stops)."""
        d, size = self.dialect, self.batch
        rows = keys = batches = 0
        compact = None
        while not self.stopping:
            b = yield self.committer.exclusive(lambda tx: purge_batch(tx, d, size))
            batches += 1
            rows += b.rows
            keys += b.keys
            compact = b.compact
            if b.done:
                break
        return compact, rows, keys, batches

    def _finished(self, result, waiters, started):
        self._running = False
        seconds = time.monotonic() - started
        if isinstance(result, Failure):
            log.warn("compaction: deleting old rows failed ({err}); the next compaction "
                     "or restart resumes it", err=result.getErrorMessage())
        else:
            compact, rows, keys, batches = result
            out = None
            if compact is not None:          # None: stopped before the first batch
                out = Purged(compact, rows, keys, seconds)
                if rows or keys:
                    log.info("compaction to revision {revision}: deleted {rows} log rows "
                             "and {keys} keys in {batches} batches, {seconds:.3f}s",
                             revision=compact, rows=rows, keys=keys, batches=batches,
                             seconds=seconds)
                if self.on_done is not None:
                    self.on_done(out)
            result = out
        for w in waiters:
            if isinstance(result, Failure):
                w.errback(result)
            else:
                w.callback(result)
        if self._next:
            if self.stopping:
                waiting, self._next = self._next, []
                for w in waiting:
                    w.callback(None)
            else:
                self._start()
