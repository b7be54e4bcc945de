"""Start and stop the servers the compatibility tests talk to.

Two kinds of server:

* :class:`EtcdServer` -- a real etcd (the reference), in a temporary data dir (on
  /dev/shm when available: etcd fsyncs every write), on free loopback ports;
* :class:`AdapterServer` -- our etcd-adapter, started exactly as an operator would::

      python -c "from twisted.scripts.twistd import run; run()" -n --pidfile= \\
          etcd-adapter --listen tcp:PORT:interface=127.0.0.1 --store memory://

  with cwd and PYTHONPATH = the repository root.

``ETCDADAPTER_TEST_TARGET=etcd`` makes :func:`start_target` start a second real etcd in
place of the adapter, so the differential harness can be validated etcd-vs-etcd.  That
second etcd is shifted by ``ETCDADAPTER_TEST_ETCD_REV_OFFSET`` revisions (default 5:
puts then a delete of a key nobody reads, so its store is empty but its revisions differ
from the reference's by a constant, like the adapter's memory store which starts at the
wall clock in microseconds); this exercises the revision mapping of the harness.

Readiness is checked with a raw gRPC Range (no generated code needed); :attr:`Server.
base_revision` is the store revision seen then, so ``offset = target.base_revision -
etcd.base_revision`` maps revisions between the two fresh stores.

Also here: a small gRPC client (:class:`GrpcClient`) built on grpcio generic calls.
"""

import errno
import os
import queue
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import grpc
import pytest

from etcdadapter.pb.etcdserverpb import rpc_pb2 as rpc

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ETCD_BIN = shutil.which("etcd")
ETCDCTL_BIN = shutil.which("etcdctl")

TARGET_ENV = "ETCDADAPTER_TEST_TARGET"
ETCD_OFFSET_ENV = "ETCDADAPTER_TEST_ETCD_REV_OFFSET"

ADAPTER_START_TIMEOUT = 30.0
ETCD_START_TIMEOUT = 15.0
ADAPTER_STOP_TIMEOUT = 5.0


def target_kind():
    """'adapter' (default) or 'etcd' (validate the harness against a second etcd)."""
    kind = os.environ.get(TARGET_ENV, "adapter").strip().lower() or "adapter"
    if kind not in ("adapter", "etcd"):
        raise ValueError("%s must be 'adapter' or 'etcd', not %r" % (TARGET_ENV, kind))
    return kind


def in_ci():
    return os.environ.get("CI", "").lower() == "true"


def missing_binaries():
    """Names of the etcd binaries the tests need that are not on PATH."""
    return [name for name, path in (("etcd", ETCD_BIN), ("etcdctl", ETCDCTL_BIN))
            if path is None]


def require_etcd_binaries():
    """Skip the calling test without etcd and etcdctl on PATH (fail it when CI=true)."""
    missing = missing_binaries()
    if missing:
        message = "etcd binaries not found on PATH: %s" % ", ".join(missing)
        if in_ci():
            pytest.fail(message + " (CI=true: failing instead of skipping)")
        pytest.skip(message)


# ---------------------------------------------------------------------------------------
# Ports

_handed_out = set()
_ports_lock = threading.Lock()


def _worker_ports():
    """The ports this test process hands out: under pytest-xdist each worker has a range
    of its own, below Linux's ephemeral ports (32768-60999).  Ports the kernel picks
    (bind to port 0) are shared by every process and by client connections: two workers
    were handed the same port, one server took it, the other's failed to bind -- and its
    readiness probe reached the first one's server and passed."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    index = int(worker[2:]) + 1 if worker[:2] == "gw" and worker[2:].isdigit() else 0
    if index > 4:
        return None
    low = 10000 + index * 4000
    return range(low, low + 4000)


_PORTS = _worker_ports()
_pick = random.Random().choice     # (tests seed the module's random for their own use)


def free_port():
    """A loopback TCP port that is free now and not handed out before by this process.

    There is an unavoidable window between closing the probe socket and the server
    binding it (another program may take the port); the starters below detect "address
    already in use" and retry on fresh ports.
    """
    with _ports_lock:
        for _ in range(100):
            port = _pick(_PORTS) if _PORTS is not None else 0
            if port in _handed_out:
                continue
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.bind(("127.0.0.1", port))
                port = sock.getsockname()[1]
            except OSError:
                continue                # in use (or lingering): another one
            finally:
                sock.close()
            if port not in _handed_out:
                _handed_out.add(port)
                return port
    raise RuntimeError("no free port found")


class PortInUse(Exception):
    pass


# ---------------------------------------------------------------------------------------
# Minimal protobuf reading (readiness probe only)

def _varint(buf, pos):
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf):
    pos = 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos)
        num, wt = tag >> 3, tag & 7
        if wt == 0:
            val, pos = _varint(buf, pos)
        elif wt == 2:
            n, pos = _varint(buf, pos)
            val = bytes(buf[pos:pos + n])
            pos += n
        elif wt == 1:
            val, pos = buf[pos:pos + 8], pos + 8
        elif wt == 5:
            val, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ValueError("bad wire type %d" % wt)
        yield num, val


def header_revision(raw_response):
    """header.revision of a serialized response (field 1 = ResponseHeader, rev = 3)."""
    for num, val in _fields(raw_response):
        if num == 1 and isinstance(val, bytes):
            for hnum, hval in _fields(val):
                if hnum == 3:
                    return hval
            return 0
    return 0


def _ident(b):
    return b


# RangeRequest{key: "\0", range_end: "\0", count_only: true}
_PROBE_RANGE = b"\x0a\x01\x00\x12\x01\x00\x48\x01"


def _probe(endpoint, timeout, credentials=None):
    """Serialized RangeResponse of a count-only Range of everything, or raise."""
    with (grpc.secure_channel(endpoint, credentials) if credentials is not None
          else grpc.insecure_channel(endpoint)) as channel:
        call = channel.unary_unary("/etcdserverpb.KV/Range",
                                   request_serializer=_ident, response_deserializer=_ident)
        return call(_PROBE_RANGE, timeout=timeout)


# ---------------------------------------------------------------------------------------
# Servers

class Server(object):
    """A started server process on 127.0.0.1:port."""

    kind = None
    start_timeout = 15.0
    #: grpc.ChannelCredentials when the server listens with TLS (readiness probe).
    credentials = None

    def __init__(self, label):
        self.label = label
        self.port = None
        self.proc = None
        self.log_path = None
        self.base_revision = None
        self._tmp = tempfile.mkdtemp(prefix="etcdadapter-test-%s-" % label,
                                     dir="/dev/shm" if os.path.isdir("/dev/shm") else None)

    # -- subclass hooks
    def _command(self):
        raise NotImplementedError

    def _env(self):
        return None

    def _cwd(self):
        return self._tmp

    # --
    @property
    def endpoint(self):
        return "127.0.0.1:%d" % self.port

    @property
    def client_url(self):
        return "http://127.0.0.1:%d" % self.port

    def log_text(self):
        if not self.log_path or not os.path.exists(self.log_path):
            return ""
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def log_tail(self, lines=60):
        text = self.log_text().splitlines()
        return "\n".join(text[-lines:])

    def describe(self):
        return "%s server %s on %s (log %s)" % (self.kind, self.label, self.endpoint,
                                                  self.log_path)

    def launch(self):
        """Spawn the process (does not wait)."""
        self._allocate_ports()
        attempt = getattr(self, "_attempt", 0) + 1
        self._attempt = attempt
        self.log_path = os.path.join(self._tmp, "server-%d.log" % attempt)
        log = open(self.log_path, "wb")
        try:
            self.proc = subprocess.Popen(self._command(), stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=self._cwd(), env=self._env(),
                                         start_new_session=True)
        finally:
            log.close()

    def wait_ready(self):
        """Poll with a Range until it succeeds; set base_revision."""
        deadline = time.monotonic() + self.start_timeout
        last_error = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                text = self.log_text()
                if "address already in use" in text.lower():
                    raise PortInUse(text)
                raise RuntimeError("%s exited with status %s before becoming ready; log:\n%s"
                                   % (self.describe(), self.proc.returncode,
                                      self.log_tail()))
            try:
                raw = _probe(self.endpoint, timeout=1.0, credentials=self.credentials)
            except grpc.RpcError as exc:
                last_error = exc
                time.sleep(0.05)
                continue
            self.base_revision = header_revision(raw)
            self._after_ready()
            return
        self._kill()
        raise RuntimeError("%s not ready after %.0fs (last error: %s); log:\n%s"
                           % (self.describe(), self.start_timeout, last_error,
                              self.log_tail()))

    def _after_ready(self):
        pass

    def start(self, attempts=3):
        for attempt in range(attempts):
            self.launch()
            try:
                self.wait_ready()
                return self
            except PortInUse:
                self._kill()
                if attempt == attempts - 1:
                    raise
        return self

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def _kill(self):
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                self.proc.kill()
            self.proc.wait(10)

    def stop(self):
        """Stop the server; raise AssertionError if it misbehaves while stopping."""
        try:
            self._stop()
        finally:
            self._kill()

    def _stop(self):
        self._kill()

    def cleanup(self):
        shutil.rmtree(self._tmp, ignore_errors=True)

    def _allocate_ports(self):
        self.port = free_port()


class EtcdServer(Server):
    """A real single-member etcd."""

    kind = "etcd"
    start_timeout = ETCD_START_TIMEOUT

    def __init__(self, label="etcd", rev_offset=0):
        Server.__init__(self, label)
        self.peer_port = None
        self.rev_offset = rev_offset

    def _allocate_ports(self):
        self.port = free_port()
        self.peer_port = free_port()
        # etcd refuses to start on an existing data dir from another attempt's member.
        shutil.rmtree(os.path.join(self._tmp, "data"), ignore_errors=True)

    def _command(self):
        peer = "http://127.0.0.1:%d" % self.peer_port
        return [ETCD_BIN,
                "--name", "default",
                "--data-dir", os.path.join(self._tmp, "data"),
                "--listen-client-urls", self.client_url,
                "--advertise-client-urls", self.client_url,
                "--listen-peer-urls", peer,
                "--initial-advertise-peer-urls", peer,
                "--initial-cluster", "default=" + peer,
                "--initial-cluster-state", "new",
                "--initial-cluster-token", "etcdadapter-test-%d" % self.port,
                "--logger", "zap", "--log-outputs", "stderr",
                "--snapshot-count", "1000000"]

    def _env(self):
        env = dict(os.environ)
        for key in list(env):
            if key.startswith("ETCD_"):   # etcd reads its flags from ETCD_* too
                del env[key]
        return env

    def _after_ready(self):
        if self.rev_offset >= 2:
            _shift_revisions(self.endpoint, self.rev_offset)
            self.base_revision = header_revision(_probe(self.endpoint, 5.0))

    def _stop(self):
        self._kill()


def _shift_revisions(endpoint, offset):
    """Write (offset - 1) puts and one delete of a key: offset more revisions, no keys."""
    key = b"\x00etcdadapter-test-revision-shift"
    put = b"\x0a" + bytes([len(key)]) + key + b"\x12\x01x"
    delete = b"\x0a" + bytes([len(key)]) + key
    with grpc.insecure_channel(endpoint) as channel:
        put_call = channel.unary_unary("/etcdserverpb.KV/Put", request_serializer=_ident,
                                       response_deserializer=_ident)
        del_call = channel.unary_unary("/etcdserverpb.KV/DeleteRange",
                                       request_serializer=_ident,
                                       response_deserializer=_ident)
        for _ in range(offset - 1):
            put_call(put, timeout=5)
        del_call(delete, timeout=5)


class RestoredEtcd(EtcdServer):
    """A real etcd started on the data directory ``etcdctl snapshot restore`` made from
    the snapshot file ``snapshot``."""

    def __init__(self, label, snapshot):
        EtcdServer.__init__(self, label)
        self.snapshot = snapshot

    def _allocate_ports(self):
        EtcdServer._allocate_ports(self)
        peer = "http://127.0.0.1:%d" % self.peer_port
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL_")}
        env["ETCDCTL_API"] = "3"
        r = subprocess.run(
            [ETCDCTL_BIN, "snapshot", "restore", self.snapshot, "--name", "default",
             "--data-dir", os.path.join(self._tmp, "data"),
             "--initial-cluster", "default=" + peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster-token", "etcdadapter-test-%d" % self.port],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, timeout=60)
        if r.returncode != 0:
            raise RuntimeError("etcdctl snapshot restore %s: %s"
                               % (self.snapshot, r.stderr.decode(errors="replace")))


class AdapterServer(Server):
    """Our etcd-adapter, run through twistd exactly as in production."""

    kind = "adapter"
    start_timeout = ADAPTER_START_TIMEOUT

    def __init__(self, label="adapter", store="memory://", extra_args=()):
        Server.__init__(self, label)
        self.store = store
        self.extra_args = list(extra_args)

    def _command(self):
        return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                "-n", "--pidfile=", "etcd-adapter",
                "--listen", "tcp:%d:interface=127.0.0.1" % self.port,
                "--store", self.store] + self.extra_args

    def _cwd(self):
        return REPO_ROOT

    def _env(self):
        env = dict(os.environ)
        old = env.get("PYTHONPATH")
        env["PYTHONPATH"] = REPO_ROOT + (os.pathsep + old if old else "")
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _stop(self):
        """SIGTERM; the adapter must exit by itself within ADAPTER_STOP_TIMEOUT."""
        if self.proc is None:
            return
        if self.proc.poll() is not None:
            raise AssertionError("%s had already exited with status %s; log:\n%s"
                                 % (self.describe(), self.proc.returncode, self.log_tail()))
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(ADAPTER_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise AssertionError("%s did not exit within %.0fs of SIGTERM; log:\n%s"
                                 % (self.describe(), ADAPTER_STOP_TIMEOUT, self.log_tail()))


def make_target(label="target", store="memory://"):
    """The server under test: our adapter, or a second etcd if TARGET=etcd."""
    if target_kind() == "etcd":
        offset = int(os.environ.get(ETCD_OFFSET_ENV, "5"))
        return EtcdServer(label + "-etcd", rev_offset=offset)
    return AdapterServer(label, store=store)


def start_all(servers):
    """Start several servers concurrently (etcd and the adapter boot in parallel)."""
    errors = []

    def run(server):
        try:
            server.start()
        except BaseException as exc:  # noqa: B902 - reported below
            errors.append((server, exc))

    threads = [threading.Thread(target=run, args=(s,)) for s in servers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        for server in servers:
            server._kill()
        raise errors[0][1]
    return servers


# ---------------------------------------------------------------------------------------
# gRPC client

class RpcResult(object):
    """Outcome of one call: ``response`` or (``code``, ``details``)."""

    __slots__ = ("response", "code", "details")

    def __init__(self, response=None, code=None, details=None):
        self.response = response
        self.code = code
        self.details = details

    @property
    def ok(self):
        return self.code is None

    def error(self):
        return None if self.ok else (self.code.name, self.details)

    def __repr__(self):
        if self.ok:
            return "RpcResult(ok, %s)" % (type(self.response).__name__,)
        return "RpcResult(%s, %r)" % (self.code.name, self.details)


class GrpcClient(object):
    """grpcio generic unary calls against one server."""

    def __init__(self, endpoint, timeout=10.0):
        self.endpoint = endpoint
        self.timeout = timeout
        self.channel = grpc.insecure_channel(endpoint, options=[
            ("grpc.max_receive_message_length", -1),
            ("grpc.max_send_message_length", -1),
            ("grpc.enable_retries", 0),
        ])
        self._calls = {}

    def close(self):
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def call(self, method, request, response_class=None, serializer=None, timeout=None):
        """Invoke ``method`` ('/etcdserverpb.KV/Range'); return an :class:`RpcResult`."""
        key = (method, response_class, serializer)
        fn = self._calls.get(key)
        if fn is None:
            fn = self.channel.unary_unary(
                method,
                request_serializer=serializer or (lambda m: m.SerializeToString()),
                response_deserializer=(response_class.FromString if response_class
                                       else _ident))
            self._calls[key] = fn
        try:
            return RpcResult(response=fn(request, timeout=timeout or self.timeout))
        except grpc.RpcError as exc:
            return RpcResult(code=exc.code(), details=exc.details())


class GrpcWatch(object):
    """One Watch stream over grpcio, read by a thread into a queue."""

    def __init__(self, channel):
        self.requests = queue.Queue()
        self.responses = queue.Queue()
        method = channel.stream_stream(
            "/etcdserverpb.Watch/Watch", request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=rpc.WatchResponse.FromString)
        self.call = method(iter(self.requests.get, None))
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        try:
            for r in self.call:
                self.responses.put(r)
        except grpc.RpcError:
            pass

    def create(self, **kw):
        """Create a watcher; returns the created response."""
        self.requests.put(rpc.WatchRequest(create_request=rpc.WatchCreateRequest(**kw)))
        r = self.next()
        assert r.created, r
        return r

    def next(self, timeout=10):
        """The next WatchResponse (queue.Empty if none comes)."""
        return self.responses.get(timeout=timeout)

    def events(self, n, timeout=20):
        """The next ``n`` events (mvccpb.Event), failing if they do not come."""
        out = []
        deadline = time.monotonic() + timeout
        while len(out) < n:
            r = self.responses.get(timeout=max(0.01, deadline - time.monotonic()))
            out.extend(r.events)
        assert len(out) == n, out
        return out

    def quiet(self, seconds):
        """True if nothing arrives within ``seconds``."""
        try:
            r = self.responses.get(timeout=seconds)
        except queue.Empty:
            return True
        self.responses.queue.appendleft(r)
        return False

    def close(self):
        self.call.cancel()


def wait_until(predicate, timeout=10.0, what="condition", interval=0.02):
    """Poll ``predicate`` until it gives a true value, and return it; AssertionError
    ("timed out waiting for <what>") after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, "timed out waiting for " + what
        time.sleep(interval)


def http_request(server, method, path, body=None, headers=None, conn=None, timeout=5):
    """One plain HTTP/1.1 request to ``server``: (http.client response, body bytes).
    Pass ``conn`` to reuse a keep-alive connection."""
    import http.client
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    data = resp.read()
    if own:
        conn.close()
    return resp, data


def wait_port_closed(port, timeout=5.0):
    """True once nothing accepts connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = socket.socket()
        try:
            s.connect(("127.0.0.1", port))
        except OSError as exc:
            if exc.errno in (errno.ECONNREFUSED,):
                return True
        finally:
            s.close()
        time.sleep(0.05)
    return False


# ---------------------------------------------------------------------------------------
# Revision mapping and normalisation of messages, by descriptor

# Request fields holding a revision: mapped etcd -> target by +offset when > 0 (0 and
# negative values mean "latest" / "unset" / "absent" on both sides).
REQUEST_REVISION_FIELDS = {
    "etcdserverpb.RangeRequest": ("revision", "min_mod_revision", "max_mod_revision",
                                  "min_create_revision", "max_create_revision"),
    "etcdserverpb.Compare": ("create_revision", "mod_revision"),
    "etcdserverpb.CompactionRequest": ("revision",),
    "etcdserverpb.HashKVRequest": ("revision",),
    "etcdserverpb.WatchCreateRequest": ("start_revision",),
}

# Response fields holding a revision: mapped target -> etcd by -offset when > 0.
RESPONSE_REVISION_FIELDS = {
    "etcdserverpb.ResponseHeader": ("revision",),
    "mvccpb.KeyValue": ("create_revision", "mod_revision"),
    "etcdserverpb.WatchResponse": ("compact_revision",),
    "etcdserverpb.HashKVResponse": ("compact_revision",),
}

# Per-server identities: any non-zero value becomes 1 (so set vs unset still compares).
RESPONSE_ID_FIELDS = {
    "etcdserverpb.ResponseHeader": ("cluster_id", "member_id", "raft_term"),
}


def _walk(msg, visit):
    """Call visit(message) on msg and every message nested in it (depth first)."""
    visit(msg)
    for field, value in msg.ListFields():
        if field.message_type is None:
            continue
        if field.is_repeated:
            if field.message_type.GetOptions().map_entry:
                continue
            for item in value:
                _walk(item, visit)
        else:
            _walk(value, visit)


def map_request_revisions(request, offset):
    """A copy of ``request`` with its revision fields shifted by ``offset`` (when > 0)."""
    out = type(request)()
    out.CopyFrom(request)
    if not offset:
        return out

    def visit(m):
        for name in REQUEST_REVISION_FIELDS.get(m.DESCRIPTOR.full_name, ()):
            field = m.DESCRIPTOR.fields_by_name[name]
            if field.containing_oneof is not None and not m.HasField(name):
                continue
            value = getattr(m, name)
            if value > 0:
                setattr(m, name, value + offset)

    _walk(out, visit)
    return out


def normalise_response(response, offset):
    """A copy of ``response`` with revisions shifted back by ``offset`` and IDs -> 1."""
    out = type(response)()
    out.CopyFrom(response)

    def visit(m):
        full = m.DESCRIPTOR.full_name
        if offset:
            for name in RESPONSE_REVISION_FIELDS.get(full, ()):
                value = getattr(m, name)
                if value > 0:
                    setattr(m, name, value - offset)
        for name in RESPONSE_ID_FIELDS.get(full, ()):
            if getattr(m, name):
                setattr(m, name, 1)

    _walk(out, visit)
    return out


def show(msg):
    """Readable one-message dump (bytes escaped)."""
    from google.protobuf import text_format
    if msg is None:
        return "None"
    text = text_format.MessageToString(msg, as_one_line=False)
    return "%s {\n%s}" % (type(msg).__name__, "".join("  " + line + "\n"
                                                    for line in text.splitlines()))


# ---------------------------------------------------------------------------------------
# etcdctl

def spawn_etcdctl(server, args, **popen_kw):
    """Start ``etcdctl --endpoints=<server> args`` (v3 API, none of our ETCDCTL_*
    settings) with stdout and stderr piped; for long-running commands (keep-alive,
    watch)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL_")}
    env["ETCDCTL_API"] = "3"
    return subprocess.Popen([ETCDCTL_BIN, "--endpoints=" + server.endpoint,
                             "--dial-timeout=3s"] + list(args), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, **popen_kw)


# ---------------------------------------------------------------------------------------
# Small probes (GrpcClient)

def lease_ttl(client, lease_id):
    """LeaseTimeToLive's TTL for ``lease_id`` on ``client``'s server (-1: no such lease)."""
    r = client.call("/etcdserverpb.Lease/LeaseTimeToLive",
                    rpc.LeaseTimeToLiveRequest(ID=lease_id), rpc.LeaseTimeToLiveResponse)
    assert r.ok, r
    return r.response.TTL


def store_revision(client):
    """The current revision of ``client``'s server (header of a count-only Range)."""
    r = client.call("/etcdserverpb.KV/Range", rpc.RangeRequest(key=b"\0", count_only=True),
                    rpc.RangeResponse)
    assert r.ok, r
    return r.response.header.revision


def rss_kib(pid):
    """The resident memory of process ``pid``, in KiB."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def metric(adapter, name, **labels):
    """The value of one sample of /metrics (0 if absent)."""
    resp, data = http_request(adapter, "GET", "/metrics")
    assert resp.status == 200
    assert resp.getheader("Content-Type").startswith("text/plain; version=")
    want = {k: str(v) for k, v in labels.items()}
    for line in data.decode().splitlines():
        m = re.match(r"^([a-zA-Z_:]+)(?:\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(got.get(k) == v for k, v in want.items()):
            return float(m.group(3))
    return 0.0
