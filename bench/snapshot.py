#!/usr/bin/env python3
"""etcd snapshots both ways at scale: N keys (default 100000, APISIX-route-sized values)
put into an adapter on the memory store; ``etcdctl snapshot save`` from it (time, file
size, adapter RSS before and after); ``python -m etcdadapter.snapshot restore`` of that
file into SQLite, MariaDB and PostgreSQL (time), an adapter started on each and a
snapshot saved from it; and a real etcd restored from the file (``etcdctl snapshot
restore`` + start) counting the keys.

    .venv/bin/python bench/snapshot.py [N]

Uses the test suite's server helpers (tests/servers.py, tests/stores.py): the local
MariaDB/PostgreSQL servers, databases named snap17_bench_* (dropped at the end).
"""

import os, subprocess, sys, time, uuid
HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(HERE, "tests")); sys.path.insert(0, HERE)
import servers, stores, grpc
from etcdadapter.pb.etcdserverpb import rpc_pb2 as rpc

N = int(sys.argv[1]) if len(sys.argv) > 1 else 100000
import tempfile
out = tempfile.mkdtemp(prefix="snapshot-bench-")
def rss(pid):
    d = {}
    for line in open("/proc/%d/status" % pid):
        k, v = line.split(":", 1); d[k] = v.strip()
    return d["VmRSS"], d["VmHWM"]

def etcdctl(*a):
    t = time.monotonic()
    r = subprocess.run(["etcdctl"] + list(a), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ, ETCDCTL_API="3"))
    assert r.returncode == 0, r.stderr[-500:]
    return time.monotonic() - t, r.stdout

a = servers.AdapterServer("bench", store="memory://?initial_revision=1").start()
ch = grpc.insecure_channel(a.endpoint)
txn = ch.unary_unary("/etcdserverpb.KV/Txn", request_serializer=lambda m: m.SerializeToString(), response_deserializer=rpc.TxnResponse.FromString)
t = time.monotonic()
for start in range(0, N, 128):
    ops = [rpc.RequestOp(request_put=rpc.PutRequest(key=b"/apisix/routes/%07d" % i, value=b'{"uri":"/r/%d","upstream":{"nodes":{"127.0.0.1:80":1},"type":"roundrobin"}}' % i)) for i in range(start, min(N, start + 128))]
    txn(rpc.TxnRequest(success=ops), timeout=30)
print("load %d keys: %.1fs" % (N, time.monotonic() - t))
pid = a.proc.pid
print("adapter rss before save", rss(pid))
path = out + "/mem.db"
if os.path.exists(path): os.remove(path)
dt, _ = etcdctl("--endpoints=" + a.endpoint, "snapshot", "save", path)
print("snapshot save (memory store) %.2fs, %d bytes" % (dt, os.path.getsize(path)))
print("adapter rss after save", rss(pid))
dt, o = etcdctl("snapshot", "status", path, "-w", "json"); print("status", o.decode().strip())
a.stop(); a.cleanup()
for kind in ("sqlite", "mariadb", "postgresql"):
    if kind == "sqlite":
        url = "sqlite://%s/bench-%s.db" % (out, uuid.uuid4().hex[:6]); drop = lambda: None
    else:
        name = "snap17_bench_" + uuid.uuid4().hex[:8]
        stores._admin(kind, lambda cur: cur.execute("CREATE DATABASE " + name))
        url = (stores.MYSQL_URL if kind == "mariadb" else stores.POSTGRES_URL) + "/" + name
        drop = (lambda name=name, kind=kind: stores._admin(kind, lambda cur: cur.execute("DROP DATABASE IF EXISTS " + name + (" WITH (FORCE)" if kind == "postgresql" else ""))))
    try:
        t = time.monotonic()
        r = subprocess.run([sys.executable, "-m", "etcdadapter.snapshot", "restore", path, "--to", url], cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert r.returncode == 0, r.stderr
        print("restore into %s: %.2fs" % (kind, time.monotonic() - t))
        s = servers.AdapterServer("bench-" + kind, store=url)
        t = time.monotonic(); s.start(); print("  adapter start on it %.2fs" % (time.monotonic() - t))
        p2 = out + "/%s.db" % kind
        if os.path.exists(p2): os.remove(p2)
        dt, _ = etcdctl("--endpoints=" + s.endpoint, "snapshot", "save", p2)
        print("  snapshot save (%s store) %.2fs, rss %s" % (kind, dt, rss(s.proc.pid)))
        s.stop(); s.cleanup()
    finally:
        drop()
# a real etcd from the adapter's snapshot
t = time.monotonic()
e = servers.EtcdServer("bench-etcd")
e._allocate_ports = (lambda orig=e._allocate_ports: (orig(), subprocess.run(["etcdctl", "snapshot", "restore", path, "--name", "default", "--data-dir", os.path.join(e._tmp, "data"), "--initial-cluster", "default=http://127.0.0.1:%d" % e.peer_port, "--initial-advertise-peer-urls", "http://127.0.0.1:%d" % e.peer_port], env=dict(os.environ, ETCDCTL_API="3"), stdout=subprocess.PIPE, stderr=subprocess.PIPE)))
e.start()
print("etcdctl snapshot restore + etcd start %.2fs" % (time.monotonic() - t))
with grpc.insecure_channel(e.endpoint) as ch2:
    rng = ch2.unary_unary("/etcdserverpb.KV/Range", request_serializer=lambda m: m.SerializeToString(), response_deserializer=rpc.RangeResponse.FromString)
    r = rng(rpc.RangeRequest(key=b"/apisix/routes/", range_end=b"/apisix/routes0", count_only=True), timeout=30)
    print("  etcd: %d keys at revision %d" % (r.count, r.header.revision))
e.stop(); e.cleanup()
import shutil
shutil.rmtree(out, ignore_errors=True)
