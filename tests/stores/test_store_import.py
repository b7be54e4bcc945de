"""Store.import_history on every store: a given history (etcd's view of it: each key's
version live at the compact revision, then every version) becomes the store's, at the
exact revisions, with the compact revision, prev_kv in the watch history, leases and
the auth state; a non-empty or started store is refused."""

import uuid

import pytest
from twisted.internet.task import Clock

from support import stores
from etcdadapter import errors
from etcdadapter.pb.etcdserverpb import rpc_pb2 as rpc
from etcdadapter.store.base import KV
from etcdadapter.store.importing import Imported, StoreNotEmpty

# Compacted at 4: revision 2 put a (sub 0); revision 4 was a txn that put c and b (c was
# deleted later, below the compact revision: gone); then every revision 5..9.
VERSIONS = [
    (0, KV(b"a", 2, 2, 1, b"a1", 0)),
    (1, KV(b"b", 4, 4, 1, b"b1", 0)),
    (0, KV(b"a", 2, 5, 2, b"a2", 0)),
    (0, KV(b"c", 6, 6, 1, b"c1", 0)), (1, KV(b"d", 6, 6, 1, b"d1", 0)),
    (0, KV(b"b", 0, 7, 0, b"", 0)),
    (0, KV(b"b", 8, 8, 1, b"b2", 0)),
    (0, KV(b"a", 2, 9, 3, b"a3", 7)),
]
AUTH = b'{"enabled": false, "revision": 3, "roles": {}, "users": {}, "version": 1}'


def history():
    return Imported(9, 4, lambda: iter(VERSIONS), [(7, 60)], AUTH)


@pytest.fixture
def open_store(store_kind, tmp_path, request):
    """Factory of not-started stores on one fresh database (snap17_... names)."""
    from etcdadapter.store.memory import MemoryStore
    from etcdadapter.store.urls import open_store as open_url
    url = None
    if store_kind == "sqlite":
        url = "sqlite://%s/import.db" % tmp_path
    elif store_kind != "memory":
        stores._require(store_kind)
        name = "snap17_" + uuid.uuid4().hex[:12]
        stores._admin(store_kind, lambda cur: cur.execute("CREATE DATABASE " + name))
        force = " WITH (FORCE)" if store_kind == "postgresql" else ""
        request.addfinalizer(lambda: stores._admin(store_kind, lambda cur: cur.execute(
            "DROP DATABASE IF EXISTS " + name + force)))
        url = (stores.MYSQL_URL if store_kind == "mariadb" else stores.POSTGRES_URL) \
            + "/" + name
    started = []

    def factory():
        if url is None:
            return MemoryStore(clock=Clock())
        return open_url(url, reactor=stores.reactor())

    def start(store):
        stores.call(store.start)
        started.append(store)

    factory.start = start
    yield factory
    for s in started:
        stores.call(s.stop)


def kvs(store, revision):
    r = stores.call(store.range, rpc.RangeRequest(key=b"\0", range_end=b"\0",
                                                  revision=revision))
    return r.header.revision, [(kv.key, kv.value, kv.create_revision, kv.mod_revision,
                                kv.version, kv.lease) for kv in r.kvs]


def test_import_history(open_store):
    store = open_store()
    stores.call(store.import_history, history())
    open_store.start(store)
    assert (store.revision, store.compact_revision) == (9, 4)
    assert kvs(store, 4) == (9, [(b"a", b"a1", 2, 2, 1, 0), (b"b", b"b1", 4, 4, 1, 0)])
    assert kvs(store, 7) == (9, [(b"a", b"a2", 2, 5, 2, 0), (b"c", b"c1", 6, 6, 1, 0),
                                 (b"d", b"d1", 6, 6, 1, 0)])
    assert kvs(store, 9) == (9, [(b"a", b"a3", 2, 9, 3, 7), (b"b", b"b2", 8, 8, 1, 0),
                                 (b"c", b"c1", 6, 6, 1, 0), (b"d", b"d1", 6, 6, 1, 0)])
    with pytest.raises(errors.EtcdError) as e:
        kvs(store, 3)
    assert e.value.message == "etcdserver: mvcc: required revision has been compacted"
    # The watch history: every revision above the compact one, prev_kv read at rev - 1.
    changes = stores.call(store.history, 5, b"\0", b"\0")
    assert [(c.revision, [(ev.type, ev.kv.key, ev.prev_kv and ev.prev_kv.mod_revision)
                          for ev in c.events]) for c in changes] == [
        (5, [(0, b"a", 2)]), (6, [(0, b"c", None), (0, b"d", None)]), (7, [(1, b"b", 4)]),
        (8, [(0, b"b", None)]), (9, [(0, b"a", 5)])]
    ttl = stores.call(store.lease_time_to_live, 7, True)
    assert (ttl.granted_ttl, ttl.keys) == (60, (b"a",)) and 55 <= ttl.ttl <= 60
    assert stores.call(store.auth_load) == AUTH
    # Writes go on from the imported revision; the lease works.
    r = stores.call(store.put, rpc.PutRequest(key=b"e", value=b"e1", lease=7))
    assert r.header.revision == 10
    assert stores.call(store.lease_revoke, 7) == 11
    assert kvs(store, 11)[1] == [(b"b", b"b2", 8, 8, 1, 0), (b"c", b"c1", 6, 6, 1, 0),
                                 (b"d", b"d1", 6, 6, 1, 0)]


def test_a_non_empty_or_started_store_is_refused(open_store, store_kind):
    store = open_store()
    stores.call(store.import_history, history())
    if store_kind == "memory":
        again = store                       # the same store, now holding the history
    else:
        again = open_store()                # another instance on the same database
    with pytest.raises(StoreNotEmpty) as e:
        stores.call(again.import_history, history())
    assert str(e.value) == ("the target store is not empty (keys or history): a restore "
                            "fills an empty store only")
    open_store.start(store)
    assert kvs(store, 9)[0] == 9                          # nothing changed
    if store_kind != "memory":
        with pytest.raises(errors.EtcdError) as e:
            stores.call(store.import_history, history())
        assert e.value.message == "etcd-adapter: import into a store already started"


def test_leases_or_auth_alone_make_a_store_non_empty(open_store, store_kind):
    store = open_store()
    if store_kind == "memory":
        stores.call(store.lease_grant, 5, 10)
        with pytest.raises(StoreNotEmpty) as e:
            stores.call(store.import_history, history())
        assert "(leases)" in str(e.value)
        return
    open_store.start(store)
    stores.call(store.auth_save, b"{}")
    stores.call(store.stop)
    with pytest.raises(StoreNotEmpty) as e:
        stores.call(open_store().import_history, history())
    assert "(auth state)" in str(e.value)
