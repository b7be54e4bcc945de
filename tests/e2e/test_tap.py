"""``twistd etcd-adapter`` options: command line, environment, and that they take effect."""

import time

import grpc
import pytest
from twisted.python import usage

from support import servers
from etcdadapter import tap
from etcdadapter.pb.etcdserverpb import rpc_pb2 as rpc
from support.watch import WatchSession


def parse(args, env=None, monkeypatch=None):
    if env:
        for k, v in env.items():
            monkeypatch.setenv(k, v)
    options = tap.Options()
    options.parseOptions(args)
    return options


def test_defaults_and_command_line():
    o = parse([])
    c = o.config()
    assert c.listen == ["tcp:2379:interface=127.0.0.1"]
    assert (c.store, c.max_request_bytes, c.watch_progress_notify_interval) == \
        ("memory://", 1572864, 600.0)
    o = parse(["--listen", "tcp:1", "--listen", "unix:/x", "--watch-progress-notify-interval",
               "1m30s", "--max-txn-ops", "7"])
    c = o.config()
    assert c.listen == ["tcp:1", "unix:/x"]
    assert (c.watch_progress_notify_interval, c.max_txn_ops) == (90.0, 7)


@pytest.mark.parametrize("text,seconds", [("10m", 600.0), ("30s", 30.0), ("500ms", 0.5),
                                          ("2.5", 2.5), ("1h", 3600.0)])
def test_durations(text, seconds):
    assert tap._duration(text) == seconds


@pytest.mark.parametrize("text", ["", "10x", "0", "-1s", "m", "10m garbage"])
def test_bad_durations(text):
    with pytest.raises(usage.UsageError):
        parse(["--watch-progress-notify-interval", text])


def test_environment_and_precedence(monkeypatch):
    o = parse([], {"ETCD_ADAPTER_WATCH_PROGRESS_NOTIFY_INTERVAL": "5s",
                   "ETCD_ADAPTER_LISTEN": "tcp:1, tcp:2"}, monkeypatch)
    assert o.config().watch_progress_notify_interval == 5.0
    assert o.config().listen == ["tcp:1", "tcp:2"]
    o = parse(["--watch-progress-notify-interval", "7s", "--listen", "tcp:3"])
    assert o.config().watch_progress_notify_interval == 7.0
    assert o.config().listen == ["tcp:3"]
    monkeypatch.setenv("ETCD_ADAPTER_MAX_TXN_OPS", "zero")
    with pytest.raises(usage.UsageError):
        tap.Options()


@pytest.mark.adapter
def test_progress_notify_interval_reaches_the_watchers():
    server = servers.AdapterServer("progress", extra_args=[
        "--watch-progress-notify-interval", "500ms"])
    server.start()
    try:
        with grpc.insecure_channel(server.endpoint) as channel:
            w = WatchSession(channel)
            w.send(rpc.WatchRequest(create_request=rpc.WatchCreateRequest(
                key=b"p", progress_notify=True)))
            t0 = time.monotonic()
            got = w.collect(3, timeout=10)
            elapsed = time.monotonic() - t0
            w.close()
        assert len(got) >= 3, got
        assert got[0].created
        # Two idle progress notifications (watch_id 0, no events, the current revision),
        # well before etcd's default 10 minutes.
        for r in got[1:]:
            assert (r.watch_id, len(r.events), r.created) == (0, 0, False)
            assert r.header.revision == got[0].header.revision
        assert elapsed < 5
    finally:
        server.stop()
        server.cleanup()


def test_auto_compaction_options(monkeypatch):
    from etcdadapter.server import AdapterService
    from etcdadapter.store.memory import MemoryStore
    # On by default (etcd's default is off): periodic, one hour, checks every 6 minutes.
    c = parse([]).config()
    assert (c.auto_compaction_mode, c.auto_compaction_retention,
            c.auto_compaction_check_interval) == ("periodic", "1h", None)
    svc = AdapterService(c, store=MemoryStore())
    assert (svc.compactor.mode, svc.compactor.retention,
            svc.compactor.check_interval) == ("periodic", 3600.0, 360.0)
    # etcd's spellings: a bare integer is hours in periodic mode, revisions otherwise.
    c = parse(["--auto-compaction-retention", "2"]).config()
    assert AdapterService(c, store=MemoryStore()).compactor.retention == 7200.0
    c = parse(["--auto-compaction-mode", "revision", "--auto-compaction-retention",
               "1000", "--auto-compaction-check-interval", "30s"]).config()
    svc = AdapterService(c, store=MemoryStore())
    assert (svc.compactor.mode, svc.compactor.retention,
            svc.compactor.check_interval) == ("revision", 1000, 30.0)
    assert not AdapterService(parse(["--auto-compaction-retention", "0"]).config(),
                              store=MemoryStore()).compactor.enabled
    o = parse([], {"ETCD_ADAPTER_AUTO_COMPACTION_MODE": "revision",
                   "ETCD_ADAPTER_AUTO_COMPACTION_RETENTION": "50"}, monkeypatch)
    assert (o.config().auto_compaction_mode, o.config().auto_compaction_retention) == \
        ("revision", "50")


@pytest.mark.parametrize("args", [
    ["--auto-compaction-mode", "hourly"],
    ["--auto-compaction-mode", "revision", "--auto-compaction-retention", "1h"],
    ["--auto-compaction-retention", "-1"],
    ["--auto-compaction-retention", "1.5"],
    ["--auto-compaction-check-interval", "0"],
])
def test_bad_auto_compaction_options(args):
    with pytest.raises(usage.UsageError) as info:
        parse(args)
    assert "compaction" in str(info.value) or "must be positive" in str(info.value)


def test_connection_limit_options(monkeypatch):
    import resource
    from etcdadapter.server import AdapterService
    c = parse([]).config()
    assert (c.header_timeout, c.idle_timeout, c.max_connections) == (10.0, 300.0, None)
    c = parse(["--header-timeout", "2s", "--idle-timeout", "0", "--max-connections",
               "0"]).config()
    assert (c.header_timeout, c.idle_timeout, c.max_connections) == (2.0, 0.0, 0)
    o = parse([], {"ETCD_ADAPTER_IDLE_TIMEOUT": "1m", "ETCD_ADAPTER_MAX_CONNECTIONS": "50",
                   "ETCD_ADAPTER_HEADER_TIMEOUT": "500ms"}, monkeypatch)
    c = o.config()
    assert (c.header_timeout, c.idle_timeout, c.max_connections) == (0.5, 60.0, 50)
    for bad in (["--max-connections", "-1"], ["--max-connections", "many"],
                ["--idle-timeout", "-1s"], ["--header-timeout", "soon"]):
        with pytest.raises(usage.UsageError):
            parse(bad)
    # auto: the soft open-file limit minus the 256 kept for the store and logs.
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    service = AdapterService(parse(["--max-connections", "auto"]).config())
    assert service.limits.max_connections == soft - 256
    assert AdapterService(c).limits.max_connections == 50


def test_etcd_flag_aliases_everywhere(monkeypatch, tmp_path):
    """Each row of flag_aliases works on the command line, as ETCD_ADAPTER_<ALIAS> and as
    a config-file key, and names a real option."""
    from etcdadapter import flag_aliases
    options = tap.Options()
    names = {p[0] for p in options.optParameters} | {"listen"}
    for alias, option, _split, doc in flag_aliases.ALIASES:
        assert option in names and len(doc) >= 20
    c = parse(["--listen-client-urls", "http://127.0.0.1:1,http://[::1]:2",
               "--experimental-watch-progress-notify-interval", "5s"]).config()
    assert c.listen == ["tcp:1:interface=127.0.0.1", "tcp6:2:interface=\\:\\:1"]
    assert c.watch_progress_notify_interval == 5.0
    c = parse([], {"ETCD_ADAPTER_LISTEN_CLIENT_URLS": "http://127.0.0.1:3",
                   "ETCD_ADAPTER_EXPERIMENTAL_WATCH_PROGRESS_NOTIFY_INTERVAL": "7s"},
              monkeypatch).config()
    assert (c.listen, c.watch_progress_notify_interval) == (["tcp:3:interface=127.0.0.1"],
                                                            7.0)
    for k in list(__import__("os").environ):
        if k.startswith(tap.ENV_PREFIX):
            monkeypatch.delenv(k)
    path = tmp_path / "c.yaml"
    path.write_text("listen-client-urls: http://127.0.0.1:4,http://127.0.0.1:6\n"
                    "experimental-watch-progress-notify-interval: 9s\n"
                    "listen-metrics-urls: [http://127.0.0.1:5]\n")
    c = parse(["--config-file", str(path)]).config()
    assert (c.listen, c.watch_progress_notify_interval, c.metrics_listen) == (
        ["tcp:4:interface=127.0.0.1", "tcp:6:interface=127.0.0.1"], 9.0,
        ["tcp:5:interface=127.0.0.1"])


def test_unknown_environment_variables(monkeypatch):
    for k in list(__import__("os").environ):
        if k.startswith(tap.ENV_PREFIX):
            monkeypatch.delenv(k)
    monkeypatch.setenv("ETCD_ADAPTER_STOR", "sqlite:///x.db")
    monkeypatch.setenv("ETCD_ADAPTER_FROBNICATE", "1")
    monkeypatch.setenv("ETCD_ADAPTER_LOG_LEVEL", "debug")        # an option: known
    for k in ("SERVICE_HOST", "SERVICE_PORT", "SERVICE_PORT_CLIENT", "PORT",
              "PORT_2379_TCP", "PORT_2379_TCP_PROTO", "PORT_2379_TCP_PORT",
              "PORT_2379_TCP_ADDR"):                               # Kubernetes' own
        monkeypatch.setenv("ETCD_ADAPTER_" + k, "x")
    assert tap.Options().environment_warnings == [
        "etcd-adapter: warning: unknown environment variable ETCD_ADAPTER_FROBNICATE "
        "ignored",
        "etcd-adapter: warning: unknown environment variable ETCD_ADAPTER_STOR ignored "
        "(did you mean ETCD_ADAPTER_STORE?)"]


def test_tcp_endpoint_without_interface_is_warned_about(capsys):
    assert parse(["--listen", "tcp:2379"]).config().listen == ["tcp:2379"]
    assert capsys.readouterr().err == (
        "etcd-adapter: warning: --listen tcp:2379 listens on every interface; write "
        "0.0.0.0:2379 to say so, or 127.0.0.1:2379 for this host only\n")
    parse(["--listen", "0.0.0.0:2379", "--listen", "tcp:2380:interface=127.0.0.1"])
    assert capsys.readouterr().err == ""
