"""The SQL stores' change feed: every committed revision, in order, exactly once, to the
subscribers (the watch hub), on the reactor thread.

Two sources, merged by revision:

* this process's own writes: a write transaction returns its revision and events, and
  :meth:`ChangeFeed.committed` delivers them at once when they are the next revision
  (the common single-instance case costs no query at all);
* a polling loop that tails the log (``revision > last ORDER BY revision, sub`` on the
  primary key, whole revisions at a time) -- at once when a local commit left a hole
  (another instance wrote in between, or two local commits came back out of order), then
  every ``interval`` seconds for other instances' writes.

Whatever arrives is delivered only if it is the revision after the last delivered one;
changes already delivered are dropped, later ones wait (local ones in a small dict; polled
ones are simply polled again).  Revisions are committed in order under the counter lock, so
a snapshot that holds revision N holds every revision below N: polling never sees gaps,
except where a compaction by another instance removed rows the poller had not read yet
(then it skips ahead, logs an error and tells the subscribers which revisions they
lost through their ``on_lost`` callback; see :meth:`ChangeFeed._deliver_polled`).

A write's Deferred fires only after its revision was delivered, so by the time a client
sees the response every watcher on this process has been fed that revision; and
``store.revision`` (through ``on_revision``) never runs ahead of what the log holds.  The
number of queries does not depend on the number of watchers: there is one feed per store.
"""

from twisted.internet import defer
from twisted.logger import Logger

from etcdadapter.logs import background_failure
from etcdadapter.store.base import Change, Subscribers

log = Logger()

FAILED_RETRY = 0.5       # seconds between polls while the database fails


class ChangeFeed(object):
    def __init__(self, reactor, poll, interval, on_revision):
        """``poll(after)`` -> Deferred[(changes, revision, compact_revision, more)] (see
        views.poll_changes); ``on_revision(revision, compact_revision)`` is told what the
        feed has seen (compact_revision None when unknown)."""
        self.reactor = reactor
        self._poll = poll
        self.interval = interval
        self._on_revision = on_revision
        self.delivered = None            # the last revision handed to subscribers
        self._subscribers = Subscribers()
        self._local = {}                 # revision -> Change committed here, not yet due
        self._waiters = []               # (revision, Deferred) waiting for delivery
        self._polling = None             # the Deferred of the poll in flight
        self._again = False              # poll again as soon as the current one ends
        self._timer = None
        self._running = False
        self._failing = False            # the last poll failed (log once, poll slower)

    # -- lifecycle ----------------------------------------------------------------------
    def start(self, revision):
        self.delivered = revision
        self._running = True
        self._schedule(self.interval)

    def stop(self):
        """Stop polling; Deferred firing when a poll in flight is done.  Writers still
        waiting for delivery are released."""
        self._running = False
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._release_all()
        d = self._polling
        if d is None:
            return defer.succeed(None)
        done = defer.Deferred()
        d.addBoth(lambda r: done.callback(None) or r)
        return done

    # -- subscribers ---------------------------------------------------------------------
    def subscribe(self, callback, on_lost=None):
        """``callback(change)`` for every delivered revision; ``on_lost(first, last,
        compact_revision)`` (optional) when revisions first..last can never be delivered:
        another instance compacted them away before this feed read them.  It is called
        before the first change after them is delivered, so that a subscriber can take
        the watchers that needed them out of the live path (etcd cancels such watchers
        as compacted)."""
        return self._subscribers.add(callback, on_lost)

    def _deliver(self, change):
        self.delivered = change.revision
        self._on_revision(change.revision, None)
        self._subscribers.deliver(change)

    # -- local writes ----------------------------------------------------------------------
    def committed(self, revision, events):
        """This process committed ``revision``: Deferred firing once it was delivered."""
        self._on_revision(revision, None)
        if revision <= self.delivered:
            return defer.succeed(None)
        self._local[revision] = Change(revision, tuple(events))
        self._deliver_local()
        if revision <= self.delivered:
            return defer.succeed(None)
        self.poll_now()           # something committed before it has not been seen yet
        return self.wait(revision)

    def _deliver_local(self):
        local = self._local
        while local:
            change = local.pop(self.delivered + 1, None)
            if change is None:
                break
            self._deliver(change)
        if local:
            for rev in [r for r in local if r <= self.delivered]:
                del local[rev]
        self._release()

    def wait(self, revision):
        """Deferred firing once ``revision`` was delivered (or the feed stopped)."""
        if revision <= self.delivered or not self._running:
            return defer.succeed(None)
        d = defer.Deferred()
        self._waiters.append((revision, d))
        return d

    def _release(self):
        if not self._waiters:
            return
        due = [w for w in self._waiters if w[0] <= self.delivered]
        if due:
            self._waiters = [w for w in self._waiters if w[0] > self.delivered]
            for _rev, d in due:
                d.callback(None)

    def _release_all(self):
        waiters, self._waiters = self._waiters, []
        for _rev, d in waiters:
            d.callback(None)

    # -- polling ---------------------------------------------------------------------------
    def poll_now(self):
        if not self._running:
            return
        if self._polling is not None:
            self._again = True
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._start_poll()

    def _schedule(self, delay):
        if self._running and self._timer is None and self._polling is None:
            self._timer = self.reactor.callLater(delay, self._tick)

    def _tick(self):
        self._timer = None
        self._start_poll()

    def _start_poll(self):
        if not self._running or self._polling is not None:
            return
        self._again = False
        d = self._polling = defer.maybeDeferred(self._poll, self.delivered)
        d.addCallbacks(self._polled, self._poll_failed)
        d.addBoth(self._poll_done)

    def _polled(self, result):
        if self._failing:
            self._failing = False
            log.info("change feed polls again")
        changes, revision, compact, more = result
        self._on_revision(None, compact)
        self._deliver_polled(changes, compact)
        self._deliver_local()
        if more or revision > self.delivered:
            self._again = True

    def _deliver_polled(self, changes, compact):
        for change in changes:
            rev = change.revision
            if rev <= self.delivered:
                continue
            if rev != self.delivered + 1:
                # Only a compaction removes whole revisions, and only below its
                # revision: another instance compacted past what this feed had read.
                # Those watchers have lost events; etcd would cancel them as compacted.
                log.error("change feed: revisions {a}..{b} were compacted (to {c}) by "
                          "another instance before this one read them", a=self.delivered + 1,
                          b=rev - 1, c=compact)
                self._lost(self.delivered + 1, rev - 1, compact)
            self._deliver(change)

    def _lost(self, first, last, compact):
        for entry in self._subscribers:
            if entry[1] is None:
                log.error("change feed: a subscriber missed revisions {a}..{b}", a=first,
                          b=last)
                continue
            try:
                entry[1](first, last, compact)
            except Exception:
                log.failure("store subscriber failed on lost revisions {a}..{b}",
                            a=first, b=last)

    def _poll_failed(self, failure):
        if not self._failing:
            background_failure(log, "change feed poll failed; retrying every {s}s until "
                               "it works", failure, s=max(self.interval, FAILED_RETRY))
        self._failing = True
        # The writes themselves committed: do not hold their responses hostage.
        self._release_all()
        self._again = False

    def _poll_done(self, _):
        self._polling = None
        if not self._running:
            return
        if self._again:
            self._again = False
            self._timer = self.reactor.callLater(0, self._tick)
        else:
            self._schedule(max(self.interval, FAILED_RETRY) if self._failing
                           else self.interval)
