"""Waking the change feed when another instance commits (PostgreSQL LISTEN/NOTIFY).

A dialect that can push commit notifications (``Dialect.can_notify``) gets one extra
connection, owned by a thread of its own (not the pool: it blocks waiting), that listens
for them.  Every notification carrying a revision this process has not delivered yet asks
the feed to poll now.  While the listener is connected the feed's periodic poll becomes a
slow safety net (``slow_interval``); while it is not, the configured interval applies again,
so losing the listener costs latency, never events.  The feed stays the only reader of
the log: notifications only say "look now".
"""

import threading

from twisted.logger import Logger

from etcdadapter.store.sql.runner import error_text

log = Logger()

SLOW_INTERVAL = 1.0     # safety-net poll while notifications arrive
RETRY = 1.0             # seconds between attempts to (re)connect the listener
WAIT = 0.5              # how long one wait for notifications blocks (checks for stop)


class Listener(object):
    def __init__(self, dialect, reactor, feed, interval, slow_interval=SLOW_INTERVAL):
        self.dialect = dialect
        self.reactor = reactor
        self.feed = feed
        self.interval = interval
        self.slow_interval = max(interval, slow_interval)
        self._stop = threading.Event()
        self._thread = None
        #: Whether notifications are being listened for (reactor thread).
        self.up = False

    def start(self):
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name="etcd-adapter-%s-listen" % self.dialect.name)
        self._thread.start()

    def stop(self):
        """Ask the thread to end (it does within WAIT seconds; not joined: it holds no
        state that matters)."""
        self._stop.set()

    # -- listener thread ------------------------------------------------------------------
    def _run(self):
        failing = False
        while not self._stop.is_set():
            conn = None
            try:
                conn = self.dialect.listen_connect()
                self.reactor.callFromThread(self._connected, True)
                if failing:
                    log.info("{db}: listening for commits again", db=self.dialect.describe())
                failing = False
                while not self._stop.is_set():
                    revision = self.dialect.wait_notify(conn, WAIT)
                    if revision is not None:
                        self.reactor.callFromThread(self._notified, revision)
            except Exception as e:
                if not failing and not self._stop.is_set():
                    log.warn("{db}: commit notifications lost ({err}); polling every "
                             "{s}s until they are back", db=self.dialect.describe(),
                             err=error_text(e), s=self.interval)
                failing = True
                self.reactor.callFromThread(self._connected, False)
            finally:
                if conn is not None:
                    try:
                        conn.close()
                    except Exception:
                        pass
            self._stop.wait(RETRY)

    # -- reactor thread ---------------------------------------------------------------------
    def _connected(self, up):
        self.up = up
        self.feed.interval = self.slow_interval if up else self.interval
        if up:
            # Commits made before LISTEN took effect sent nothing we could hear.
            self.feed.poll_now()

    def _notified(self, revision):
        delivered = self.feed.delivered
        if delivered is None or revision > delivered:
            self.feed.poll_now()
