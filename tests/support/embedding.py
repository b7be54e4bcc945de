"""Helpers for the embedding API's tests: an adapter embedded in the test process (on the
session's background reactor, tests/support/stores.py) on the test's store kind, and one tuple
form of a watch event for the in-process client and a gRPC watch (servers.GrpcWatch).

Import the fixture into a test module with ``from embedding import embedded  # noqa``.
"""

import pytest

from etcdadapter.embed import EmbeddedAdapter

from support import stores
from support.stores import call


@pytest.fixture
def embedded(make_store):
    """Factory: ``embedded(**options) -> EmbeddedAdapter``, started on a fresh store of
    the test's kind (revisions from 1), listening on a free loopback port; stopped at
    teardown.  Options are EmbeddedAdapter's (AdapterConfig's)."""
    started = []

    def factory(**options):
        options.setdefault("drain_timeout", 1.0)
        store = make_store(start=False)
        adapter = call(lambda: EmbeddedAdapter(
            store=store, listen=["tcp:0:interface=127.0.0.1"], reactor=stores.reactor(),
            **options))
        call(adapter.start)
        started.append(adapter)
        return adapter

    yield factory
    for adapter in reversed(started):
        call(adapter.stop)


def endpoint(adapter):
    host, port = adapter.addresses[0]
    return "%s:%d" % (host, port)


def kv_tuple(kv):
    """(key, value, create_revision, mod_revision, version, lease) of a KeyValue record
    or an mvccpb.KeyValue."""
    return (kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease)


def event_tuple(e):
    """One form for an embed Event and an mvccpb.Event: (type, kv tuple, prev tuple)."""
    if isinstance(e.type, str):
        prev = e.prev_kv
        return (e.type, kv_tuple(e.kv), kv_tuple(prev) if prev is not None else None)
    return ("DELETE" if e.type == 1 else "PUT", kv_tuple(e.kv),
            kv_tuple(e.prev_kv) if e.HasField("prev_kv") else None)
