"""The marked blocks of README.md and docs/, and running their shell commands as pasted.

A block marked ``<!-- KIND: NAME -->`` just above a fence (```` ```sh ````, ```` ```yaml
````, ...) is the doc's own text that tests parse or run (:func:`marked`).
:class:`Paste` runs an ``sh`` block as a user would paste it, against the installed
``etcd-adapter`` command, the local MariaDB and PostgreSQL and the real etcd/etcdctl.

What differs from a user's terminal, and only that (``Paste.text``):

* ports: ``2379``, ``2380`` and ``9379`` become free ports; a bare ``etcd-adapter``
  (default 127.0.0.1:2379) gets ``ETCD_ADAPTER_LISTEN=127.0.0.1:<port>``;
* names: the database and user ``etcd_adapter`` become a fresh ``ops16_docs_<hex>`` (and
  are dropped afterwards); ``/var/lib/etcd-adapter`` and ``/var/lib/etcd`` temporary
  folders; the commands run in a temporary folder of their own (relative paths);
* ``sudo mysql`` / ``sudo -u postgres psql`` become the local servers' administrator
  (``mysql -h 127.0.0.1 -u root``, ``psql -h 127.0.0.1 -U postgres``); any other
  ``sudo`` is dropped (the tests run as root);
* ``pip install ...`` is not run (the test's own install is there); the extra it names
  must exist in setup.cfg;
* what a test puts in ``Paste.replace`` (a doc's placeholder host, URL or password),
  replaced first.

A line starting with ``etcd-adapter`` and no subcommand, or with ``etcd``, starts a
server in the background (and must serve on the paste's 2379); the other lines of a
block run in one ``bash -euo pipefail`` script.
"""

import configparser
import os
import re
import shlex
import subprocess
import sys
import uuid

from support import servers
from support.command import Running, free_port

ROOT = servers.REPO_ROOT
README = open(os.path.join(ROOT, "README.md")).read()
DOCS = {name: open(os.path.join(ROOT, "docs", name)).read()
        for name in sorted(os.listdir(os.path.join(ROOT, "docs"))) if name.endswith(".md")}

# ``etcd-adapter SUBCOMMAND ...`` runs and ends; a bare ``etcd-adapter`` serves.
SUBCOMMANDS = ("snapshot", "migrate")


def marked(kind, lang=None):
    """{name: text} of the blocks marked ``<!-- KIND: NAME -->`` in README and docs."""
    out = {}
    for text in [README] + list(DOCS.values()):
        pattern = r"<!-- %s: ([\w-]+) -->\n```%s\n(.*?)```" % (kind, lang or kind)
        for m in re.finditer(pattern, text, re.S):
            assert m.group(1) not in out, "two %s blocks named %s" % (kind, m.group(1))
            out[m.group(1)] = m.group(2)
    return out


def extras():
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    return {k for k in cfg["options.extras_require"]}


class Paste(object):
    """One user's session: the substitutions, the servers started, the clean-up."""

    def __init__(self, tmp_path):
        self.port = free_port()
        self.peer_port = free_port()
        self.metrics_port = free_port()
        self.name = "ops16_docs_" + uuid.uuid4().hex[:8]
        self.state = str(tmp_path / "var-lib-etcd-adapter")
        self.etcd_data = str(tmp_path / "var-lib-etcd")
        self.cwd = str(tmp_path / "home")
        os.makedirs(self.cwd, exist_ok=True)
        self.replace = {}
        self.servers = []           # etcd-adapter: must stop cleanly, nothing on stderr
        self.others = []            # etcd: logs on stderr
        self.env = {"PATH": os.path.dirname(sys.executable) + os.pathsep
                    + os.environ.get("PATH", "")}

    def text(self, block):
        for placeholder, value in self.replace.items():
            block = block.replace(placeholder, value)
        block = block.replace("sudo mysql", "mysql -h 127.0.0.1 -u root")
        block = block.replace("sudo -u postgres psql",
                              "psql -h 127.0.0.1 -U postgres -v ON_ERROR_STOP=1")
        block = re.sub(r"^sudo ", "", block, flags=re.M)      # the tests run as root
        block = re.sub(r"\betcd_adapter\b", self.name, block)
        block = block.replace("/var/lib/etcd-adapter", self.state)
        block = re.sub(r"/var/lib/etcd\b", self.etcd_data, block)
        block = block.replace(":2379", ":%d" % self.port)
        block = block.replace(":2380", ":%d" % self.peer_port)
        return block.replace(":9379", ":%d" % self.metrics_port)

    def run(self, block):
        """Run a block: scripts in bash, server lines in the background.  The script
        outputs, joined."""
        outputs = []
        script = []
        for line in lines(self.text(block)):
            if line.startswith("pip install"):
                for extra in re.findall(r"\[(\w+)\]", line):
                    assert extra in extras(), line
                continue
            first = line.split(None, 2)
            if first[0] == "etcd" or (first[0] == "etcd-adapter"
                                      and first[1:2] not in [[s] for s in SUBCOMMANDS]):
                outputs.append(self.script(script))
                script = []
                if first[0] == "etcd":
                    self.start_etcd(shlex.split(line)[1:])
                else:
                    self.start(shlex.split(line)[1:])
            else:
                script.append(line)
        outputs.append(self.script(script))
        return "".join(outputs)

    def script(self, lines):
        if not lines:
            return ""
        env = dict(os.environ, **self.env)
        r = subprocess.run(["bash", "-euo", "pipefail", "-c", "\n".join(lines)],
                           capture_output=True, text=True, env=env, timeout=60,
                           cwd=self.cwd)
        assert r.returncode == 0, (lines, r.stdout, r.stderr)
        return r.stdout

    def start(self, args):
        env = dict(self.env)
        if not any(a.startswith(("--listen", "--config-file")) for a in args):
            env["ETCD_ADAPTER_LISTEN"] = "127.0.0.1:%d" % self.port
        server = Running(args, env, cwd=self.cwd)
        self.servers.append(server)
        server.wait_http(self.port)
        return server

    def start_etcd(self, args):
        """A real etcd with the doc's flags; ready when its client port (the paste's
        2379) says it is healthy (it has a leader)."""
        servers.require_etcd_binaries()
        server = Running(args, self.env, cwd=self.cwd, program=servers.ETCD_BIN)
        self.others.append(server)
        servers.wait_until(lambda: server.wait_http(self.port, "/health")[0] == 200,
                           timeout=20, what="etcd healthy", interval=0.1)
        return server

    def stop(self):
        for server in self.servers:
            assert server.terminate() == 0, server.stdout()
            assert server.stderr() == "", server.stderr()
        for server in self.others:
            server.kill()

    def kill(self):
        for server in self.servers + self.others:
            server.kill()


def lines(text):
    """Shell commands: continuation lines joined, a here-document kept with its
    command."""
    out, heredoc = [], None
    for line in text.replace("\\\n", " ").splitlines():
        if heredoc is not None:
            out[-1] += "\n" + line
            if line.strip() == heredoc:
                heredoc = None
            continue
        m = re.search(r"<<-?'?(\w+)'?", line)
        if line.strip():
            out.append(line)
        if m:
            heredoc = m.group(1)
    return out
