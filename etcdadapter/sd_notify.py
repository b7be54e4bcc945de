"""systemd's readiness protocol (``Type=notify``), without libsystemd.

systemd passes the path of a datagram socket in ``NOTIFY_SOCKET`` (a leading ``@`` means
the abstract namespace); the service sends newline-separated ``KEY=value`` assignments:
``READY=1`` once it serves, ``STOPPING=1`` when it begins to shut down, ``STATUS=...``
for ``systemctl status``.  Without ``NOTIFY_SOCKET`` (not under systemd) nothing is
sent.  Only the twistd daemon notifies: an embedding program owns its own readiness.
"""

import os
import socket


def notify(*assignments, environ=os.environ):
    """Send ``assignments`` ("READY=1", ...) to systemd; False if not under systemd or
    the socket is gone (never raises)."""
    path = environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):
        path = "\0" + path[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto("\n".join(assignments).encode("utf-8"), path)
        return True
    except OSError:
        return False
