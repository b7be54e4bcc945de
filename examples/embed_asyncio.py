"""An asyncio program that embeds etcd-adapter and owns the configuration it serves.

The same ingress-controller role as examples/embed_twisted.py, written the asyncio way:
the adapter runs on this program's event loop (through Twisted's asyncio reactor), every
call is awaited, and the watch is an ``async for`` loop.

    python examples/embed_asyncio.py [PORT]        # PORT: argv, $EMBED_PORT, or 2379
    echo '{"id": "3", "uri": "/c"}' | ...          # put /apisix/routes/3
    echo '{"id": "3", "delete": true}' | ...       # delete it
    etcdctl --endpoints=127.0.0.1:PORT get --prefix /apisix

Port 0 picks a free port; the "ready" line says which.  SIGTERM or Ctrl-C stops it.
"""

import asyncio
import json
import os
import signal
import sys

# Nothing here imports twisted.internet.reactor: the adapter installs Twisted's asyncio
# reactor on this program's loop.
from etcdadapter.embed import EmbeddedAdapter

ROUTES = "/apisix/routes/"


def route(rid, uri, node="127.0.0.1:1980"):
    return json.dumps({"id": rid, "uri": uri,
                       "upstream": {"type": "roundrobin", "nodes": {node: 1}}})


async def show(watch):
    """Print every watch event: its type, key, revision and value."""
    async for event in watch:
        print("event %s %s rev=%d %s" % (event.type, event.kv.key.decode(),
                                         event.revision, event.kv.value.decode()),
              flush=True)


async def route_lines(client):
    """Each stdin line is a route as JSON: put it, or delete it with "delete": true."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            return                      # stdin closed: keep serving
        if not line.strip():
            continue
        doc = json.loads(line)
        key = ROUTES + doc["id"]
        try:
            if doc.get("delete"):
                result = await client.delete(key)
            else:
                result = await client.put(key, json.dumps(doc))
        except Exception as e:
            print("failed %s: %s" % (key, e), flush=True)
            continue
        print("wrote %s rev=%d" % (key, result.revision), flush=True)


async def main(port):
    loop = asyncio.get_running_loop()
    adapter = EmbeddedAdapter(store="memory://",
                              listen=["tcp:%d:interface=127.0.0.1" % port], loop=loop)
    await adapter.start()
    client = adapter.client()
    watch = client.watch("/apisix/", prefix=True, prev_kv=True)
    await watch.created
    printer = asyncio.ensure_future(show(watch))
    # The controller's full resync: the routes it knows of, in one revision.
    await client.replace_prefix(ROUTES, {ROUTES + "1": route("1", "/hello"),
                                         ROUTES + "2": route("2", "/world")})
    result = await client.put("/apisix/upstreams/1", json.dumps(
        {"id": "1", "type": "roundrobin", "nodes": {"127.0.0.1:1980": 1}}))
    print("ready %s revision=%d" % (adapter.client_urls[0], result.revision), flush=True)
    lines = asyncio.ensure_future(route_lines(client))

    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    lines.cancel()
    await adapter.stop()               # ends the watch: the printer's loop finishes
    await printer
    print("stopped", flush=True)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1] if len(sys.argv) > 1
                         else os.environ.get("EMBED_PORT", 2379))))
