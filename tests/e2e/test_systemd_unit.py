"""contrib/systemd/etcd-adapter.service: valid for systemd, and its service runs the way
systemd would run it.

No systemd runs as PID 1 here (no ``systemd-run``), so the test does systemd's part
itself, from the unit file: ``systemd-analyze verify`` on the unit (ExecStart pointed at
this interpreter's etcd-adapter), then the ExecStart command with the unit's ``Environment=``,
an ``EnvironmentFile=`` of ETCD_ADAPTER_* lines, the state directory as working
directory, an unprivileged user (as root: ``nobody``, standing in for ``DynamicUser``),
and a notify socket (``Type=notify``): READY=1 only once it serves, STOPPING=1 at the
``KillSignal``, exit status 0 (no restart) well within ``TimeoutStopSec``; a start that
fails exits non-zero (``Restart=on-failure`` restarts it).
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from support import servers
from etcdadapter.pb.etcdserverpb import rpc_pb2 as rpc

UNIT = os.path.join(servers.REPO_ROOT, "contrib", "systemd", "etcd-adapter.service")
INSTALLED_BIN = "/opt/etcd-adapter/bin/"


def unit_entries():
    """[(section, key, value)] of the unit, in order (keys may repeat)."""
    out, section, pending = [], None, ""
    with open(UNIT) as f:
        for raw in f:
            line = pending + raw.rstrip("\n")
            pending = ""
            if line.endswith("\\"):
                pending = line[:-1] + " "
                continue
            line = line.strip()
            if not line or line[0] in "#;":
                continue
            if line.startswith("["):
                section = line.strip("[]")
                continue
            key, _, value = line.partition("=")
            out.append((section, key.strip(), value.strip()))
    return out


def service(key):
    return [v for s, k, v in unit_entries() if s == "Service" and k == key]


def local_unit(tmp_path):
    """The unit with ExecStart pointing at this interpreter's etcd-adapter."""
    text = open(UNIT).read().replace(INSTALLED_BIN, os.path.dirname(sys.executable) + "/")
    path = tmp_path / "etcd-adapter.service"
    path.write_text(text)
    return path


def test_unit_declares_the_hardening():
    entries = {(s, k): v for s, k, v in unit_entries()}
    for key, value in [("Type", "notify"), ("NotifyAccess", "main"),
                       ("Restart", "on-failure"), ("DynamicUser", "yes"),
                       ("ProtectSystem", "strict"), ("ProtectHome", "yes"),
                       ("NoNewPrivileges", "yes"), ("PrivateTmp", "yes"),
                       ("StateDirectory", "etcd-adapter"), ("KillSignal", "SIGTERM")]:
        assert entries.get(("Service", key)) == value, key
    assert entries[("Install", "WantedBy")] == "multi-user.target"
    # The etcd-adapter command: foreground, no pid file, one-line start-up errors.
    assert service("ExecStart") == [INSTALLED_BIN + "etcd-adapter"]
    # The drain (10 s by default) fits in the stop timeout.
    assert int(entries[("Service", "TimeoutStopSec")]) > 10


def test_systemd_analyze_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        message = "systemd-analyze is not installed (Debian: apt-get install systemd)"
        if servers.in_ci():
            pytest.fail(message + " (CI=true: .ci/run installs it)")
        pytest.skip(message)
    result = subprocess.run([analyze, "verify", str(local_unit(tmp_path))],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def _environment(env_file):
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
           "PYTHONPATH": servers.REPO_ROOT}
    for assignment in service("Environment"):
        k, _, v = assignment.partition("=")
        env[k] = v
    with open(env_file) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                k, _, v = line.partition("=")
                env[k] = v
    return env


def _command():
    argv = service("ExecStart")[0].split()
    argv[0] = argv[0].replace(INSTALLED_BIN, os.path.dirname(sys.executable) + "/")
    return argv


def _as_service_user(argv, state_dir):
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        return argv
    os.chown(state_dir, 65534, 65534)
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] + argv


class NotifySocket(object):
    def __init__(self, path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        os.chmod(self.path, 0o777)

    def receive(self, timeout):
        self.sock.settimeout(timeout)
        data = self.sock.recv(4096).decode()
        return dict(line.split("=", 1) for line in data.splitlines())

    def close(self):
        self.sock.close()


@pytest.fixture
def service_dir():
    """A directory the service user can reach (pytest's tmp dirs are root-only)."""
    import pathlib
    import tempfile
    d = tempfile.mkdtemp(prefix="etcd-adapter-unit-")
    os.chmod(d, 0o755)
    yield pathlib.Path(d)
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.adapter
def test_service_runs_as_systemd_runs_it(service_dir):
    tmp_path = service_dir
    state = tmp_path / "state"
    state.mkdir()
    port = servers.free_port()
    env_file = tmp_path / "etcd-adapter.default"
    env_file.write_text("ETCD_ADAPTER_LISTEN=tcp:%d:interface=127.0.0.1\n"
                        "ETCD_ADAPTER_STORE=sqlite://%s/etcd.db\n" % (port, state))
    notify = NotifySocket(tmp_path / "notify")
    env = _environment(env_file)
    env["NOTIFY_SOCKET"] = notify.path
    log = open(tmp_path / "journal", "wb")
    proc = subprocess.Popen(_as_service_user(_command(), str(state)), cwd=str(state),
                            env=env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        ready = notify.receive(30)
        assert ready["READY"] == "1", ready
        assert ready["STATUS"] == "serving sqlite://%s/etcd.db on http://127.0.0.1:%d" % (
            state, port)
        # READY means serving: the very next request is answered.
        with servers.GrpcClient("127.0.0.1:%d" % port) as c:
            r = c.call("/etcdserverpb.KV/Put", rpc.PutRequest(key=b"unit", value=b"ok"),
                       rpc.PutResponse)
            assert r.ok, r
        assert os.path.exists(state / "etcd.db")
        if os.geteuid() == 0 and shutil.which("setpriv"):
            assert os.stat(state / "etcd.db").st_uid == 65534
        t = time.monotonic()
        proc.send_signal(getattr(signal, service("KillSignal")[0]))
        stopping = notify.receive(10)
        assert stopping["STOPPING"] == "1", stopping
        proc.wait(int(service("TimeoutStopSec")[0]))
        assert proc.returncode == 0          # success: Restart=on-failure leaves it
        assert time.monotonic() - t < 5
        lines = open(tmp_path / "journal").read().splitlines()
        assert any("etcd-adapter ready" in line for line in lines)
        assert all(line[:4].isdigit() for line in lines), lines  # one line per event
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
        notify.close()

    # A start that fails (a bad option in the environment file) exits non-zero, so
    # Restart=on-failure tries again.
    env_file.write_text("ETCD_ADAPTER_STORE=nosuch://x\n")
    result = subprocess.run(_as_service_user(_command(), str(state)), cwd=str(state),
                            env=_environment(env_file), capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    assert result.stderr == ("etcd-adapter: unsupported store URL 'nosuch://x' (supported: "
                             "memory://, sqlite://, mysql://, tidb://, postgresql://, "
                             "postgres://)\n")
