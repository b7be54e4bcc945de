"""A Twisted program that embeds etcd-adapter and owns the configuration it serves.

It plays an ingress controller: it serves APISIX (or etcdctl, or any etcd client) on
127.0.0.1:PORT from the in-memory store, writes routes through the in-process client --
a full resync with replace_prefix at start, then one route per line read on stdin --
and watches /apisix/ to print every change, its own and other clients' alike.

    python examples/embed_twisted.py [PORT]        # PORT: argv, $EMBED_PORT, or 2379
    echo '{"id": "3", "uri": "/c"}' | ...          # put /apisix/routes/3
    echo '{"id": "3", "delete": true}' | ...       # delete it
    etcdctl --endpoints=127.0.0.1:PORT get --prefix /apisix

Port 0 picks a free port; the "ready" line says which.  SIGTERM or Ctrl-C stops it.
"""

import json
import os
import sys

from twisted.internet import defer, stdio, task
from twisted.protocols.basic import LineReceiver

from etcdadapter.embed import EmbeddedAdapter

ROUTES = "/apisix/routes/"


def route(rid, uri, node="127.0.0.1:1980"):
    return json.dumps({"id": rid, "uri": uri,
                       "upstream": {"type": "roundrobin", "nodes": {node: 1}}})


def show(event):
    """Print one watch event: its type, key, revision and value."""
    print("event %s %s rev=%d %s" % (event.type, event.kv.key.decode(), event.revision,
                                     event.kv.value.decode()), flush=True)


class RouteLines(LineReceiver):
    """Each stdin line is a route as JSON: put it, or delete it with "delete": true."""

    delimiter = b"\n"

    def __init__(self, client):
        self.client = client

    def lineReceived(self, line):
        if not line.strip():
            return
        doc = json.loads(line)
        key = ROUTES + doc["id"]
        if doc.get("delete"):
            d = self.client.delete(key)
        else:
            d = self.client.put(key, json.dumps(doc))
        d.addCallback(lambda r: print("wrote %s rev=%d" % (key, r.revision), flush=True))
        d.addErrback(lambda f: print("failed %s: %s" % (key, f.value), flush=True))


async def main(reactor, port):
    adapter = EmbeddedAdapter(store="memory://",
                              listen=["tcp:%d:interface=127.0.0.1" % port],
                              reactor=reactor)
    await adapter.start()
    reactor.addSystemEventTrigger("before", "shutdown", lambda: adapter.stop().addCallback(
        lambda _: print("stopped", flush=True)))
    client = adapter.client()
    watch = client.watch("/apisix/", prefix=True, prev_kv=True, callback=show)
    await watch.created
    # The controller's full resync: the routes it knows of, in one revision.
    await client.replace_prefix(ROUTES, {ROUTES + "1": route("1", "/hello"),
                                         ROUTES + "2": route("2", "/world")})
    result = await client.put("/apisix/upstreams/1", json.dumps(
        {"id": "1", "type": "roundrobin", "nodes": {"127.0.0.1:1980": 1}}))
    print("ready %s revision=%d" % (adapter.client_urls[0], result.revision), flush=True)
    stdio.StandardIO(RouteLines(client))
    await defer.Deferred()             # serve until the reactor stops


if __name__ == "__main__":
    port = int(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("EMBED_PORT", 2379))
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, port)))
