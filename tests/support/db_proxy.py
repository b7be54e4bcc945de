"""A TCP proxy in front of a database that a test can freeze (connections stay open but
nothing passes: a database that hangs), cut (connections closed, new ones refused),
cut just after a statement reached the database (its answer never comes back), and
restore, on one fixed local port."""

import socket
import threading


class DatabaseProxy(object):
    def __init__(self, target_port):
        self.target = target_port
        self.port = None
        self.listener = None
        self.conns = []
        self.flowing = threading.Event()
        self.flowing.set()
        self._swallow = threading.Event()     # answers from the database are dropped
        self._marker = None                   # (bytes, True: in an answer)
        self._lock = threading.Lock()
        self._listen()

    def url_for(self, url):
        """``url`` (of the database) pointed at the proxy instead."""
        return url.replace(":%d/" % self.target, ":%d/" % self.port, 1)

    def _listen(self):
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", self.port or 0))
        ls.listen(64)
        self.port = ls.getsockname()[1]
        self.listener = ls
        threading.Thread(target=self._accept, args=(ls,), daemon=True).start()

    def _accept(self, ls):
        while True:
            try:
                a, _ = ls.accept()
            except OSError:
                return
            threading.Thread(target=self._connect, args=(a,), daemon=True).start()

    def _connect(self, a):
        self.flowing.wait()
        try:
            b = socket.create_connection(("127.0.0.1", self.target))
        except OSError:
            a.close()
            return
        with self._lock:
            self.conns += [a, b]
        for x, y, up in ((a, b, True), (b, a, False)):
            threading.Thread(target=self._pipe, args=(x, y, up), daemon=True).start()

    def _pipe(self, x, y, up):
        try:
            while True:
                data = x.recv(65536)
                if not data:
                    break
                self.flowing.wait()          # frozen: hold the bytes
                if not up and self._swallow.is_set():
                    continue
                marker = self._marker
                if marker is not None and marker[1] != up and marker[0] in data:
                    self._marker = None
                    self._swallow.set()
                    if up:
                        y.sendall(data)
                    # The database has the statement; let it act, then cut.
                    threading.Timer(0.3, self.cut).start()
                    continue
                y.sendall(data)
        except OSError:
            pass
        for z in (x, y):
            try:
                z.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def freeze(self):
        """Nothing passes any more; connections stay open (a hung database)."""
        self.flowing.clear()

    def cut(self):
        """Close every connection and refuse new ones (a database that is gone)."""
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        self.listener = None
        with self._lock:
            conns, self.conns = self.conns, []
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
                c.close()
            except OSError:
                pass
        self.flowing.set()

    def cut_after(self, marker, answer=False):
        """When bytes containing ``marker`` next go to the database (with ``answer``:
        come from it), pass them (drop them), drop every answer from then on, and cut
        0.3 s later: the database ran the statement, the client never hears."""
        self._marker = (marker, answer)

    def restore(self):
        """Bytes flow again (after freeze); connections are accepted again (after cut)."""
        if self.listener is None:
            self._listen()
        self._marker = None
        self._swallow.clear()
        self.flowing.set()

    def close(self):
        if self.listener is not None:
            self.cut()
