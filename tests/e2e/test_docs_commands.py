"""The shell commands of README.md and docs/ work when pasted: every block marked
``<!-- sh: NAME -->`` is run here, as a user would run it (:class:`support.docs.Paste`
says what differs from a user's terminal), against the installed ``etcd-adapter``
command, the local MariaDB and PostgreSQL and the real etcd/etcdctl.  (The blocks of
docs/etcd-snapshots.md run in tests/compat/test_snapshot.py, with the histories made
there.)
"""

import base64
import json
import os
import re
import socket
import subprocess
import time

import pytest
import yaml

from support import servers
from support import stores
from support.command import get, metric
from support.docs import DOCS, README, ROOT, Paste, marked

SH = marked("sh")
YAML = marked("yaml")


@pytest.fixture
def paste(tmp_path):
    p = Paste(tmp_path)
    yield p
    p.kill()


def check(paste):
    """The README's check: a put and /health through curl."""
    out = paste.run(SH["check"])
    put, health = out.splitlines()
    assert int(json.loads(put)["header"]["revision"]) > 0
    assert health == '{"health":"true","reason":""}'


def test_readme_opens_with_install_and_start():
    first = re.search(r"```sh\n(.*?)```", README, re.S).group(1)
    assert first.splitlines() == ["pip install .", "etcd-adapter"]
    assert re.findall(r"```sh\n(.*?)```", README, re.S)[1] == "./run-tests\n"


@pytest.mark.adapter
def test_start_and_check(paste):
    paste.run(SH["start"])
    check(paste)
    paste.stop()


@pytest.mark.adapter
def test_quickstart_sqlite(paste):
    paste.run(SH["quickstart-sqlite"])
    check(paste)
    paste.stop()
    assert os.path.getsize(os.path.join(paste.state, "etcd.db")) > 0


# What each database quick start creates, dropped afterwards ({name}: the paste's name).
QUICKSTART_DROPS = {
    "mariadb": ("DROP DATABASE IF EXISTS {name}", "DROP USER IF EXISTS '{name}'@'%'"),
    "postgresql": ("DROP DATABASE IF EXISTS {name}", "DROP ROLE IF EXISTS {name}"),
}


@pytest.mark.adapter
@pytest.mark.parametrize("kind", sorted(QUICKSTART_DROPS))
def test_quickstart_database(paste, kind):
    stores._require(kind)
    try:
        paste.run(SH["quickstart-" + kind])
        check(paste)
        paste.stop()
    finally:
        def drop(cur):
            for statement in QUICKSTART_DROPS[kind]:
                cur.execute(statement.format(name=paste.name))
        stores._admin(kind, drop)


@pytest.mark.adapter
def test_etcd_flag_spellings(paste):
    from support.servers import require_etcd_binaries
    require_etcd_binaries()
    paste.run(SH["etcd-flags"])
    status, text = get(paste.metrics_port, "/metrics")
    assert status == 200 and metric(text, "etcd_server_has_leader") == 1
    out = subprocess.run([servers.ETCDCTL_BIN, "--endpoints",
                          "http://127.0.0.1:%d" % paste.port, "member", "list"],
                         capture_output=True, text=True, timeout=30).stdout
    assert ", adapter-1, " in out and "http://127.0.0.1:%d" % paste.port in out
    # etcdctl member add: Unimplemented, saying why.
    member_add = subprocess.run(
        [servers.ETCDCTL_BIN, "--endpoints", "http://127.0.0.1:%d" % paste.port, "member",
         "add", "b", "--peer-urls", "http://127.0.0.1:1"], capture_output=True, text=True,
        timeout=30)
    assert member_add.returncode != 0
    assert ("Unimplemented desc = etcd-adapter's members are its processes: start or "
            "stop an adapter on the same store instead (docs/deployment.md)"
            in member_add.stderr), member_add.stderr
    paste.stop()


def _b64(text):
    return base64.b64encode(text.encode()).decode()


def _post(port, path, body, token=None):
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", path, json.dumps(body),
                     {"Authorization": token} if token else {})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


@pytest.mark.adapter
def test_apisix_auth(paste):
    """The etcdctl commands of docs/apisix.md, then APISIX's user and password from its
    config block: authenticated, may write its prefix only."""
    from support.servers import require_etcd_binaries
    require_etcd_binaries()
    paste.start(["--store", "sqlite://%s/etcd.db" % paste.state.replace(
        "var-lib-etcd-adapter", "")])
    paste.run(SH["apisix-auth"])
    etcd = yaml.safe_load(YAML["apisix-auth"])["deployment"]["etcd"]
    status, body = _post(paste.port, "/v3/auth/authenticate",
                         {"name": etcd["user"], "password": etcd["password"]})
    assert status == 200, body
    token = body["token"]
    status, _ = _post(paste.port, "/v3/kv/put", {"key": _b64(etcd["prefix"] + "/routes/1"),
                                                 "value": _b64("{}")}, token)
    assert status == 200
    status, body = _post(paste.port, "/v3/kv/put", {"key": _b64("/other"),
                                                    "value": _b64("x")}, token)
    assert (status, body["message"]) == (403, "etcdserver: permission denied")
    status, body = _post(paste.port, "/v3/kv/put", {"key": _b64("/apisix/x"),
                                                    "value": _b64("x")})
    assert status != 200
    paste.stop()


@pytest.mark.adapter
def test_migrating_with_make_mirror(paste):
    """``etcdctl make-mirror`` from a real etcd into the adapter: the keys arrive (with
    the adapter's revisions), and later writes to etcd follow."""
    from support.servers import require_etcd_binaries
    require_etcd_binaries()
    etcd = servers.EtcdServer("docs-mirror")
    etcd.start()
    try:
        ctl = [servers.ETCDCTL_BIN, "--endpoints", etcd.client_url]
        for i in range(3):
            subprocess.run(ctl + ["put", "/apisix/routes/%d" % i, "r%d" % i], check=True,
                           capture_output=True, timeout=30)
        subprocess.run(ctl + ["put", "/other", "not copied"], check=True,
                       capture_output=True, timeout=30)
        paste.start([])
        command = paste.text(SH["migrate"]).strip().replace(
            "http://etcd.internal:%d" % paste.port, etcd.client_url)
        mirror = subprocess.Popen(["bash", "-c", "exec " + command],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  env=dict(os.environ, **paste.env))
        try:
            adapter = [servers.ETCDCTL_BIN, "--endpoints",
                       "http://127.0.0.1:%d" % paste.port]

            def keys():
                out = subprocess.run(adapter + ["get", "--prefix", "/"],
                                     capture_output=True, text=True, timeout=30).stdout
                return out.splitlines()
            wait_for(lambda: len(keys()) == 6)
            assert keys() == ["/apisix/routes/0", "r0", "/apisix/routes/1", "r1",
                              "/apisix/routes/2", "r2"]
            subprocess.run(ctl + ["put", "/apisix/routes/9", "later"], check=True,
                           capture_output=True, timeout=30)
            wait_for(lambda: "/apisix/routes/9" in keys())
        finally:
            mirror.terminate()
            mirror.wait(10)
        paste.stop()
    finally:
        etcd.stop()
        etcd.cleanup()


@pytest.mark.adapter
def test_kubernetes_pod_probes(paste):
    """The pod of docs/deployment.md: its probes point at the metrics port the adapter's
    arguments open, and answer there."""
    block = YAML["kubernetes-pod"]
    pod = yaml.safe_load(re.sub(r"\b9379\b", str(paste.metrics_port), paste.text(block)))
    container = pod["spec"]["containers"][0]
    assert container["command"] == ["etcd-adapter"]
    port = paste.metrics_port
    assert container["ports"][0]["containerPort"] == port
    assert container["readinessProbe"]["httpGet"]["port"] == port
    assert container["livenessProbe"]["tcpSocket"]["port"] == port
    assert container["startupProbe"]["httpGet"]["port"] == port
    args = [a.replace("0.0.0.0", "127.0.0.1") for a in container["args"]]
    paste.env["ETCD_ADAPTER_STORE"] = "memory://"    # the Secret's store URL
    paste.start(args)
    assert get(port, container["readinessProbe"]["httpGet"]["path"]) == (
        200, '{"health":"true","reason":""}')
    assert get(port, container["startupProbe"]["httpGet"]["path"])[0] == 200
    socket.create_connection(("127.0.0.1", port), timeout=5).close()
    paste.stop()


# Shell blocks that are not run, by (file, first line), with why.  Any other shell block
# in README.md or docs/ must be marked ``<!-- sh: NAME -->`` and so run above.
NOT_RUN = {
    ("README.md", "./run-tests"): "the suite itself (.ci/run runs it); checked to be "
                                  "the README's second command",
    ("README.md", 'E="etcdctl --endpoints=http://127.0.0.1:2379"'):
        "a tour: a lease ID to fill in, a watch that runs until Ctrl-C",
    ("README.md", "curl -s localhost:2379/v3/kv/put   -d "
                  "'{\"key\":\"Zm9v\",\"value\":\"YmFy\"}'      # foo=bar"):
        "a tour with a watch that runs until Ctrl-C",
    ("README.md", "mysql -h tidb.internal -P 4000 -u root -p <<'SQL'"): "no TiDB here",
    ("README.md", ".venv/bin/python proto/generate.py"):
        "regenerates etcdadapter/pb (tests/unit/test_generated_protos.py)",
    ("README.md", ".venv/bin/python bench/bench.py                 # etcd vs. adapter, "
                  "5 s per workload"): "benchmarks, minutes each",
    ("README.md", "twistd -n --pidfile= --logger etcdadapter.logs.json etcd-adapter ..."
                  "   # JSON lines"): "options left out (...)",
}


def test_every_shell_block_is_run_or_says_why_not():
    found = set()
    for name, text in [("README.md", README)] + [("docs/" + n, t) for n, t in
                                                  DOCS.items()]:
        for m in re.finditer(r"(<!-- sh: [\w-]+ -->\n)?```(?:sh|bash|shell|console)\n"
                             r"(.*?)```", text, re.S):
            if m.group(1):
                continue
            key = (name, m.group(2).splitlines()[0])
            assert key in NOT_RUN, "shell block neither marked nor in NOT_RUN: %r" % (key,)
            found.add(key)
    assert found == set(NOT_RUN), set(NOT_RUN) - found


def test_policy_and_store_options_in_the_readme_are_accepted():
    from etcdadapter.security.cert_policy import CertPolicy
    from etcdadapter.store.urls import StoreURLError, open_store
    policy = CertPolicy.from_json(json.loads(marked("json")["cert-policy"]))
    assert len(policy.rules) == 3 and policy.default is not None
    table = README[README.index("#### Store URL options"):]
    table = table[:table.index("\n\n", table.index("| parameter |"))]
    names = re.findall(r"^\| `(\w+)` \|", table, re.M)
    assert names == ["poll_interval", "pool_size", "write_pool_size", "initial_revision",
                     "compact_batch"]
    for name in names:
        try:
            open_store("mysql://root@127.0.0.1/etcd?%s=2" % name)
        except StoreURLError as e:
            raise AssertionError("%s: %s" % (name, e))


def test_every_store_url_option_is_in_the_readme():
    """Each URL option a store accepts is named in the README's "Store URL options"
    (issue 16: they were documented in source files only).  The candidates are the
    names in the URL parsers' source; a name is an option of a scheme if open_store
    does not call it unknown there."""
    import ast
    from etcdadapter.store.urls import StoreURLError, open_store
    names = set()
    for path in ("etcdadapter/store/sql/__init__.py", "etcdadapter/store/urls.py"):
        with open(os.path.join(ROOT, path)) as f:
            names |= {n.value for n in ast.walk(ast.parse(f.read()))
                      if isinstance(n, ast.Constant) and isinstance(n.value, str)
                      and re.fullmatch(r"[a-z][a-z_]*[a-z]", n.value)}
    section = README[README.index("#### Store URL options"):]
    section = section[:section.index("\n### ")]
    documented = set(re.findall(r"`(\w+)`", section))
    bases = ["memory://", "sqlite:///nonexistent/etcd.db", "mysql://root@127.0.0.1/etcd",
             "tidb://root@127.0.0.1/etcd", "postgresql://postgres@127.0.0.1/etcd"]
    accepted = {}
    for base in bases:
        for name in sorted(names):
            try:    # a value no option takes: known names fail on it, or take it
                open_store("%s?%s=/nonexistent/x" % (base, name))
            except StoreURLError as e:
                if re.match(r"unknown \w+ store option\(s\): ", str(e)):
                    continue
            accepted.setdefault(name, []).append(base.partition(":")[0])
    assert {"pool_size", "floor_file", "sslmode", "busy_timeout"} <= set(accepted)
    missing = {name: schemes for name, schemes in accepted.items()
               if name not in documented}
    assert not missing, missing


def wait_for(predicate, timeout=20):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in %ss" % timeout
        time.sleep(0.2)
