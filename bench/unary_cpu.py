"""Server CPU per unary gRPC call, without sockets: the adapter's whole call path (HTTP/2,
gRPC framing, metrics, the KV handler, the memory store) driven through its sans-IO
H2Server by an in-process h2 client that behaves like grpcio (16 calls in flight, the
client's WINDOW_UPDATEs for every response).  Only the server's work is timed, so the
figure is steady on a busy machine; it guides work on the hot path (``--profile`` prints
where the time goes).  End-to-end figures beside etcd's: bench/bench.py.

    python bench/unary_cpu.py [--calls 20000] [--workload get|put] [--profile]
"""

import argparse
import cProfile
import os
import pstats
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import h2.config  # noqa: E402
import h2.connection  # noqa: E402
import h2.events  # noqa: E402
import h2.exceptions  # noqa: E402
from hyperframe.frame import WindowUpdateFrame  # noqa: E402
from twisted.internet import task  # noqa: E402

from etcdadapter.pb.etcdserverpb import rpc_pb2 as rpc  # noqa: E402
from etcdadapter.server import AdapterConfig, AdapterService  # noqa: E402
from etcdadapter.transport.grpc_codec import frame_message  # noqa: E402
from etcdadapter.transport.h2_server import H2Server  # noqa: E402

GRPC_HEADERS = [(":scheme", "http"), (":method", "POST"), (":authority", "127.0.0.1:2379"),
                ("te", "trailers"), ("content-type", "application/grpc"),
                ("user-agent", "grpc-python/1.85.1 grpc-c/51.0.0 (linux; chttp2)")]


class Run(object):
    def __init__(self, workload, in_flight):
        clock = task.Clock()
        self.service = AdapterService(AdapterConfig(store="memory://"), reactor=clock)
        self.service.store.start()
        out = self.to_client = bytearray()
        self.server = H2Server(out.extend, lambda: None, self.service.registry,
                               self.service.router, clock)
        self.client = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.in_flight = in_flight
        self.server_seconds = 0.0
        self.calls = 0
        self.answered = 0
        self.profile = None         # a cProfile.Profile enabled only inside the server
        self.server.initiate()
        self.client.initiate_connection()
        self._exchange()
        value = b"v" * 256
        if workload == "put":
            self.path = "/etcdserverpb.KV/Put"
            self.body = lambda i: frame_message(
                rpc.PutRequest(key=b"key%d" % (i % 1000), value=value).SerializeToString())
        else:
            self.service.store.put(rpc.PutRequest(key=b"key", value=value))
            self.path = "/etcdserverpb.KV/Range"
            req = frame_message(rpc.RangeRequest(key=b"key").SerializeToString())
            self.body = lambda i: req
        self.headers = [(":path", self.path)] + GRPC_HEADERS

    def _feed_server(self, data):
        t0 = time.process_time()
        if self.profile is not None:
            self.profile.enable()
            self.server.data_received(data)
            self.profile.disable()
        else:
            self.server.data_received(data)
        self.server_seconds += time.process_time() - t0

    def _exchange(self):
        while True:
            data = self.client.data_to_send()
            if data:
                self._feed_server(data)
            if not self.to_client:
                return
            answer = bytes(self.to_client)
            del self.to_client[:]
            for ev in self.client.receive_data(answer):
                if isinstance(ev, h2.events.DataReceived):
                    # grpcio returns window for every DATA frame it reads: a
                    # WINDOW_UPDATE for the stream (which the server has usually closed
                    # by then) and one for the connection.
                    n = ev.flow_controlled_length
                    self.client.increment_flow_control_window(n)
                    try:
                        self.client.increment_flow_control_window(n, ev.stream_id)
                    except h2.exceptions.StreamClosedError:
                        self.client._prepare_for_sending([WindowUpdateFrame(
                            ev.stream_id, window_increment=n)])
                elif isinstance(ev, h2.events.StreamEnded):
                    self.answered += 1

    def batch(self):
        for _ in range(self.in_flight):
            sid = self.client.get_next_available_stream_id()
            self.client.send_headers(sid, self.headers)
            self.client.send_data(sid, self.body(self.calls), end_stream=True)
            self.calls += 1
        self._exchange()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--in-flight", type=int, default=16)
    parser.add_argument("--workload", choices=("get", "put"), default="get")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    run = Run(args.workload, args.in_flight)
    for _ in range(50):                     # warm up
        run.batch()
    run.server_seconds, run.calls, run.answered = 0.0, 0, 0
    prof = run.profile = cProfile.Profile() if args.profile else None
    while run.calls < args.calls:
        run.batch()
    assert run.answered == run.calls, (run.answered, run.calls)
    print("%s: %d calls, server CPU %.1f us per call%s"
          % (args.workload, run.calls, 1e6 * run.server_seconds / run.calls,
             " (profiled)" if prof else ""))
    if prof:
        # SORT=cumtime TOP=60 for another view
        pstats.Stats(prof).sort_stats(os.environ.get("SORT", "tottime")).print_stats(
            int(os.environ.get("TOP", "30")))


if __name__ == "__main__":
    main()
