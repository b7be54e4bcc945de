"""The memory store's revisions across restarts, on real adapter processes: they must stay
above every revision a client saw (APISIX ignores lower ones and would miss updates).

* A burst of writes faster than one per millisecond, then a restart: the old seed (the
  clock in milliseconds) started below the last revision; the microsecond seed does not.
* ``floor_file``: after a crash and with the clock set back a day (the process's
  ``time.time_ns`` is shifted: a real clock step for that process), the restarted store
  begins above the last revision seen; a pinned ``initial_revision`` at or below the
  floor, or an unreadable floor file, stops the start.
"""

import collections
import subprocess
import sys
import time

import grpc
import pytest

from support import servers
from etcdadapter.pb.etcdserverpb import rpc_pb2 as rpc

pytestmark = pytest.mark.adapter

DAY_NS = 86400 * 10 ** 9


class ShiftedClockAdapter(servers.AdapterServer):
    """An adapter process whose wall clock (time.time_ns) is ``shift_ns`` off."""

    def __init__(self, label, store, shift_ns):
        servers.AdapterServer.__init__(self, label, store=store)
        self.shift_ns = shift_ns

    def _command(self):
        cmd = servers.AdapterServer._command(self)
        assert cmd[1] == "-c"
        cmd[2] = ("import time; _ns = time.time_ns; "
                  "time.time_ns = lambda: _ns() + (%d); " % self.shift_ns) + cmd[2]
        return cmd


def _burst(server, count, in_flight=64):
    """``count`` puts, ``in_flight`` at a time: (last revision answered, seconds)."""
    started = time.monotonic()
    last = 0
    with grpc.insecure_channel(server.endpoint) as channel:
        put = channel.unary_unary("/etcdserverpb.KV/Put",
                                  request_serializer=rpc.PutRequest.SerializeToString,
                                  response_deserializer=rpc.PutResponse.FromString)
        pending = collections.deque()
        for i in range(count):
            pending.append(put.future(rpc.PutRequest(key=b"k%d" % (i % 500), value=b"v"),
                                      timeout=30))
            if len(pending) >= in_flight:
                last = max(last, pending.popleft().result().header.revision)
        while pending:
            last = max(last, pending.popleft().result().header.revision)
    return last, time.monotonic() - started


def _run(request, server):
    request.node._etcdadapter_servers.append(server)
    server.start()
    return server


@pytest.fixture
def started(request):
    request.node._etcdadapter_servers = []
    yield request.node._etcdadapter_servers
    for server in request.node._etcdadapter_servers:
        if server.alive():
            server._kill()
        server.cleanup()


BURST = 5000                # puts per round
BURST_MAX = 60000           # the 60,000 puts
RESTART_MS = 5000           # room for the stop and the second start


def test_restart_after_a_burst_faster_than_a_write_per_millisecond(request, started):
    first = _run(request, servers.AdapterServer("burst-1"))
    seeded = time.monotonic()                     # (the seed was taken a little earlier)
    # Rounds of puts until the revisions handed out are ahead of the milliseconds since
    # the start (the old seed's pace) by more than a restart takes.  A fixed 20,000 took
    # 19.4 s from start to restart on a busy machine (1,100/s): a little slower and the
    # test would have failed without any fault in the store.
    count = seconds = 0
    while count < BURST_MAX:
        last, took = _burst(first, BURST)
        count, seconds = count + BURST, seconds + took
        if count - (time.monotonic() - seeded) * 1000 > RESTART_MS:
            break
    first.stop()
    second = _run(request, servers.AdapterServer("burst-2"))
    elapsed_ms = (time.monotonic() - seeded) * 1000
    print("%d puts in %.2fs (%.0f/s); %.0f ms from start to restart"
          % (count, seconds, count / seconds, elapsed_ms))
    # The burst outran the old millisecond seed: it would have restarted below.
    assert last - first.base_revision == count > elapsed_ms, "the machine is too slow " \
        "to outrun the millisecond clock: %d puts in %.0f ms" % (count, elapsed_ms)
    assert second.base_revision > last


def test_floor_file_survives_a_crash_and_a_clock_set_back(request, started, tmp_path):
    floor = tmp_path / "revision-floor"
    url = "memory://?floor_file=%s" % floor
    first = _run(request, servers.AdapterServer("floor-1", store=url))
    last, _ = _burst(first, 300)
    assert int(floor.read_text()) >= last             # reserved ahead of every answer
    first._kill()                                     # a crash: no clean stop

    # Without the floor, a clock a day behind starts far below what clients saw ...
    behind = _run(request, ShiftedClockAdapter("floor-0", "memory://", -DAY_NS))
    assert behind.base_revision < last - 80000 * 10 ** 6
    behind.stop()
    # ... with it, above.
    second = _run(request, ShiftedClockAdapter("floor-2", url, -DAY_NS))
    assert last < second.base_revision <= int(floor.read_text())
    assert "not above the floor" in second.log_text()
    last2, _ = _burst(second, 10)
    assert last2 == second.base_revision + 10
    second.stop()                                     # a clean stop records the last one
    assert int(floor.read_text()) == last2

    third = _run(request, ShiftedClockAdapter("floor-3", url, -DAY_NS))
    assert third.base_revision == last2 + 1
    third.stop()


@pytest.mark.parametrize("store,message", [
    ("memory://?floor_file={floor}&initial_revision=7",
     "initial_revision 7 is not above the revision floor 1000 recorded in {floor}: "
     "clients may have seen revisions up to 1000"),
    ("memory://?floor_file={bad}",
     "the revision floor file {bad} does not hold a revision ('garbage'): fix or remove "
     "it"),
])
def test_refuses_to_start_below_the_floor(tmp_path, store, message):
    floor, bad = tmp_path / "floor", tmp_path / "bad"
    floor.write_text("1000\n")
    bad.write_text("garbage")
    store = store.format(floor=floor, bad=bad)
    out = subprocess.run(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n",
         "--pidfile=", "etcd-adapter", "--listen", "tcp:0:interface=127.0.0.1",
         "--store", store], capture_output=True, text=True, timeout=60,
        cwd=servers.REPO_ROOT, env=servers.AdapterServer()._env())
    assert out.returncode != 0
    assert message.format(floor=floor, bad=bad) in out.stdout + out.stderr
    assert floor.read_text() == "1000\n"
