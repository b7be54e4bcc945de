"""Thousands of long-lived HTTP/1.1 watches in one process (every APISIX worker holds one;
etcd's own gateway multiplexes them onto one gRPC connection with a 250-stream limit)."""

import base64
import json
import selectors
import socket
import time

import pytest

from support import servers

pytestmark = pytest.mark.adapter

N_WATCHES = 2000


def _b64(data):
    return base64.b64encode(data).decode()


def _chunks(buf):
    """Decode complete chunks of an HTTP/1.1 chunked body: (payload bytes, rest)."""
    out = b""
    while True:
        head, sep, rest = buf.partition(b"\r\n")
        if not sep:
            return out, buf
        size = int(head, 16)
        if len(rest) < size + 2:
            return out, buf
        out += rest[:size]
        buf = rest[size + 2:]


class WatchConn(object):
    def __init__(self, port, create):
        body = json.dumps({"create_request": create}).encode()
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.sendall(b"POST /v3/watch HTTP/1.1\r\nHost: x\r\n"
                          b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        self.sock.setblocking(False)
        self.raw = b""
        self.head = None
        self.body = b""

    def read(self):
        data = self.sock.recv(262144)
        if not data:
            raise AssertionError("watch connection closed by the server")
        self.raw += data
        if self.head is None:
            head, sep, rest = self.raw.partition(b"\r\n\r\n")
            if not sep:
                return
            self.head, self.raw = head, rest
        payload, self.raw = _chunks(self.raw)
        self.body += payload

    def messages(self):
        return [json.loads(line)["result"] for line in self.body.splitlines()]


def _pump(conns, done, timeout=60.0):
    sel = selectors.DefaultSelector()
    for c in conns:
        sel.register(c.sock, selectors.EVENT_READ, c)
    deadline = time.monotonic() + timeout
    try:
        while not all(done(c) for c in conns):
            if time.monotonic() > deadline:
                missing = sum(1 for c in conns if not done(c))
                raise AssertionError("%d of %d watches not done" % (missing, len(conns)))
            for key, _ in sel.select(timeout=1.0):
                key.data.read()
    finally:
        sel.close()


def test_two_thousand_http_watches_all_get_the_put(adapter):
    _, data = servers.http_request(adapter, "POST", "/v3/kv/put",
                                   json.dumps({"key": _b64(b"/apisix/routes/0"),
                                               "value": _b64(b"{}")}).encode())
    start = int(json.loads(data)["header"]["revision"]) + 1
    conns = []
    try:
        for i in range(N_WATCHES):
            # Half watch APISIX's prefix from the next revision, half one key.
            if i % 2:
                create = {"key": _b64(b"/apisix"), "range_end": _b64(b"/apisiy"),
                          "start_revision": start}
            else:
                create = {"key": _b64(b"/apisix/routes/1")}
            conns.append(WatchConn(adapter.port, create))
        _pump(conns, lambda c: b"\n" in c.body)
        for c in conns:
            assert c.head.startswith(b"HTTP/1.1 200 OK")
            assert c.messages()[0]["created"] is True
        value = b'{"uri":"/hello"}' * 1000
        _, data = servers.http_request(adapter, "POST", "/v3/kv/put", json.dumps(
            {"key": _b64(b"/apisix/routes/1"), "value": _b64(value)}).encode())
        rev = json.loads(data)["header"]["revision"]
        _pump(conns, lambda c: len(c.messages()) >= 2)
        for c in conns:
            msgs = c.messages()
            assert len(msgs) == 2, msgs
            events = msgs[1]["events"]
            assert msgs[1]["header"]["revision"] == rev
            assert [(e["kv"]["key"], e["kv"]["mod_revision"]) for e in events] == [
                (_b64(b"/apisix/routes/1"), rev)]
            assert base64.b64decode(events[0]["kv"]["value"]) == value
    finally:
        for c in conns:
            c.sock.close()
