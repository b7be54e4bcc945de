"""Automatic compaction: etcd 3.4's ``--auto-compaction-mode`` and
``--auto-compaction-retention`` (etcdserver/api/v3compactor), on a clock (an IReactorTime;
``twisted.internet.task.Clock`` in tests), for any store.

periodic (retention: a duration; a bare integer means hours)
    Every check interval (a tenth of the retention, at most 6 minutes) the compactor
    notes the store's revision, keeping the notes of one retention (retention / interval
    + 1 of them).  Once a retention has passed since start it compacts to the oldest note
    -- the revision of about one retention ago -- then again every retention (at most
    every hour: a 24h retention compacts hourly, each time to the revision of 24 hours
    before).  A failed compaction is retried at the next check.

revision (retention: a number of revisions)
    Every check interval (5 minutes) it compacts to ``revision - retention``, unless that
    is not positive or is what it compacted to last time.

Retention 0 turns it off.  Every compaction goes through ``store.compact(revision,
physical=True)``, the path of the Compact RPC, and waits until the store has deleted what
it made garbage.  ErrCompacted (the store is already compacted to that revision or
beyond) counts as done, as in etcd.

Several adapters on one database: the compact revision is the database's, so they all
agree on it.  To compact once per period between them rather than once each, a compaction
that the store's compact revision shows since the previous check -- made by another
adapter, or by a Compact call -- counts as the one this check would have made: periodic
mode starts its next period from there, revision mode waits for its next check.
"""

import time

from twisted.internet import defer, task
from twisted.logger import Logger

from etcdadapter import durations, errors

log = Logger()

PERIODIC = "periodic"
REVISION = "revision"
MODES = (PERIODIC, REVISION)

HOUR = 3600.0
REVISION_INTERVAL = 300.0       # etcd's revInterval
CHECKS_PER_PERIOD = 10          # etcd's retryDivisor

DEFAULT_MODE = PERIODIC
DEFAULT_RETENTION = "1h"        # etcd: 0 (off); ours is on by default


def parse_retention(mode, text):
    """``--auto-compaction-retention`` as etcd reads it: seconds (periodic) or revisions
    (revision); 0 means off.  A bare integer is hours in periodic mode and revisions in
    revision mode; periodic mode also takes a duration ("30m", "1h30m", "5s").
    ValueError for anything else (etcd would take "10m" in revision mode as 600 billion
    revisions; we refuse it)."""
    if mode not in MODES:
        raise ValueError("auto compaction mode must be %s, not %r" % (" or ".join(MODES),
                                                                      mode))
    text = str(text).strip()
    try:
        n = int(text)
    except ValueError:
        n = None
    if n is not None:
        if n < 0:
            raise ValueError("retention must not be negative: %r" % text)
        return n * HOUR if mode == PERIODIC else n
    if mode == REVISION:
        raise ValueError("revision mode keeps a number of revisions, not %r" % text)
    try:
        float(text)
    except ValueError:
        pass
    else:
        raise ValueError("a retention that is not a whole number of hours needs a unit "
                         "(e.g. 90m, 1h30m, 30s): %r" % text)
    seconds = durations.seconds(text)
    if seconds < 0:
        raise ValueError("retention must not be negative: %r" % text)
    return seconds


class Compactor(object):
    def __init__(self, store, mode=DEFAULT_MODE, retention=HOUR, clock=None,
                 check_interval=None):
        """``retention``: seconds (periodic) or revisions (revision), as
        :func:`parse_retention` returns; 0 = off.  ``check_interval``: seconds between
        checks (None: etcd's, see the module docstring)."""
        if mode not in MODES:
            raise ValueError("unknown auto compaction mode %r" % (mode,))
        self.store = store
        self.mode = mode
        self.retention = retention
        self.clock = clock if clock is not None else store.clock
        if mode == PERIODIC:
            self.compact_interval = min(retention, HOUR)
            self.check_interval = check_interval or self.compact_interval / CHECKS_PER_PERIOD
            self.samples_kept = int(retention // self.check_interval) + 1 \
                if retention else 0
        else:
            self.check_interval = check_interval or REVISION_INTERVAL
        self._loop = None
        self._running = None         # the compaction in flight
        self._samples = []           # periodic: revisions noted, oldest first
        self._last_done = 0.0        # periodic: when the last compaction was done
        self._wait = 0.0             # periodic: how long after it the next one is due
        self._last_target = 0        # revision: the last revision compacted to
        self._seen_compact = -1      # the store's compact revision at the last check

    @property
    def enabled(self):
        return bool(self.retention)

    def describe(self):
        if self.mode == PERIODIC:
            return "periodic, retention %gs, checks every %gs" % (self.retention,
                                                                  self.check_interval)
        return "revision, retention %d revisions, checks every %gs" % (
            self.retention, self.check_interval)

    # -- lifecycle ------------------------------------------------------------------------
    def start(self):
        if not self.enabled:
            log.info("auto compaction off")
            return
        self._samples = [self.store.revision]
        self._last_done = self.clock.seconds()
        self._wait = self.retention
        self._seen_compact = self.store.compact_revision
        self._loop = task.LoopingCall(self._check)
        self._loop.clock = self.clock
        self._loop.start(self.check_interval, now=False).addErrback(
            lambda f: log.failure("auto compaction loop stopped", f))
        log.info("auto compaction: {how}", how=self.describe())

    def stop(self):
        """Stop checking.  A compaction in flight goes on; stopping the store ends it
        (the stores resume an interrupted one)."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    # -- one check ------------------------------------------------------------------------
    def _check(self):
        if self._running is not None:
            return                   # the previous compaction still runs
        other = self._compacted_by_others()
        if self.mode == PERIODIC:
            target = self._periodic_target(other)
        else:
            target = self._revision_target(other)
        if target is None:
            self._sample()
            return
        started = time.monotonic()
        d = self._running = defer.maybeDeferred(self.store.compact, target, True)
        d.addCallbacks(self._done, self._failed, callbackArgs=(target, started),
                       errbackArgs=(target,))
        d.addBoth(self._finished)

    def _compacted_by_others(self):
        compact = self.store.compact_revision
        if compact > self._seen_compact:
            self._seen_compact = compact
            return True
        return False

    def _periodic_target(self, other):
        now = self.clock.seconds()
        if other:
            self._last_done = now
            self._wait = self.compact_interval
            return None
        if now - self._last_done + 1e-9 < self._wait:
            return None
        self._wait = self.compact_interval     # after the first retention: every interval
        return self._samples[0]

    def _revision_target(self, other):
        if other:
            return None
        target = self.store.revision - self.retention
        if target <= 0 or target == self._last_target:
            return None
        return target

    def _sample(self):
        if self.mode == PERIODIC:
            self._samples.append(self.store.revision)
            if len(self._samples) > self.samples_kept:
                del self._samples[0]

    # -- outcome --------------------------------------------------------------------------
    def _succeeded(self, target):
        self._last_done = self.clock.seconds()
        self._last_target = target
        self._seen_compact = max(self._seen_compact, self.store.compact_revision)

    def _done(self, _current, target, started):
        self._succeeded(target)
        purged = getattr(self.store, "last_purge", None)
        removed = purged.versions if purged is not None and purged.revision >= target \
            else None
        log.info("auto compaction ({mode}): compacted to revision {revision} in "
                 "{duration:.3f}s, {removed} old versions removed", event="compaction",
                 mode=self.mode,
                 revision=target, duration=time.monotonic() - started, removed=removed,
                 retention=self.retention)

    def _failed(self, failure, target):
        if failure.check(errors.EtcdError) and failure.value == errors.ErrCompacted:
            # Another adapter on the same database (or a Compact call) got there first.
            self._succeeded(target)
            log.info("auto compaction ({mode}): revision {revision} is compacted already "
                     "(to {compact_revision})", mode=self.mode, revision=target,
                     compact_revision=self.store.compact_revision)
            return
        if self._loop is None:
            return                   # stopped meanwhile: the store stopping ended it
        log.warn("auto compaction ({mode}) to revision {revision} failed, retrying in "
                 "{interval}s: {error}", event="compaction-failed", mode=self.mode,
                 revision=target, interval=self.check_interval,
                 error=failure.getErrorMessage())

    def _finished(self, _):
        self._running = None
        self._sample()
