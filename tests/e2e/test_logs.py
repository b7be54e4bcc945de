"""Structured logs: ``twistd --logger etcdadapter.logs.json`` (one JSON object per line)
and ``etcdadapter.logs.text`` (one line per event), and the events operators rely on."""

import io
import json

import pytest
from twisted.logger import Logger, LogPublisher

from support import servers
from etcdadapter import logs
from etcdadapter.pb.etcdserverpb import rpc_pb2 as rpc
from support.logged import JsonLoggedAdapter


def emit(observer, fn):
    publisher = LogPublisher(observer)
    fn(Logger(namespace="etcdadapter.test", observer=publisher))


def test_json_lines(monkeypatch):
    monkeypatch.delenv(logs.LEVEL_ENV, raising=False)
    out = io.StringIO()
    observer = logs.json(out)

    def events(log):
        log.info("ready: {n} keys\nsecond line", n=3, event="ready", key=b"k\xff",
                 msg="mine", peer=("127.0.0.1", 5))
        log.debug("not shown at the default level")
        try:
            1 / 0
        except ZeroDivisionError:
            log.failure("it broke on {what}", what="purpose")
    emit(observer, events)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2, lines
    first, second = [json.loads(x) for x in lines]
    assert first["time"].endswith("Z") and first["time"][10] == "T"
    assert (first["level"], first["namespace"], first["msg"]) == (
        "info", "etcdadapter.test", "ready: 3 keys\nsecond line")
    assert (first["event"], first["n"], first["key"], first["field_msg"],
            first["peer"]) == ("ready", 3, "k\\xff", "mine", ["127.0.0.1", 5])
    assert (second["level"], second["msg"], second["what"]) == (
        "critical", "it broke on purpose", "purpose")
    assert second["error"] == "ZeroDivisionError: division by zero"
    assert "Traceback" in second["traceback"] and "1 / 0" in second["traceback"]


def test_text_lines_and_level(monkeypatch):
    monkeypatch.setenv(logs.LEVEL_ENV, "debug")
    out = io.StringIO()

    def events(log):
        log.debug("two\nlines")
        try:
            raise ValueError("x")
        except ValueError:
            log.failure("failed")
    emit(logs.text(out), events)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert lines[0].endswith(" debug [etcdadapter.test] two\\nlines"), lines[0]
    assert " critical [etcdadapter.test] failed | Traceback" in lines[1]
    assert "ValueError: x" in lines[1]
    monkeypatch.setenv(logs.LEVEL_ENV, "warn")
    out = io.StringIO()
    emit(logs.text(out), lambda log: (log.info("hidden"), log.warn("shown")))
    assert out.getvalue().count("\n") == 1 and "shown" in out.getvalue()


@pytest.mark.adapter
def test_daemon_logs_json_events():
    """A real adapter with the JSON logger: every line parses, and start-up, slow
    requests and the drain at SIGTERM are there with their fields."""
    server = JsonLoggedAdapter("json-logs", store="memory://?initial_revision=100",
                               extra_args=["--slow-request-threshold", "0.000001"])
    server.start()
    try:
        with servers.GrpcClient(server.endpoint) as c:
            r = c.call("/etcdserverpb.KV/Put", rpc.PutRequest(key=b"slow/key", value=b"v"),
                       rpc.PutResponse)
            assert r.ok, r
        resp, _ = servers.http_request(server, "POST", "/v3/kv/range",
                                       body=b'{"key":"c2xvdy9rZXk="}')
        assert resp.status == 200
    finally:
        server.stop()
    try:
        assert server.proc.returncode == 0
        events = server.events()
        assert all({"time", "level", "namespace", "msg"} <= set(e) for e in events)
        listening, = server.named("listening")
        assert listening["address"] == server.endpoint
        assert listening["namespace"] == "etcdadapter.server"
        ready, = server.named("ready")
        assert (ready["store"], ready["revision"], ready["compact_revision"]) == (
            "memory://?initial_revision=100", 100, -1)
        assert ready["client_urls"] == [server.client_url]
        slow = {e["method"]: e for e in server.named("slow-request")}
        put = slow["/etcdserverpb.KV/Put"]
        assert (put["level"], put["code"], put["key"], put["transport"]) == (
            "warn", "OK", "slow/key", "grpc")
        assert put["duration"] > 0 and put["peer"].startswith("127.0.0.1:")
        assert slow["/etcdserverpb.KV/Range"]["transport"] == "http"
        draining, = server.named("draining")
        assert draining["streams"] == 0
        drained, = server.named("drained")
        assert drained["connections_cut"] == 0 and drained["seconds"] < 5
        assert server.named("stopped")
        names = [e.get("event") for e in events]
        assert names.index("ready") < names.index("draining") < names.index("stopped")
    finally:
        server.cleanup()
