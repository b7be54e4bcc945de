"""The installed ``etcd-adapter`` command, run as an operator runs it: every start-up
failure is exactly one line on standard error naming the cause, with a non-zero status
(2: usage, 1: the rest), and no help text or traceback; a good start serves, logs on
standard output, drains on SIGTERM and exits 0."""

import http.client
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile

import pytest

from support import command
from support.certs import CA
from support.command import BIN, Running, free_port, get, metric, run
from support.servers import REPO_ROOT, in_ci
from etcdadapter import __version__
from etcdadapter.services.identity import SERVER_VERSION


def one_line(stderr):
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli-pki")
    ca = CA(d)
    cert, key, _ = ca.issue("server", "etcd-adapter", "server", ips=["127.0.0.1"])
    client, client_key, _ = ca.issue("client", "root", "client")
    garbage = d / "garbage.pem"
    garbage.write_text("not a certificate\n")
    return {"ca": ca.path, "cert": cert, "key": key, "client": client,
            "client_key": client_key, "dir": str(d), "garbage": str(garbage),
            "other_key": CA(_mkdir(d / "other")).issue("x", "x", "server")[1]}


def _mkdir(path):
    os.makedirs(str(path), exist_ok=True)
    return path


def test_installed_command_and_version():
    assert os.access(BIN, os.X_OK), BIN
    status, out, err = run(["--version"])
    assert (status, err) == (0, "")
    assert out.splitlines()[:2] == ["etcd-adapter Version: %s" % __version__,
                                    "etcd API Version: %s" % SERVER_VERSION]


# (arguments, environment, the line on stderr) -- refused while parsing: status 2.
USAGE_ERRORS = [
    (["--bogus"], None,
     "option --bogus not recognized (etcd-adapter --help lists the options)"),
    (["--max-txn-ops", "zero"], None,
     "--max-txn-ops zero: invalid literal for int() with base 10: 'zero'"),
    (["--log-level", "loud"], None,
     "--log-level loud: must be one of debug, info, warn, error, critical"),
    ([], {"ETCD_ADAPTER_MAX_TXN_OPS": "zero"},
     "ETCD_ADAPTER_MAX_TXN_OPS: invalid literal for int() with base 10: 'zero'"),
    (["--listen", "2379"], None,
     "--listen 2379: not an address; write IP:PORT, e.g. 127.0.0.1:2379 (this host "
     "only) or 0.0.0.0:2379 (every interface)"),
    (["--listen-client-urls", "http://example.com:2379"], None,
     "--listen http://example.com:2379: expected IP in URL for binding (as etcd: an "
     "address such as 127.0.0.1 or 0.0.0.0, or localhost)"),
    (["--listen", "http://:2379"], None,
     "--listen http://:2379: expected IP in URL for binding (as etcd: an address such "
     "as 127.0.0.1 or 0.0.0.0, or localhost)"),
    (["--listen", "https://127.0.0.1:2379"], None,
     "--listen https://127.0.0.1:2379: https needs --cert-file and --key-file"),
    (["--listen", "tcp:2379:bogus=1"], None,
     "--listen tcp:2379:bogus=1: not a valid endpoint: _parseTCP() got an unexpected "
     "keyword argument 'bogus'"),
    (["--listen-metrics-urls", "127.0.0.1:99999"], None,
     "--listen-metrics-urls 127.0.0.1:99999: bad port '99999'"),
    (["--store", "pg://db"], None,
     "unsupported store URL 'pg://db' (supported: memory://, sqlite://, mysql://, "
     "tidb://, postgresql://, postgres://)"),
    (["--store", "mysql://root@127.0.0.1/etcd?pool=3"], None,
     "unknown mysql store option(s): pool"),
    (["--client-cert-policy", "/etc/policy.json"], None,
     "--client-cert-policy needs --client-cert-auth (with --cert-file, --key-file and "
     "--trusted-ca-file): without verified client certificates it would deny every "
     "request"),
    (["--config-file", "/nonexistent/etcd-adapter.yaml"], None,
     "--config-file /nonexistent/etcd-adapter.yaml: No such file or directory"),
]


@pytest.mark.parametrize("args,env,line", USAGE_ERRORS,
                         ids=[" ".join(a) or sorted(e)[0] for a, e, _ in USAGE_ERRORS])
def test_usage_errors_are_one_line(args, env, line):
    status, out, err = run(args, env)
    assert (status, out) == (2, "")
    assert one_line(err) == "etcd-adapter: " + line


def test_tls_file_errors_name_the_file_and_the_reason(pki):
    base = ["--cert-file", pki["cert"], "--key-file", pki["key"]]
    cases = [
        (["--cert-file", "/nonexistent/server.pem", "--key-file", pki["key"]],
         "--cert-file /nonexistent/server.pem: no such file or directory"),
        # A directory where the key should be (as root, an unreadable file reads).
        (["--cert-file", pki["cert"], "--key-file", pki["dir"]],
         "--key-file %s: is a directory" % pki["dir"]),
        (["--cert-file", pki["cert"], "--key-file", pki["other_key"]],
         "--key-file %s is not the key of --cert-file %s" % (pki["other_key"],
                                                                pki["cert"])),
        (["--cert-file", pki["garbage"], "--key-file", pki["key"]],
         "--cert-file %s: not a PEM certificate (" % pki["garbage"]),
        (base + ["--trusted-ca-file", "/nonexistent/ca.pem", "--client-cert-auth"],
         "--trusted-ca-file /nonexistent/ca.pem: no such file or directory"),
        (base + ["--listen", "http://127.0.0.1:2379"],
         "--listen http://127.0.0.1:2379: with --cert-file every listener serves TLS; "
         "write https://127.0.0.1:2379"),
    ]
    for args, line in cases:
        status, out, err = run(args)
        assert (status, out) == (2, ""), err
        assert one_line(err).startswith("etcd-adapter: " + line), (err, line)


def _as_nobody(args):
    """(status, stdout, stderr) of the command run as user nobody, or None where that
    cannot be done (not root, no setpriv, or nobody cannot run this install)."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        return None
    as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", BIN]
    r = subprocess.run(as_nobody + list(args), capture_output=True, text=True,
                       timeout=30, env=command.environment(), stdin=subprocess.DEVNULL)
    return r.returncode, r.stdout, r.stderr


def test_unreadable_key_file_names_the_reason():
    """A key only root may read, the adapter running as another user (systemd's
    DynamicUser=yes, which contrib/systemd uses): the OS's reason, as in the README's
    example, not OpenSSL's "system lib"."""
    probe = _as_nobody(["--version"])
    if probe is None or probe[0] != 0:
        why = "needs root, setpriv and an install user nobody can run"
        if in_ci():
            pytest.fail(why + " (CI=true: failing instead of skipping)")
        pytest.skip(why)
    d = tempfile.mkdtemp(prefix="etcdadapter-unreadable-")
    try:
        os.chmod(d, 0o755)
        cert, key, _ = CA(d).issue("server", "etcd-adapter", "server", ips=["127.0.0.1"])
        os.chmod(cert, 0o644)
        os.chmod(key, 0o600)
        status, out, err = _as_nobody(["--cert-file", cert, "--key-file", key,
                                       "--listen", "https://127.0.0.1:%d" % free_port()])
        assert (status, out) == (2, "")
        assert one_line(err) == "etcd-adapter: --key-file %s: permission denied" % key
    finally:
        shutil.rmtree(d)


def test_missing_driver_names_the_extra(tmp_path):
    # psycopg made unimportable, as in an install without the [postgresql] extra.
    (tmp_path / "sitecustomize.py").write_text(
        "import sys\nsys.modules['psycopg'] = None\n")
    status, out, err = run(["--store", "postgresql://etcd@127.0.0.1/etcd"],
                           {"PYTHONPATH": str(tmp_path)})
    assert (status, out) == (2, "")
    assert one_line(err) == (
        "etcd-adapter: postgresql:// needs the Python package psycopg, which is not "
        "installed: pip install 'etcd-adapter[postgresql]'")


def test_port_in_use_is_etcds_line():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    port = sock.getsockname()[1]
    try:
        status, out, err = run(["--listen-client-urls", "http://127.0.0.1:%d" % port])
        assert status == 1
        assert one_line(err) == ("etcd-adapter: listen tcp 127.0.0.1:%d: bind: address "
                                 "already in use" % port)
        assert "Traceback" not in out
        # The metrics port too.
        status, out, err = run(["--listen", "127.0.0.1:%d" % free_port(),
                                "--listen-metrics-urls", "http://127.0.0.1:%d" % port])
        assert status == 1
        assert one_line(err) == ("etcd-adapter: listen tcp 127.0.0.1:%d: bind: address "
                                 "already in use" % port)
    finally:
        sock.close()


def test_sqlite_folder_missing(tmp_path):
    path = tmp_path / "no-such-folder" / "etcd.db"
    status, out, err = run(["--store", "sqlite://%s" % path, "--listen",
                            "127.0.0.1:%d" % free_port()])
    assert status == 1
    folder = str(path.parent)
    assert one_line(err) == (
        "etcd-adapter: store sqlite:%s: folder %s does not exist; create it (mkdir -p "
        "%s) and let the adapter's user write there" % (path, folder, folder))


def test_unknown_environment_variable_is_warned_and_the_server_runs():
    port = free_port()
    server = Running(["--listen", "127.0.0.1:%d" % port],
                     {"ETCD_ADAPTER_STOR": "sqlite:///tmp/x.db",
                      # Kubernetes' variables for a Service named etcd-adapter: silent.
                      "ETCD_ADAPTER_SERVICE_HOST": "10.0.0.1",
                      "ETCD_ADAPTER_PORT": "tcp://10.0.0.1:2379",
                      "ETCD_ADAPTER_PORT_2379_TCP_ADDR": "10.0.0.1"})
    try:
        assert server.wait_http(port)[0] == 200
        assert one_line(server.stderr()) == (
            "etcd-adapter: warning: unknown environment variable ETCD_ADAPTER_STOR "
            "ignored (did you mean ETCD_ADAPTER_STORE?)")
        assert "store memory://" in server.stdout()
    finally:
        assert server.terminate() == 0


def test_serves_metrics_port_and_drains(tmp_path):
    """etcd's flag spellings, the metrics listener (version, process and has_leader
    gauges), the log on standard output, SIGTERM: status 0, nothing on stderr."""
    port, metrics_port = free_port(), free_port()
    server = Running(["--listen-client-urls", "http://127.0.0.1:%d" % port,
                      "--listen-metrics-urls", "http://127.0.0.1:%d" % metrics_port,
                      "--log-format", "json", "--log-level", "debug",
                      "--store", "sqlite://%s" % (tmp_path / "etcd.db")])
    try:
        status, body = server.wait_http(metrics_port, "/health")
        assert (status, body) == (200, '{"health":"true","reason":""}')
        status, text = get(metrics_port, "/metrics")
        assert status == 200
        assert metric(text, "etcd_server_has_leader") == 1
        assert metric(text, 'etcd_server_version{server_version="%s"}'
                      % SERVER_VERSION) == 1
        assert metric(text, 'etcd_adapter_version{version="%s"}' % __version__) == 1
        assert metric(text, "process_resident_memory_bytes") > 1e6
        assert metric(text, "process_open_fds") > 3
        assert metric(text, "process_start_time_seconds") > 1.7e9
        assert metric(text, "process_cpu_seconds_total") > 0
        # The v3 API is on the client port only.
        assert get(metrics_port, "/v3/kv/range")[0] == 404
        assert get(port, "/version")[0] == 200
        # etcdctl move-leader: Unimplemented, saying why.
        import grpc
        with grpc.insecure_channel("127.0.0.1:%d" % port) as channel:
            call = channel.unary_unary("/etcdserverpb.Maintenance/MoveLeader",
                                       request_serializer=lambda b: b,
                                       response_deserializer=lambda b: b)
            with pytest.raises(grpc.RpcError) as info:
                call(b"", timeout=5)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert info.value.details() == (
            "etcd-adapter has no raft leader to move: every adapter serves reads and "
            "writes from the shared store (README: Migrating from etcd)")
        events = [__import__("json").loads(line) for line in server.stdout().splitlines()]
        ready = [e for e in events if e.get("event") == "ready"]
        assert ready and ready[0]["version"] == __version__
        assert any(e.get("event") == "listening-metrics" for e in events)
    finally:
        assert server.terminate() == 0
    assert server.stderr() == ""
    assert '"event":"stopped"' in server.stdout()


def _levels(log_text):
    return {line.split(" ")[1] for line in log_text.splitlines()}


def test_log_level_filters_the_log():
    """--log-level, or ETCD_ADAPTER_LOG_LEVEL without any other option (issue 16: it
    did nothing without twistd's --logger): debug lines appear at debug only, info
    lines go at warn while warnings stay."""
    port = free_port()
    server = Running(["--listen", "127.0.0.1:%d" % port, "--log-level", "debug",
                      "--idle-timeout", "0.2"])
    try:
        server.wait_http(port)
        idle = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        idle.request("GET", "/version")     # kept alive, then idle: a debug line
        assert idle.getresponse().read()
        server.wait_log("closing idle connection from 127.0.0.1:")
        idle.close()
    finally:
        assert server.terminate() == 0
    assert {"debug", "info"} <= _levels(server.stdout())

    port = free_port()
    server = Running(["--listen", "127.0.0.1:%d" % port, "--idle-timeout", "0.2",
                      "--slow-request-threshold", "0.000001"],
                     {"ETCD_ADAPTER_LOG_LEVEL": "warn"})
    try:
        server.wait_http(port)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("POST", "/v3/kv/put", '{"key":"Zm9v","value":"YmFy"}')
        assert conn.getresponse().status == 200
        conn.close()
        server.wait_log("slow request: /etcdserverpb.KV/Put took ")
    finally:
        assert server.terminate() == 0
    assert server.stderr() == ""
    assert _levels(server.stdout()) == {"warn"}, server.stdout()


def test_twistd_keeps_working():
    port = free_port()
    env = command.environment({"PYTHONPATH": REPO_ROOT})
    proc = subprocess.run(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n",
         "--pidfile=", "etcd-adapter", "--listen", "127.0.0.1:%d" % port, "--version"],
        capture_output=True, text=True, env=env, timeout=30)
    assert proc.returncode == 0
    assert proc.stdout.startswith("etcd-adapter Version: %s\n" % __version__)


def test_mtls_client_port_and_plain_metrics_port(pki):
    """With --client-cert-auth, /health and /metrics answer on the metrics port without
    a certificate; a handshake without one on the client port is refused, counted and
    logged."""
    import ssl
    port, metrics_port = free_port(), free_port()
    server = Running(["--listen-client-urls", "https://127.0.0.1:%d" % port,
                      "--listen-metrics-urls", "http://127.0.0.1:%d" % metrics_port,
                      "--cert-file", pki["cert"], "--key-file", pki["key"],
                      "--trusted-ca-file", pki["ca"], "--client-cert-auth"])
    try:
        assert server.wait_http(metrics_port, "/health") == (
            200, '{"health":"true","reason":""}')
        ctx = ssl.create_default_context(cafile=pki["ca"])
        for _ in range(2):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
                with pytest.raises((ssl.SSLError, ConnectionError)):
                    with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                        tls.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                        if not tls.recv(100):
                            raise ConnectionError("closed")
        # With a client certificate the client port answers.
        ctx.load_cert_chain(pki["client"], pki["client_key"])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                tls.sendall(b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n")
                assert tls.recv(100).startswith(b"HTTP/1.1 200")
        text = get(metrics_port, "/metrics")[1]
        assert metric(text, "etcd_adapter_tls_handshakes_refused_total") == 2
        server.wait_log("refused 1 TLS handshake(s) (latest from 127.0.0.1:")
        # Rate-limited: the second refusal within 10 s is counted, not logged.
        assert server.stdout().count("TLS handshake(s)") == 1
        assert re.search(r"certificate", server.stdout())
    finally:
        assert server.terminate() == 0
