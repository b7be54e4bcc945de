"""The one timer of a connection: header, body-stall and idle timeouts (slow-loris).

A connection is always in one phase, and only two phases have a deadline:

* ``HEAD``: waiting for a complete request head -- from the TCP accept (so the TLS
  handshake counts) until HTTP/1.1's request line and headers, or HTTP/2's preface and
  first SETTINGS frame, are in; later, from the first byte of the next HTTP/1.1 request.
  Bytes trickling in do not extend it (Go's ReadHeaderTimeout).
* ``BODY``: an HTTP/1.1 request body is arriving; each chunk restarts the same timeout,
  so a body may be slow but not stalled.
* ``IDLE``: nothing in progress (HTTP/1.1 keep-alive between requests, HTTP/2 with no
  open stream); the idle timeout runs.
* ``BUSY``: a request is being answered or a stream is open (a watch may stay open for
  days): no deadline.

Pure code over an injected clock (``IReactorTime``); ``on_expired(phase)`` decides what
closing means for the protocol in use.  A timeout of 0 disables that deadline.

The timer is lazy: an HTTP/2 connection under load turns busy and idle again for every
call it answers, and a reactor timer made and cancelled each time cost more than the
call's own HTTP/2 framing.  The phase keeps its deadline as a time; the one timer is
moved only when a deadline comes earlier than it, and when it fires it closes the
connection only if the deadline then in force has passed (else it sleeps until that one).
"""

HEAD = "header"
BODY = "body"
IDLE = "idle"
BUSY = "busy"
CLOSED = "closed"


class Deadlines(object):
    def __init__(self, clock, header_timeout, idle_timeout, on_expired):
        self.clock = clock
        self.header_timeout = header_timeout
        self.idle_timeout = idle_timeout
        self.on_expired = on_expired
        self.phase = None
        self._deadline = None       # when the current phase's deadline passes, or None
        self._call = None           # the timer; may be early or late for _deadline

    def head(self):
        """Waiting for a request head; a head already awaited keeps its deadline."""
        if self.phase != HEAD:
            self._enter(HEAD, self.header_timeout)

    def body(self):
        """Request body bytes arrived (or are due): restart the stall timeout."""
        self._enter(BODY, self.header_timeout)

    def busy(self):
        self._enter(BUSY, 0)

    def idle(self):
        if self.phase != IDLE:
            self._enter(IDLE, self.idle_timeout)

    def stop(self):
        self.phase = CLOSED
        self._deadline = None
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()           # (it would hold the connection until it fires)

    def _enter(self, phase, timeout):
        if self.phase == CLOSED:
            return
        self.phase = phase
        if not timeout:
            self._deadline = None   # the timer, if any, finds nothing due
            return
        self._deadline = deadline = self.clock.seconds() + timeout
        call = self._call
        if call is None:
            self._call = self.clock.callLater(timeout, self._expired)
        elif call.getTime() > deadline:
            call.reset(timeout)

    def _expired(self):
        self._call = None
        deadline = self._deadline
        if deadline is None or self.phase == CLOSED:
            return
        left = deadline - self.clock.seconds()
        if left > 0:
            self._call = self.clock.callLater(left, self._expired)
            return
        phase, self.phase = self.phase, CLOSED
        self._deadline = None
        self.on_expired(phase)
