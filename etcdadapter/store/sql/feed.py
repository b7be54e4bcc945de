"""The SQL stores' change feed: it keeps this adapter's replica (a
:class:`~etcdadapter.store.keyspace.Keyspace`) equal to the database's log, revision by
revision, and hands every revision, in order, exactly once, to the subscribers (the watch
hub), on the reactor thread.

Revisions reach it three ways, all merged by revision number:

* this process's write batches (:mod:`.group_commit`): committed under the counter lock,
  so they are always the next revisions; :meth:`ChangeFeed.committed` applies them at once;
* the revisions other adapters committed, read by a batch inside its transaction before
  it writes (:meth:`ChangeFeed.caught_up`);
* a polling loop that tails the log (``revision > last ORDER BY revision, sub``, whole
  revisions at a time) every ``interval`` seconds, at once when a read waits for a
  revision the replica does not have yet, and at once when PostgreSQL notifies a commit.

Whatever arrives is applied only if it is the revision after the last applied one; what is
already applied is dropped.  A snapshot that holds revision N holds every revision below
it, so polling never sees gaps -- except where the purge of a compaction walked past the
replica's revision while this adapter was not looking (paused, cut off): then rows it
needs may be gone, and the feed loads the replica afresh (:meth:`ChangeFeed._reload`),
tells the subscribers which revisions they lost through their ``on_lost`` callback, and
hands them the revisions the new replica holds beyond what they had.

A compaction another adapter recorded is applied to the replica once the replica has
reached that revision (reads below it fail with ErrCompacted from then on).  The number of
queries does not depend on the number of watchers: there is one feed per store.
"""

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from etcdadapter import errors
from etcdadapter.logs import background_failure
from etcdadapter.store.base import Subscribers
from etcdadapter.store.sql.replica import subs_of

log = Logger()

FAILED_RETRY = 0.5       # seconds between polls while the database fails


class ChangeFeed(object):
    def __init__(self, reactor, poll, interval, reload, probe=None):
        """``poll(after)`` -> Deferred[(revisions, revision, compact_revision, more,
        behind)] (see :func:`.replica.poll`); ``reload()`` -> Deferred[Keyspace], a fresh
        load of the database; ``probe()`` (optional) -> Deferred[(revision,
        compact_revision) or None], a cheap look at the database before a timed poll."""
        self.reactor = reactor
        self._poll = poll
        self._probe = probe
        self._reload_fn = reload
        self.interval = interval
        #: The replica; replaced by a fresh load when the feed fell behind a purge.
        self.keyspace = None
        #: The highest revision the database was seen at (polls, barriers, batches).
        self.seen = 0
        self._subscribers = Subscribers()
        self._pending_compact = -1       # a compaction to apply once the replica is there
        self._waiters = []               # (revision, Deferred) waiting for the replica
        self._polling = None             # the Deferred of the poll in flight
        self._reloading = None           # the Deferred of a reload in flight
        self._reload_waiters = []
        #: How many times the replica was loaded afresh.
        self.reloads = 0
        self._again = False              # poll again as soon as the current one ends
        self._timer = None
        self._running = False
        self._failing = False            # the last poll failed (log once, poll slower)

    @property
    def delivered(self):
        """The last revision applied to the replica and handed to the subscribers."""
        return self.keyspace.revision

    # -- lifecycle ----------------------------------------------------------------------
    def start(self, keyspace):
        self.keyspace = keyspace
        self.seen = max(self.seen, keyspace.revision)
        self._running = True
        self._schedule(self.interval)

    def stop(self):
        """Stop polling; Deferred firing when a poll or reload in flight is done.  Reads
        still waiting for the replica fail with ErrStopped."""
        self._running = False
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._fail_waiters(errors.ErrStopped())
        pending = [d for d in (self._polling, self._reloading) if d is not None]
        if not pending:
            return defer.succeed(None)
        done = defer.Deferred()
        d = defer.DeferredList(pending, consumeErrors=False)
        d.addBoth(lambda _: done.callback(None))
        return done

    # -- subscribers ---------------------------------------------------------------------
    def subscribe(self, callback, on_lost=None):
        """``callback(change)`` for every applied revision; ``on_lost(first, last,
        compact_revision)`` (optional) when revisions first..last can never be delivered:
        another adapter's compaction purged them before this feed read them.  It is
        called before the first change after them is delivered, so that a subscriber can
        take the watchers that needed them out of the live path (etcd cancels such
        watchers as compacted)."""
        return self._subscribers.add(callback, on_lost)

    def _deliver(self, change, subs=None):
        ks = self.keyspace
        ks.apply(change, subs)
        if change.revision > self.seen:
            self.seen = change.revision
        if self._pending_compact > ks.compact_revision and \
                ks.revision >= self._pending_compact:
            ks.compact(self._pending_compact)
        self._subscribers.deliver(change)

    def _deliver_rows(self, revisions):
        for rev, rows in revisions:
            if rev <= self.delivered:
                continue
            if rev != self.delivered + 1:
                # Revisions are committed in order under the counter lock, and rows
                # above the purge's reach are never deleted: a gap is a bug.
                raise AssertionError("change feed: revision %d after %d"
                                     % (rev, self.delivered))
            self._deliver(self.keyspace.complete(rev, rows), subs_of(rows))
        self._release()

    # -- revisions from this process and its write batches ------------------------------
    def committed(self, changes):
        """This process committed ``changes`` (complete :class:`Change` objects, in
        order, the next revisions of the replica)."""
        for change in changes:
            if change.revision <= self.delivered:
                continue                       # a poll read them first
            if change.revision != self.delivered + 1:
                raise AssertionError("change feed: local revision %d after %d"
                                     % (change.revision, self.delivered))
            self._deliver(change)
        self._release()

    def caught_up(self, revisions):
        """Revisions other adapters committed, read under the counter lock (as
        :func:`.replica.read_revisions` gives them)."""
        self._deliver_rows(revisions)

    def learn(self, revision, compact):
        """The database was seen at ``revision``, compacted to ``compact``."""
        if revision > self.seen:
            self.seen = revision
        ks = self.keyspace
        if compact > ks.compact_revision:
            if ks.revision >= compact:
                ks.compact(compact)
            elif compact > self._pending_compact:
                self._pending_compact = compact

    # -- waiting for the replica --------------------------------------------------------------
    def wait(self, revision):
        """Deferred firing once the replica holds ``revision`` (polling at once if it does
        not yet); fails with the database's error while polls fail, ErrStopped at stop."""
        if revision <= self.delivered:
            return defer.succeed(None)
        if not self._running:
            return defer.fail(errors.ErrStopped())
        d = defer.Deferred()
        self._waiters.append((revision, d))
        self.poll_now()
        return d

    def _release(self):
        if not self._waiters:
            return
        delivered = self.delivered
        due = [w for w in self._waiters if w[0] <= delivered]
        if due:
            self._waiters = [w for w in self._waiters if w[0] > delivered]
            for _rev, d in due:
                d.callback(None)

    def _fail_waiters(self, error):
        waiters, self._waiters = self._waiters, []
        for _rev, d in waiters:
            d.errback(error)

    # -- polling ---------------------------------------------------------------------------
    def poll_now(self):
        if not self._running or self._reloading is not None:
            return
        if self._polling is not None:
            self._again = True
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._start_poll()

    def _schedule(self, delay):
        if self._running and self._timer is None and self._polling is None \
                and self._reloading is None:
            self._timer = self.reactor.callLater(delay, self._tick)

    def _tick(self):
        self._timer = None
        self._start_poll(probe=self._probe is not None)

    def _start_poll(self, probe=False):
        if not self._running or self._polling is not None or self._reloading is not None:
            return
        self._again = False
        if probe:
            d = defer.maybeDeferred(self._probe).addCallback(self._after_probe)
        else:
            d = defer.maybeDeferred(self._poll, self.delivered)
        self._polling = d
        d.addCallbacks(self._polled, self._poll_failed)
        d.addBoth(self._poll_done)

    def _after_probe(self, head):
        # A timed poll of an idle database would find nothing, at the cost of a
        # transaction on a pool thread every interval; one statement on the reactor's
        # connection says so first.  (Polls for a waiting read skip this: the barrier
        # has just read the revision.)
        if head is not None and head[0] <= self.delivered:
            return (), head[0], head[1], False, False
        return self._poll(self.delivered)

    def _polled(self, result):
        if self._failing:
            self._failing = False
            log.info("change feed polls again")
        revisions, revision, compact, more, behind = result
        if behind:
            self.reload()
            return
        self._deliver_rows(revisions)
        self.learn(revision, compact)
        if more or revision > self.delivered:
            self._again = True

    def _poll_failed(self, failure):
        if not self._failing:
            background_failure(log, "change feed poll failed; retrying every {s}s until "
                               "it works", failure, s=max(self.interval, FAILED_RETRY))
        self._failing = True
        error = failure.value
        if not isinstance(error, errors.EtcdError):
            error = errors.ErrNoLeader()
        self._fail_waiters(error)
        self._again = False

    def _poll_done(self, _):
        self._polling = None
        if not self._running or self._reloading is not None:
            return
        if self._again:
            self._again = False
            self._timer = self.reactor.callLater(0, self._tick)
        else:
            self._schedule(max(self.interval, FAILED_RETRY) if self._failing
                           else self.interval)

    # -- falling behind a purge --------------------------------------------------------------
    def reload(self):
        """Load the replica afresh (the purge of a compaction may have deleted rows it
        had not applied yet).  Deferred firing when done; one reload at a time."""
        d = defer.Deferred()
        if not self._running:
            d.errback(errors.ErrStopped())
            return d
        self._reload_waiters.append(d)
        if self._reloading is not None:
            return d
        log.warn("change feed: another adapter's compaction purged revisions after "
                 "{rev} before this adapter read them; loading the replica afresh",
                 rev=self.delivered)
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        r = self._reloading = defer.maybeDeferred(self._reload_fn)
        r.addCallbacks(self._reloaded, self._reload_failed)
        r.addBoth(self._reload_done)
        return d

    def _reloaded(self, keyspace):
        old = self.delivered
        if keyspace.revision < old:
            raise AssertionError("reloaded replica at %d, behind %d" % (keyspace.revision,
                                                                         old))
        compact = keyspace.compact_revision
        self.keyspace = keyspace
        self.reloads += 1
        self.seen = max(self.seen, keyspace.revision)
        if compact > old + 1:
            self._lost(old + 1, compact - 1, compact)
        for change in keyspace.log:
            if change.revision > old:
                self._subscribers.deliver(change)
        self._release()

    def _reload_failed(self, failure):
        background_failure(log, "loading the replica failed; retrying", failure)
        self._fail_waiters(errors.ErrNoLeader())
        return failure

    def _reload_done(self, result):
        self._reloading = None
        waiters, self._reload_waiters = self._reload_waiters, []
        for d in waiters:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(None)
        if self._running:
            self._schedule(FAILED_RETRY if isinstance(result, Failure) else 0)

    def _lost(self, first, last, compact):
        log.error("change feed: revisions {a}..{b} were compacted (to {c}) by another "
                  "adapter before this one read them", a=first, b=last, c=compact)
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

