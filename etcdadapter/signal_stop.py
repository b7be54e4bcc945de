"""SIGTERM and SIGINT stop the daemon, which drains and exits with status 0.

twistd's own handlers stop the reactor too, but make twistd re-raise the signal once
the reactor has stopped, so that a completed drain would exit with status -15 (killed
by SIGTERM) and systemd or a supervisor would count a clean stop as a failure.  These
handlers, installed once the reactor runs (after twistd's, which the reactor installs
as it starts), stop the reactor the same way; the application's stop -- the drain --
follows as twistd's before-shutdown trigger.  Should that stop fail, the signal is
raised again once the reactor has stopped: the exit status twistd would have given.

For the process that is the adapter (``twistd etcd-adapter``, ``etcd-adapter``); an
embedding host keeps its own signal handling.
"""

import os
import signal

from twisted.application import service
from twisted.logger import Logger

log = Logger()

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class SignalStop(service.Service):
    """The first child of the service tree: it starts before anything else (a signal
    while the store is awaited drains too) and stops last, so that its stop means the
    others stopped."""

    received = None         # the signal that stopped the daemon
    completed = False       # every other service stopped

    def __init__(self, reactor):
        self.setName("signal-stop")
        self.reactor = reactor

    def startService(self):
        service.Service.startService(self)
        # twistd starts the services before the reactor, which installs its handlers as
        # it starts: ours go in after them.
        self.reactor.callWhenRunning(self._install)
        self.reactor.addSystemEventTrigger("after", "shutdown", self._after_shutdown)

    def _install(self):
        for number in SIGNALS:
            signal.signal(number, self._received)

    def _received(self, number, frame):
        log.info("Received {name}, shutting down.", name=signal.Signals(number).name)
        self.received = number
        self.reactor.callFromThread(self.reactor.stop)

    def stopService(self):
        service.Service.stopService(self)
        self.completed = True

    def _after_shutdown(self):
        if self.received is not None and not self.completed:
            signal.signal(self.received, signal.SIG_DFL)
            os.kill(os.getpid(), self.received)
