"""A real 3-node MariaDB Galera cluster on loopback, for the distributed-database tests.

:class:`GaleraCluster` runs three ``mariadbd`` processes (as the ``mysql`` user: as root
the rsync state transfer drops to ``nobody`` and cannot write the joiner's datadir), each
with its own datadir, socket and ports under one temporary directory.  Node 1 is
initialised and bootstraps the cluster (``--wsrep-new-cluster``); nodes 2 and 3 start
empty and receive a full copy (SST, rsync).  Every wait is bounded; :meth:`stop` ends the
processes by PID (TERM, then KILL).

:func:`cluster` is the test modules' entry: it skips when Galera is not installed, unless
``CI=true`` (then it fails).  What the adapter relies on from Galera, and what the tests
assert: docs/deployment.md, "MariaDB Galera".
"""

import atexit
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time

import pymysql
import pytest

from support import servers

MARIADBD = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
INSTALL_DB = shutil.which("mariadb-install-db") or "/usr/bin/mariadb-install-db"
PROVIDER = "/usr/lib/galera/libgalera_smm.so"
START_TIMEOUT = 30.0          # one node to Synced (a join includes the SST)
STOP_TIMEOUT = 15.0

_CNF = """\
[mysqld]
user=mysql
datadir={dir}/data
socket={dir}/mysqld.sock
pid-file={dir}/mysqld.pid
log-error={dir}/error.log
port={port}
bind-address=127.0.0.1
skip-name-resolve
skip-log-bin
innodb_buffer_pool_size=32M
innodb_log_file_size=16M
innodb_flush_log_at_trx_commit=2
max_connections=200
performance_schema=OFF
binlog_format=ROW
default_storage_engine=InnoDB
innodb_autoinc_lock_mode=2
wsrep_on=ON
wsrep_provider={provider}
wsrep_cluster_name=etcdadapter_test
wsrep_cluster_address=gcomm://{peers}
wsrep_node_address=127.0.0.1:{gport}
wsrep_node_name=node{n}
wsrep_provider_options="gmcast.listen_addr=tcp://127.0.0.1:{gport};ist.recv_addr=127.0.0.1:{ist};gcache.size=32M"
wsrep_sst_method=rsync
wsrep_sst_receive_address=127.0.0.1:{sst}
wsrep_slave_threads=2
"""


def missing():
    """What is missing to run a cluster here (None: nothing)."""
    for path in (MARIADBD, INSTALL_DB, PROVIDER):
        if not os.path.exists(path):
            return path
    if shutil.which("rsync") is None:
        return "rsync"
    try:
        import pwd
        pwd.getpwnam("mysql")
    except KeyError:
        return "the mysql user"
    if os.geteuid() != 0:
        return "root (to run the nodes as the mysql user)"
    return None


class Node(object):
    def __init__(self, cluster, n):
        self.cluster = cluster
        self.n = n
        self.dir = os.path.join(cluster.dir, "node%d" % n)
        self.port = servers.free_port()
        self.gport = servers.free_port()
        self.ist = servers.free_port()
        self.sst = servers.free_port()
        self.proc = None

    def url(self, database, scheme="mysql", query=""):
        return "%s://root@127.0.0.1:%d/%s%s" % (scheme, self.port, database,
                                                ("?" + query) if query else "")

    def write_config(self):
        os.makedirs(os.path.join(self.dir, "data"), exist_ok=True)
        peers = ",".join("127.0.0.1:%d" % node.gport for node in self.cluster.nodes)
        with open(os.path.join(self.dir, "my.cnf"), "w") as f:
            f.write(_CNF.format(dir=self.dir, port=self.port, provider=PROVIDER,
                                peers=peers, gport=self.gport, n=self.n, ist=self.ist,
                                sst=self.sst))

    def launch(self, bootstrap=False):
        args = [MARIADBD, "--defaults-file=" + os.path.join(self.dir, "my.cnf")]
        if bootstrap:
            args.append("--wsrep-new-cluster")
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)

    def connect(self, timeout=2.0):
        """A root connection over the node's socket (autocommit)."""
        return pymysql.connect(unix_socket=os.path.join(self.dir, "mysqld.sock"),
                               user="root", autocommit=True, connect_timeout=timeout,
                               read_timeout=30, write_timeout=30)

    def query(self, sql, args=None):
        conn = self.connect()
        try:
            with conn.cursor() as c:
                c.execute(sql, args)
                return c.fetchall()
        finally:
            conn.close()

    def status(self, name):
        rows = self.query("SHOW STATUS LIKE %s", (name,))
        return rows[0][1] if rows else None

    def wait_synced(self, size=None, timeout=START_TIMEOUT):
        """Until the node is Synced (in a cluster of ``size`` nodes, if given)."""
        deadline = time.monotonic() + timeout
        last = None
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError("galera node %d exited (%s):\n%s"
                                     % (self.n, self.proc.returncode, self.log_tail()))
            try:
                state = self.status("wsrep_local_state_comment")
                cluster = int(self.status("wsrep_cluster_size") or 0)
                ready = self.status("wsrep_ready")
                last = (state, cluster, ready)
                if state == "Synced" and ready == "ON" and (size is None
                                                            or cluster == size):
                    return
            except pymysql.err.MySQLError as e:
                last = e
            if time.monotonic() > deadline:
                raise AssertionError("galera node %d not synced after %.0fs (%s):\n%s"
                                     % (self.n, timeout, last, self.log_tail()))
            time.sleep(0.2)

    def log_tail(self, lines=30):
        try:
            with open(os.path.join(self.dir, "error.log"), errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return "(no log)"

    def start(self, size=None):
        """(Re)start the node; it joins the cluster (IST or SST) and is Synced."""
        self.launch()
        self.wait_synced(size)

    def kill(self):
        """SIGKILL (and reap) the node."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(STOP_TIMEOUT)

    def stop(self):
        p = self.proc
        if p is None or p.poll() is not None:
            return
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(STOP_TIMEOUT)

    def isolate(self, on):
        """Cut the node off the group (it loses quorum: non-primary) or rejoin it."""
        self.query("SET GLOBAL wsrep_provider_options = %s",
                   ("gmcast.isolate=%d" % (1 if on else 0),))

    def pause_applier(self, seconds):
        """Hold the node's applier for ``seconds`` (a thread holds a global read lock):
        it lags the others meanwhile.  Returns the thread (join it)."""
        started = threading.Event()

        def hold():
            conn = self.connect()
            try:
                with conn.cursor() as c:
                    c.execute("FLUSH TABLES WITH READ LOCK")
                    started.set()
                    c.execute("SELECT SLEEP(%s)", (seconds,))
                    c.execute("UNLOCK TABLES")
            finally:
                started.set()
                conn.close()
        t = threading.Thread(target=hold, daemon=True)
        t.start()
        assert started.wait(10), "FLUSH TABLES WITH READ LOCK did not return"
        return t


class GaleraCluster(object):
    def __init__(self, size=3):
        self.dir = tempfile.mkdtemp(prefix="galera-")
        os.chmod(self.dir, 0o755)            # the mysql user walks into it
        self.nodes = []
        for n in range(1, size + 1):
            self.nodes.append(Node(self, n))

    def start(self):
        first = self.nodes[0]
        for node in self.nodes:
            node.write_config()
        subprocess.run([INSTALL_DB, "--no-defaults", "--user=mysql", "--auth-root-"
                        "authentication-method=socket", "--skip-test-db",
                        "--datadir=" + os.path.join(first.dir, "data")],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       timeout=60)
        subprocess.run(["chown", "-R", "mysql:mysql", self.dir], check=True)
        first.launch(bootstrap=True)
        first.wait_synced(1)
        first.query("CREATE USER IF NOT EXISTS 'root'@'127.0.0.1'")
        first.query("GRANT ALL ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION")
        # The joiners one at a time: each takes a full copy from a donor.
        for i, node in enumerate(self.nodes[1:], 2):
            node.start(i)
        for node in self.nodes:
            node.wait_synced(len(self.nodes))

    def create_database(self, name):
        self.nodes[0].query("CREATE DATABASE `%s`" % name)
        return [node.url(name) for node in self.nodes]

    def stop(self):
        for node in self.nodes:
            try:
                node.stop()
            except Exception:
                pass
        shutil.rmtree(self.dir, ignore_errors=True)

    def logs(self):
        return "\n".join("--- galera node %d\n%s" % (n.n, n.log_tail())
                         for n in self.nodes)


def cluster():
    """A started 3-node cluster (the caller stops it), or skip/fail as the environment
    says."""
    what = missing()
    if what is not None:
        if servers.in_ci():
            pytest.fail("Galera tests need %s (CI=true)" % what)
        pytest.skip("Galera is not installed here (%s missing)" % what)
    c = GaleraCluster()
    atexit.register(c.stop)          # a test run ended early leaves no server behind
    try:
        c.start()
    except BaseException:
        logs = c.logs()
        c.stop()
        raise AssertionError("the Galera cluster did not start:\n" + logs)
    return c
