"""Embedding etcd-adapter in a Python program, under Twisted or asyncio.

A host program (an ingress controller, a control plane) runs the adapter inside itself,
serves etcd clients (APISIX, etcdctl, any gRPC or HTTP/JSON etcd client) from it and
writes its configuration through an in-process client -- no extra process, no network
hop for its own calls, yet the same revisions, events and permission checks as a remote
client gets.

Twisted (every call returns a Deferred)::

    from etcdadapter.embed import EmbeddedAdapter

    adapter = EmbeddedAdapter(store="memory://", listen=["tcp:2379:interface=127.0.0.1"])
    yield adapter.start()
    client = adapter.client()
    yield client.put("/apisix/routes/1", '{"uri": "/hello"}')
    client.watch("/apisix/", prefix=True, callback=print)

asyncio (every call returns an awaitable; Twisted's asyncio reactor is installed on the
loop, so create the adapter before anything imports ``twisted.internet.reactor``)::

    adapter = EmbeddedAdapter(store="memory://", listen=["tcp:2379:interface=127.0.0.1"],
                              loop=asyncio.get_running_loop())
    await adapter.start()
    client = adapter.client()
    await client.replace_prefix("/apisix/routes/", {"/apisix/routes/1": "{...}"})
    async for event in client.watch("/apisix/", prefix=True):
        print(event.type, event.kv.key, event.kv.value)

``examples/embed_twisted.py`` and ``examples/embed_asyncio.py`` are complete programs.

Names exported here are the stable API: :class:`EmbeddedAdapter` (server),
:class:`Client` (calls), :class:`Watch`, the request records (:class:`Get`,
:class:`Put`, :class:`Delete`, :class:`Txn`, :class:`Compare`), the result records
(:class:`KeyValue`, :class:`Event`, :class:`RangeResult`, :class:`PutResult`,
:class:`DeleteResult`, :class:`TxnResult`, :class:`ReplaceResult`, :class:`Lease`),
:data:`PUT`/:data:`DELETE`, :class:`EtcdError` (with ``code`` and ``message`` as etcd
sends them; the ``Err*`` values of :mod:`etcdadapter.errors` compare equal to the errors
raised), :class:`PeerIdentity` (a client certificate's identity, for policy checks) and
:func:`use_asyncio_reactor`.
"""

from etcdadapter.embed.adapter import Address, EmbeddedAdapter, use_asyncio_reactor
from etcdadapter.embed.client import Client
from etcdadapter.embed.ops import Compare, Delete, Get, Put, Txn
from etcdadapter.embed.results import (DELETE, PUT, DeleteResult, Event, KeyValue, Lease,
                                       PutResult, RangeResult, ReplaceResult, TxnResult)
from etcdadapter.embed.watch import Watch
from etcdadapter.errors import EtcdError
from etcdadapter.security.peer import PeerIdentity

__all__ = [
    "EmbeddedAdapter", "Address", "use_asyncio_reactor", "Client", "Watch",
    "Get", "Put", "Delete", "Txn", "Compare",
    "KeyValue", "Event", "RangeResult", "PutResult", "DeleteResult", "TxnResult",
    "ReplaceResult", "Lease", "PUT", "DELETE", "EtcdError", "PeerIdentity",
]
