"""The server on each SQL store, end to end: twistd with ``--store <URL>``, driven over
gRPC -- KV, a watch stream, a lease -- then restarted on the same database; and the
differential sequence (support/differential.py) against a real etcd with the adapter on each
SQL store."""

import pytest

from etcdadapter.pb.etcdserverpb import rpc_pb2 as rpc

from support import servers
from support.differential import run_sequence
from support.servers import require_etcd_binaries
from support.stores import SQL_KINDS, store_url

pytestmark = pytest.mark.adapter

KV = "/etcdserverpb.KV/"
LEASE = "/etcdserverpb.Lease/"


@pytest.fixture(params=SQL_KINDS)
def sql_url(request, tmp_path):
    url, cleanup = store_url(request.param, tmp_path)
    yield url
    cleanup()


def _events(watch, n):
    """The next ``n`` events of ``watch`` as (type, key, value, mod_revision, prev value)."""
    return [(e.type, e.kv.key, e.kv.value, e.kv.mod_revision,
             e.prev_kv.value if e.HasField("prev_kv") else None) for e in watch.events(n)]


def _start(url):
    if servers.target_kind() != "adapter":
        pytest.skip("needs the adapter")
    server = servers.AdapterServer("sql", store=url)
    server.start()
    return server


def _call(client, method, request, response_class):
    r = client.call(method, request, response_class)
    assert r.ok, r
    return r.response


def test_server_on_sql_store(sql_url):
    server = _start(sql_url)
    try:
        with servers.GrpcClient(server.endpoint) as c:
            base = _call(c, KV + "Range", rpc.RangeRequest(key=b"x"),
                         rpc.RangeResponse).header.revision
            w = servers.GrpcWatch(c.channel)
            created = w.create(key=b"/apisix/", range_end=b"/apisix0", prev_kv=True)
            assert created.header.revision == base
            r = _call(c, KV + "Put", rpc.PutRequest(key=b"/apisix/routes/1", value=b"a"),
                      rpc.PutResponse)
            assert r.header.revision == base + 1
            _call(c, KV + "Put", rpc.PutRequest(key=b"/apisix/routes/1", value=b"b"),
                  rpc.PutResponse)
            lease = _call(c, LEASE + "LeaseGrant", rpc.LeaseGrantRequest(TTL=60),
                          rpc.LeaseGrantResponse).ID
            _call(c, KV + "Put", rpc.PutRequest(key=b"/apisix/upstreams/1", value=b"u",
                                                lease=lease), rpc.PutResponse)
            _call(c, KV + "Put", rpc.PutRequest(key=b"/other", value=b"o"), rpc.PutResponse)
            _call(c, LEASE + "LeaseRevoke", rpc.LeaseRevokeRequest(ID=lease),
                  rpc.LeaseRevokeResponse)
            PUT, DEL = 0, 1
            assert _events(w, 4) == [
                (PUT, b"/apisix/routes/1", b"a", base + 1, None),
                (PUT, b"/apisix/routes/1", b"b", base + 2, b"a"),
                (PUT, b"/apisix/upstreams/1", b"u", base + 3, None),
                (DEL, b"/apisix/upstreams/1", b"", base + 5, b"u"),
            ]
            # A watch replaying history from the first write.
            w2 = servers.GrpcWatch(c.channel)
            w2.create(key=b"/apisix/routes/1", start_revision=base + 1)
            assert [e[3] for e in _events(w2, 2)] == [base + 1, base + 2]
            w.close()
            w2.close()
            r = _call(c, KV + "Range", rpc.RangeRequest(key=b"/", range_end=b"0"),
                      rpc.RangeResponse)
            assert [(kv.key, kv.value) for kv in r.kvs] == [
                (b"/apisix/routes/1", b"b"), (b"/other", b"o")]
            assert r.header.revision == base + 5
    finally:
        server.stop()
        server.cleanup()
    # Everything is still there after a restart, and revisions go on.
    server = _start(sql_url)
    try:
        assert server.base_revision == base + 5
        with servers.GrpcClient(server.endpoint) as c:
            r = _call(c, KV + "Range", rpc.RangeRequest(key=b"/apisix/routes/1"),
                      rpc.RangeResponse)
            assert (r.kvs[0].value, r.kvs[0].version) == (b"b", 2)
            r = _call(c, KV + "Put", rpc.PutRequest(key=b"/apisix/routes/2", value=b"c"),
                      rpc.PutResponse)
            assert r.header.revision == base + 6
    finally:
        server.stop()
        server.cleanup()


def test_differential_on_sql_store(start_servers, sql_url):
    """The differential harness's random KV sequence (puts, deletes, txns, ranges at old
    revisions, compactions) against a real etcd, with the adapter on a SQL store."""
    require_etcd_binaries()
    pair = start_servers(target_store=sql_url)
    run_sequence(pair, 7, 300)


@pytest.mark.parametrize("kind", ["mariadb", "postgresql"])
def test_key_length_cap(kind, tmp_path):
    """The documented cap on key length (README, --store help, the store URL docs): a key
    at the cap is stored; one byte longer is etcd's InvalidArgument "request is too large"
    saying the limit, and changes nothing."""
    from etcdadapter.store.sql.mysql import MySQLDialect
    from etcdadapter.store.sql.postgresql import PostgresDialect
    cap = {"mariadb": MySQLDialect, "postgresql": PostgresDialect}[kind].max_key_bytes
    assert cap == {"mariadb": 3000, "postgresql": 2600}[kind]
    url, cleanup = store_url(kind, tmp_path)
    server = _start(url)
    try:
        with servers.GrpcClient(server.endpoint) as c:
            rev = _call(c, KV + "Put", rpc.PutRequest(key=b"k" * cap, value=b"v"),
                        rpc.PutResponse).header.revision
            r = c.call(KV + "Put", rpc.PutRequest(key=b"k" * (cap + 1), value=b"v"),
                       rpc.PutResponse)
            assert r.error() == (
                "INVALID_ARGUMENT", "etcdserver: request is too large: key of %d bytes, "
                "the %s store takes keys of at most %d bytes"
                % (cap + 1, "mysql" if kind == "mariadb" else "postgresql", cap))
            r = _call(c, KV + "Range", rpc.RangeRequest(key=b"k", range_end=b"l"),
                      rpc.RangeResponse)
            assert [(kv.key, kv.mod_revision) for kv in r.kvs] == [(b"k" * cap, rev)]
            assert r.header.revision == rev
    finally:
        server.stop()
        server.cleanup()
        cleanup()
