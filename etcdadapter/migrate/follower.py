"""Copying a live etcd into a SQL store and following it until the cut-over.

:meth:`Follower.prepare` copies etcd's state at its revision R into an empty store and
marks the store (:mod:`etcdadapter.store.sql.following`) in the same transaction -- or,
if the store is already marked, resumes at the store's revision without copying again.
:meth:`Follower.follow` then watches etcd from the store's revision + 1 (prev_kv) and
writes each batch of whole revisions in one transaction, at etcd's revisions; it polls
etcd's leases every second (grants and revokes are not in the watch), reads a lease's
remaining time again every 5 s (every third of its TTL if shorter, as a client keeps it
alive), and the mark every half second.  Once a cut-over is requested (``--cut-over``)
it reads etcd's revision E, applies everything up to E, then removes the mark: adapters
accept writes again, continuing at E + 1.

Blocking code on one thread (plus one thread reading the watch stream): no reactor.
"""

import queue
import threading
import time

from etcdadapter.errors import EtcdError
from etcdadapter.migrate import copy
from etcdadapter.migrate.etcd_client import EtcdClientError
from etcdadapter.pb.mvccpb import kv_pb2 as mvccpb
from etcdadapter.store.sql import following, importing, schema
from etcdadapter.store.sql.replica import read_meta
from etcdadapter.store.sql.runner import Runner, Session

MARK_CHECK_INTERVAL = 0.5
LEASE_POLL_INTERVAL = 1.0
LEASE_REFRESH_INTERVAL = 5.0     # a lease's remaining time, read again (at the most)
WATCH_RETRY_DELAY = 1.0
MAX_RESPONSES_PER_TX = 200


class MigrationError(Exception):
    """The migration cannot go on (the message says why and what to do)."""


def _event(e):
    kv = e.kv
    if e.type == mvccpb.Event.DELETE:
        return (True, kv.key, 0, 0, b"", 0)
    return (False, kv.key, kv.create_revision, kv.version, kv.value, kv.lease)


def group_by_revision(responses):
    """[(revision, [event tuple])] of the events of ``responses``, in order."""
    out = []
    for r in responses:
        for e in r.events:
            revision = e.kv.mod_revision
            if not out or out[-1][0] != revision:
                out.append((revision, []))
            out[-1][1].append(_event(e))
    return out


class Follower(object):
    def __init__(self, client, dialect, out, now=time.time):
        self.client = client
        self.dialect = dialect
        self.out = out
        self.now = now
        self.session = Session(Runner(dialect, 1, None, 1))
        self.revision = None            # the store's revision, as written by us
        self.leases = {}                # id -> (granted TTL, expiry in ms) last written
        self.lease_read = {}            # id -> time.monotonic() of its last read on etcd
        self.stopping = threading.Event()

    def say(self, text):
        self.out.write(text + "\n")
        self.out.flush()

    def tx(self, mode, fn):
        return self.session.transaction(mode, fn)

    def _now_ms(self):
        return int(self.now() * 1000)

    # -- the copy ----------------------------------------------------------------------
    def prepare(self):
        """Copy etcd into the empty store, or resume; returns True if it copied."""
        d = self.dialect
        # The store's default first revision (the wall clock in ms), should the copy
        # not happen and adapters start on this database anyway.
        schema.migrate(self.session, d, int(time.time() * 1000))
        mark = self.tx("read", following.read_mark)
        self.client.login()
        if mark is not None:
            self.revision = self.tx("read", read_meta)[0]
            self.say("resuming the migration at revision %d (copied at revision %d)"
                     % (self.revision, mark[0]))
            self.sync_leases(refresh=True)
            return False
        started = time.monotonic()
        history, live, count = copy.snapshot(self.client)
        now = self._now_ms()
        read = time.monotonic()
        leases = dict((i, (ttl, now + max(remaining, 0) * 1000))
                      for i, (ttl, remaining) in live.items())

        def body(tx):
            importing.write(tx, d, history, now)
            following.set_mark(tx, history.revision)
            following.sync_leases(tx, leases)
        self.tx("write", body)
        self.revision = history.revision
        self.leases = leases
        self.lease_read = dict.fromkeys(leases, read)
        self.say("copied %d key(s), %d lease(s)%s at revision %d in %.2fs"
                 % (count, len(live), ", users and roles" if history.auth_blob else "",
                    history.revision, time.monotonic() - started))
        return True

    # -- leases ------------------------------------------------------------------------
    def sync_leases(self, refresh=False):
        """etcd's lease IDs; the granted TTL and remaining time of the new ones, of all
        with ``refresh``, and of those read longer ago than :meth:`_reread_after` (a
        lease kept alive on etcd must not run out on the adapters between two reads)."""
        ids = self.client.lease_ids()
        live = {}
        for lease_id in ids:
            known = self.leases.get(lease_id)
            # Due at the next poll: read at this one.
            if known is not None and not refresh and (
                    time.monotonic() - self.lease_read.get(lease_id, 0)
                    < self._reread_after(known[0]) - LEASE_POLL_INTERVAL / 2):
                live[lease_id] = known
                continue
            read = time.monotonic()
            ttl = self.client.lease_ttl(lease_id)
            if ttl is not None:
                # The expiry itself is kept: writing the others again must not
                # push theirs back.
                live[lease_id] = (ttl[0], self._now_ms() + max(ttl[1], 0) * 1000)
                self.lease_read[lease_id] = read
        if live != self.leases:
            self.tx("write", lambda tx: following.sync_leases(tx, live))
            self.leases = live
        self.lease_read = dict((i, t) for i, t in self.lease_read.items() if i in live)

    @staticmethod
    def _reread_after(granted_ttl):
        """Seconds after which a lease's remaining time is read again: clients keep
        a lease alive every third of its TTL (etcd's clientv3 does)."""
        return min(LEASE_REFRESH_INTERVAL, granted_ttl / 3.0)

    # -- following ---------------------------------------------------------------------
    def _watch(self, start, inbox, abandoned):
        try:
            for response in self.client.watch(start):
                if self.stopping.is_set() or abandoned.is_set():
                    return
                inbox.put(("response", response))
            inbox.put(("end", "the watch stream ended"))
        except Exception as e:                   # reported on the main thread
            inbox.put(("end", e))

    def _start_watch(self):
        """A new watch from the store's revision + 1: (inbox, abandoned); set
        ``abandoned`` to make its thread drop what else comes and end."""
        inbox, abandoned = queue.Queue(), threading.Event()
        t = threading.Thread(target=self._watch, args=(self.revision + 1, inbox, abandoned),
                             name="etcd-watch", daemon=True)
        t.start()
        return inbox, abandoned

    def _apply(self, responses):
        for r in responses:
            if r.compact_revision:
                raise MigrationError(
                    "etcd compacted revision %d before the migration read it (the store "
                    "is at %d): start again on an empty store" % (r.compact_revision,
                                                                  self.revision))
            if r.canceled:
                raise MigrationError("etcd cancelled the watch: %s" % r.cancel_reason)
        revisions = group_by_revision(responses)
        if not revisions:
            return
        expected = self.revision
        self.revision = self.tx("write", lambda tx: following.apply(
            tx, self.dialect, expected, revisions))
        leases = set(e[5] for _rev, events in revisions for e in events if e[5])
        if leases - set(self.leases):
            self.sync_leases()

    def follow(self):
        """Follow etcd until a cut-over (True) or :attr:`stopping` (False)."""
        self.say("following etcd from revision %d" % (self.revision + 1))
        inbox, abandoned = self._start_watch()
        target = None                  # etcd's revision when the cut-over was asked
        next_mark = next_lease = 0.0
        next_refresh = time.monotonic() + LEASE_REFRESH_INTERVAL
        while not self.stopping.is_set():
            try:
                kind, item = inbox.get(timeout=0.1)
            except queue.Empty:
                kind = None
            if kind == "response":
                batch = [item]
                while len(batch) < MAX_RESPONSES_PER_TX:
                    try:
                        kind, item = inbox.get_nowait()
                    except queue.Empty:
                        kind = None
                        break
                    if kind != "response":
                        break
                    batch.append(item)
                try:
                    self._apply(batch)
                except EtcdError as e:           # the database: nothing was written
                    kind, item = "end", "database: %s" % e
            if kind == "end":
                abandoned.set()
                self.say("interrupted (%s); watching etcd again from revision %d"
                         % (item, self.revision + 1))
                if self.stopping.wait(WATCH_RETRY_DELAY):
                    break
                self._try(self.client.login)       # the token may have expired
                inbox, abandoned = self._start_watch()
            now = time.monotonic()
            if now >= next_lease:
                next_lease = now + LEASE_POLL_INTERVAL
                refresh = now >= next_refresh
                if refresh:
                    next_refresh = now + LEASE_REFRESH_INTERVAL
                self._try(self.sync_leases, refresh)
            if now >= next_mark:
                next_mark = now + MARK_CHECK_INTERVAL
                if target is None:
                    target = self._try(self._cut_over_target)
            if target is not None and self.revision >= target:
                self.cut_over()
                abandoned.set()
                return True
        self.say("stopped at revision %d: run the same command to resume"
                 % self.revision)
        return False

    def _cut_over_target(self):
        """etcd's revision once a cut-over is asked for, else None."""
        mark = self.tx("read", following.read_mark)
        if mark is None:
            raise MigrationError("the migration mark is gone: the store was cut over by "
                                 "another process")
        if not mark[1]:
            return None
        target = self.client.revision()
        self.say("cut-over requested: catching up with etcd's revision %d" % target)
        return target

    def _try(self, fn, *args):
        """fn(*args), or None after saying why etcd or the database failed (the loop
        tries again later)."""
        try:
            return fn(*args)
        except EtcdClientError as e:
            self.say("etcd: %s (retrying)" % e)
        except EtcdError as e:
            self.say("database: %s (retrying)" % e)

    def cut_over(self):
        self.sync_leases(refresh=True)
        revision = self.revision
        previous = self.tx("read", following.read_auth)
        blob = copy.auth_blob(self.client, previous)

        def body(tx):
            if blob is not None and blob != previous:
                following.write_auth(tx, self.dialect, blob)
            following.clear_mark(tx, self.dialect, revision)
        self.tx("write", body)
        self.say("cut over at revision %d: adapters on the store accept writes from "
                 "revision %d on" % (revision, revision + 1))
        try:
            later = self.client.revision()
        except EtcdClientError:
            return
        if later > revision:
            self.say("warning: etcd is now at revision %d: writes made to etcd after "
                     "the cut-over were not copied" % later)
