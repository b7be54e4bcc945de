"""The embedding API under asyncio, in a fresh interpreter (this test process runs the
default reactor): awaitable results, EtcdError raised by ``await``, an ``__anext__``
cancelled by a timeout loses no event, a user/password client (its password hashing runs
in the loop's executor), and after ``stop()`` the program exits with nothing left
running.  A reactor imported before the adapter is refused with a clear error."""

import os
import subprocess
import sys

from support import servers

PROGRAM = r"""
import asyncio

from etcdadapter import errors
from etcdadapter.embed import EmbeddedAdapter, EtcdError, Put
from etcdadapter.pb.etcdserverpb import rpc_pb2 as rpc
from etcdadapter.services.rpc import CallContext


async def admin(adapter, method, request):
    handler = adapter.service.registry.lookup("/etcdserverpb.Auth/" + method).handler
    from twisted.internet import defer
    d = defer.maybeDeferred(handler, request, CallContext())
    return await d.asFuture(asyncio.get_running_loop())


async def main():
    adapter = EmbeddedAdapter(store="memory://?initial_revision=1",
                              listen=["tcp:0:interface=127.0.0.1"],
                              loop=asyncio.get_running_loop())
    assert await adapter.start() is adapter
    client = adapter.client()
    put = client.put("k", "1")
    assert isinstance(put, asyncio.Future)
    assert (await put).revision == 2
    try:
        await client.txn(success=[Put("a", ""), Put("a", "")])
        raise AssertionError("no error")
    except EtcdError as e:
        assert e == errors.ErrDuplicateKey, e

    watch = client.watch("k", prev_kv=True)
    assert await watch.created == 2
    try:
        await asyncio.wait_for(watch.__anext__(), 0.05)     # nothing yet: times out
        raise AssertionError("an event came")
    except asyncio.TimeoutError:
        pass
    await client.put("k", "2")
    event = await asyncio.wait_for(watch.__anext__(), 5)
    assert (event.type, event.kv.value, event.prev_kv.value, event.revision) == \
        ("PUT", b"2", b"1", 3), event

    for method, request in [
            ("UserAdd", rpc.AuthUserAddRequest(name="root", password="pw")),
            ("UserGrantRole", rpc.AuthUserGrantRoleRequest(user="root", role="root")),
            ("AuthEnable", rpc.AuthEnableRequest())]:
        await admin(adapter, method, request)
    try:
        await client.get("k")
        raise AssertionError("anonymous read allowed")
    except EtcdError as e:
        assert e == errors.ErrUserEmpty, e
    root = adapter.client(user="root", password="pw")
    assert (await root.get("k")).kv.value == b"2"
    await adapter.stop()
    try:
        await watch.__anext__()
        raise AssertionError("the watch goes on")
    except StopAsyncIteration:
        pass
    print("ok")


asyncio.run(main())
"""

TOO_LATE = r"""
import asyncio
from twisted.internet import reactor
from etcdadapter.embed import EmbeddedAdapter


async def main():
    try:
        EmbeddedAdapter(loop=asyncio.get_running_loop())
    except RuntimeError as e:
        print(e)

asyncio.run(main())
"""


def _run(code):
    env = dict(os.environ)
    env["PYTHONPATH"] = servers.REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, env=env,
                          cwd=servers.REPO_ROOT, timeout=60)


def test_asyncio_host():
    out = _run(PROGRAM)
    assert (out.returncode, out.stdout) == (0, b"ok\n"), out.stderr.decode()[-3000:]


def test_a_reactor_installed_before_is_refused():
    out = _run(TOO_LATE)
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout.decode().startswith(
        "Twisted's reactor (EPollReactor) was installed before and does not run on this "
        "asyncio loop"), out.stdout
