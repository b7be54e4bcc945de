"""The backup commands of docs/deployment.md, per SQL store: taken while an adapter
runs, restored into a fresh database, and an adapter on the copy serves the same keys,
the same revision and the same history (a watch replaying from the first revision)."""

import os
import subprocess
import time
import uuid
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from support import servers
from support import stores
from etcdadapter.pb.etcdserverpb import rpc_pb2 as rpc
from support.multi import Watcher
from support.stores import create_database

pytestmark = pytest.mark.adapter

KV = "/etcdserverpb.KV/"


def run(argv, **kw):
    kw.setdefault("stdout", subprocess.PIPE)
    result = subprocess.run(argv, stderr=subprocess.PIPE, timeout=120, **kw)
    assert result.returncode == 0, (argv, result.stderr.decode(errors="replace"))
    return result


def backup_and_restore(kind, url, tmp_path):
    """Back up the database at ``url`` with the documented command and restore it into
    a new one; returns (URL of the copy, cleanup)."""
    if kind == "sqlite":
        path = urlsplit(url).path
        copy = str(tmp_path / "restored.db")
        run(["sqlite3", path, ".backup %s" % copy])
        return "sqlite://" + copy, lambda: None
    u = urlsplit(url)
    new = "etcdadapter_test_" + uuid.uuid4().hex[:12]
    dump = str(tmp_path / "dump")
    if kind == "mariadb":
        conn = ["-h", u.hostname, "-P", str(u.port), "-u", u.username or "root"]
        name = u.path.lstrip("/")
        with open(dump, "wb") as f:
            run(["mysqldump", "--single-transaction"] + conn + [name], stdout=f)
        stores._admin(kind, lambda cur: cur.execute("CREATE DATABASE " + new))
        with open(dump, "rb") as f:
            run(["mysql"] + conn + [new], stdin=f)
        return url.replace("/" + name, "/" + new), lambda: stores._admin(
            kind, lambda cur: cur.execute("DROP DATABASE IF EXISTS " + new))
    # PostgreSQL: the tests keep each store in its own schema of a session database.
    db = u.path.lstrip("/")
    schema = unquote(parse_qs(u.query)["options"][0]).split("=", 1)[1]
    env = dict(os.environ, PGHOST=u.hostname, PGPORT=str(u.port), PGUSER=u.username)
    run(["pg_dump", "--format=custom", "--schema=" + schema, "--file=" + dump, db], env=env)
    stores._admin(kind, lambda cur: cur.execute("CREATE DATABASE " + new))
    run(["pg_restore", "--dbname=" + new, dump], env=env)
    return url.replace("/%s?" % db, "/%s?" % new), lambda: stores._admin(
        kind, lambda cur: cur.execute("DROP DATABASE IF EXISTS %s WITH (FORCE)" % new))


TOOLS = {"sqlite": ["sqlite3"], "mariadb": ["mysqldump", "mysql"],
         "postgresql": ["pg_dump", "pg_restore"]}


@pytest.fixture(params=["sqlite", "mariadb", "postgresql"])
def database(request, tmp_path):
    import shutil
    kind = request.param
    missing = [t for t in TOOLS[kind] if shutil.which(t) is None]
    if missing:
        message = "backup tools not installed: %s" % ", ".join(missing)
        if servers.in_ci():
            pytest.fail(message + " (CI=true: failing instead of skipping)")
        pytest.skip(message)
    if kind == "sqlite":
        return kind, "sqlite://%s/etcd.db" % tmp_path
    url, drop = create_database(kind)
    request.addfinalizer(drop)
    return kind, url


def snapshot(server, first):
    with servers.GrpcClient(server.endpoint) as c:
        r = c.call(KV + "Range", rpc.RangeRequest(key=b"/apisix/", range_end=b"/apisix0"),
                   rpc.RangeResponse)
        assert r.ok, r
    kvs = [(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version)
           for kv in r.response.kvs]
    w = Watcher(server, key=b"/apisix/", range_end=b"/apisix0", start_revision=first)
    try:
        w.wait_for(r.response.header.revision)
        time.sleep(0.2)
        return r.response.header.revision, kvs, list(w.events)
    finally:
        w.close()


def test_backup_restores_keys_revision_and_history(database, tmp_path, request):
    kind, url = database
    original = servers.AdapterServer("backup-" + kind, store=url)
    copy_server = None
    request.node._etcdadapter_servers = [original]
    original.start()
    try:
        with servers.GrpcClient(original.endpoint) as c:
            first = None
            for i in range(30):
                r = c.call(KV + "Put", rpc.PutRequest(key=b"/apisix/routes/%d" % (i % 7),
                                                      value=b"v%d" % i), rpc.PutResponse)
                assert r.ok, r
                first = first or r.response.header.revision
            assert c.call(KV + "DeleteRange", rpc.DeleteRangeRequest(
                key=b"/apisix/routes/3"), rpc.DeleteRangeResponse).ok
        before = snapshot(original, first)
        copy_url, cleanup = backup_and_restore(kind, url, tmp_path)   # adapter running
        request.addfinalizer(cleanup)
        copy_server = servers.AdapterServer("restored-" + kind, store=copy_url)
        request.node._etcdadapter_servers.append(copy_server)
        copy_server.start()
        after = snapshot(copy_server, first)
        assert after == before
        assert len(before[2]) == 31 and len(before[1]) == 6
    finally:
        for s in (copy_server, original):
            if s is not None:
                s.stop()
                s.cleanup()
