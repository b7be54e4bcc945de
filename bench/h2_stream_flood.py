#!/usr/bin/env python3
"""One HTTP/2 connection opens many streams (HEADERS only, no body): how long do other
clients wait meanwhile?  etcd vs etcd-adapter, the same client.

The attacker (tests/e2e/test_h2_flood.py's StreamFlood) sends the client preface, SETTINGS
and ``--streams`` HEADERS frames for /etcdserverpb.KV/Range (content-type
application/grpc) as fast as the server reads them, and reads what comes back.  Another
client meanwhile asks GET /version on a fresh connection every 50 ms: while the attacker
sends (until all is sent or the server closes the connection), for ``--hold`` seconds
after that (the attacker still connected, unless the server closed it), and for
``--hold`` seconds after the attacker has closed its end.

Prints, per server: /version latency (probes, median and max) in each phase, how long
sending took, and how the server answered the attacker (streams refused, GOAWAY code,
how the connection ended); and the server's CPU time and RSS before and after.

Usage:
  python bench/h2_stream_flood.py                      # 200,000 streams, both servers
  python bench/h2_stream_flood.py --only adapter --streams 20000
  python bench/h2_stream_flood.py --adapter-args="--max-concurrent-streams 4294967295"
"""

import argparse
import os
import shlex
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
# tests/ for the support package test_h2_flood imports, tests/e2e for test_h2_flood.
sys.path[:0] = [os.path.join(os.path.dirname(HERE), "tests", d) for d in ("", "e2e")]

from bench import Adapter, Etcd  # noqa: E402
from test_h2_flood import StreamFlood, version_latencies  # noqa: E402

PROBE_LIMIT = 180.0     # a probe not answered within this counts as this


def _cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _phase(name, latencies):
    if not latencies:
        return "%-22s no probe" % name
    return "%-22s %4d probes, median %6.3f s, max %7.3f s" % (
        name, len(latencies), statistics.median(latencies), max(latencies))


class AdapterWithArgs(Adapter):
    def __init__(self, args):
        Adapter.__init__(self)
        self.args = args

    def command(self, port):
        return Adapter.command(self, port) + self.args


def run(server, streams, hold):
    port = int(server.endpoint.rpartition(":")[2])
    pid = server.proc.pid
    cpu0, rss0 = _cpu_seconds(pid), _rss_mib(pid)
    flood = StreamFlood(port, streams)
    t0 = time.monotonic()
    flood.start()
    during = version_latencies(port, until=flood.sent_all.is_set, limit=PROBE_LIMIT)
    sending = time.monotonic() - t0
    held = version_latencies(port, seconds=hold, limit=PROBE_LIMIT)
    flood.close()
    after = version_latencies(port, seconds=hold, limit=PROBE_LIMIT)
    print("%s:" % server.name)
    print("  " + _phase("while sending", during))
    print("  " + _phase("then", held))
    print("  " + _phase("after attacker closed", after))
    print("  sending took %.2f s: %d of %d bytes sent; %d streams refused, GOAWAY %s, "
          "connection %s" % (sending, flood.sent, len(flood.data), flood.refused,
                             flood.goaway, flood.ended or "open until we closed it"))
    print("  server CPU %.2f s, RSS %.0f -> %.0f MiB" % (
        _cpu_seconds(pid) - cpu0, rss0, _rss_mib(pid)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=200000)
    parser.add_argument("--hold", type=float, default=2.0)
    parser.add_argument("--only", choices=("etcd", "adapter"))
    parser.add_argument("--adapter-args", default="",
                        help="extra etcd-adapter options (one string)")
    args = parser.parse_args()
    servers = []
    if args.only != "etcd":
        servers.append(AdapterWithArgs(shlex.split(args.adapter_args)))
    if args.only != "adapter":
        servers.append(Etcd())
    print("%d HEADERS-only streams on one connection; GET /version every 50 ms meanwhile"
          % args.streams)
    for server in servers:
        server.start()
        try:
            run(server, args.streams, args.hold)
        finally:
            server.cleanup()


if __name__ == "__main__":
    main()
