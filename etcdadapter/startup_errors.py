"""Start-up failures as one line that names the cause, the way etcd reports them
(``listen tcp 127.0.0.1:2379: bind: address already in use``), for the operator's
terminal and journal instead of a traceback."""

import errno

from twisted.internet.error import CannotListenError


class StartupError(Exception):
    """A start-up failure whose message is the whole story (no traceback)."""


def one_line(error):
    """The one-line text for a start-up failure, or None if it is unexpected (a bug:
    the caller logs its traceback)."""
    if isinstance(error, StartupError):
        return str(error)
    if isinstance(error, CannotListenError):
        return _listen_error(error)
    # The memory store's own refusal, whose message says what to fix.
    from etcdadapter.store.memory import RevisionFloorError
    if isinstance(error, RevisionFloorError):
        return str(error)
    return None


def _listen_error(error):
    # Go's net.Listen wording: "listen tcp 127.0.0.1:2379: bind: address already in use".
    host, port = error.interface, error.port
    cause = error.socketError
    reason = _os_reason(cause)
    if isinstance(port, str) or host is None:        # a UNIX socket: port is the path
        return "listen unix %s: bind: %s" % (port, reason)
    if ":" in host:
        host = "[%s]" % host
    elif host == "0.0.0.0":
        host = ""
    return "listen tcp %s:%s: bind: %s" % (host, port, reason)


def _os_reason(cause):
    code = getattr(cause, "errno", None)
    if code is not None:
        import os
        return os.strerror(code).lower()
    text = str(cause)
    if "[Errno %d]" % errno.EADDRINUSE in text:
        return "address already in use"
    return text
