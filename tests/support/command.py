"""Run the installed ``etcd-adapter`` command as an operator would: a subprocess of the
console script next to this interpreter, real sockets, its standard output (the log)
and standard error (one line when it fails) kept apart."""

import http.client
import os
import signal
import subprocess
import sys
import tempfile
import time

from support import servers

BIN = os.path.join(os.path.dirname(sys.executable), "etcd-adapter")
PREFIX = "ETCD_ADAPTER_"


def environment(extra=None):
    """This process's environment without ETCD_ADAPTER_* variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(PREFIX)}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def run(args, env=None, timeout=30):
    """(exit status, stdout, stderr) of a run that is expected to end by itself."""
    r = subprocess.run([BIN] + list(args), capture_output=True, text=True,
                       timeout=timeout, env=environment(env), stdin=subprocess.DEVNULL)
    return r.returncode, r.stdout, r.stderr


def get(port, path, timeout=5):
    """(status, body text) of a plain HTTP GET on 127.0.0.1:port."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode("utf-8", "replace")
    finally:
        conn.close()


def metric(text, sample):
    """The value of ``sample`` (a metric name with its labels as exposed, e.g.
    ``etcd_server_has_leader`` or ``etcd_adapter_version{version="0.1.0"}``) in a
    Prometheus text page, or None."""
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name == sample:
            return float(value)
    return None


class Running(object):
    """``etcd-adapter ARGS`` (or ``program ARGS``) in the background."""

    def __init__(self, args, env=None, cwd=None, program=None):
        self.args = list(args)
        self.env = env
        self.dir = tempfile.mkdtemp(prefix="etcdadapter-cli-")
        self.out_path = os.path.join(self.dir, "stdout")
        self.err_path = os.path.join(self.dir, "stderr")
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen([program or BIN] + self.args, stdout=out,
                                         stderr=err, stdin=subprocess.DEVNULL,
                                         env=environment(env), cwd=cwd,
                                         start_new_session=True)

    def stdout(self):
        with open(self.out_path) as f:
            return f.read()

    def stderr(self):
        with open(self.err_path) as f:
            return f.read()

    def wait_http(self, port, path="/version", timeout=20):
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError("exited %s: %s\n%s" % (
                    self.proc.returncode, self.stderr(), self.stdout()))
            try:
                return get(port, path)
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError("no answer on %d: %s" % (port, self.stdout()))
                time.sleep(0.05)

    def wait_log(self, text, timeout=20):
        deadline = time.monotonic() + timeout
        while text not in self.stdout():
            assert self.proc.poll() is None, (self.stderr(), self.stdout())
            assert time.monotonic() < deadline, "%r not logged:\n%s" % (text, self.stdout())
            time.sleep(0.05)

    def terminate(self, timeout=10):
        """SIGTERM; the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self.kill()

    def kill(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


free_port = servers.free_port
