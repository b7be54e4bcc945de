"""``--config-file``: the daemon's options from YAML, command line > environment > file >
defaults, and every mistake a usage error that names the key."""

import textwrap

import pytest
from twisted.python import usage

from support import servers
from support.certs import CA
from etcdadapter import tap
from etcdadapter.pb.etcdserverpb import rpc_pb2 as rpc


def write(tmp_path, text, name="etcd-adapter.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def parse(args):
    options = tap.Options()
    options.parseOptions(args)
    return options


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    import os
    for name in list(os.environ):
        if name.startswith(tap.ENV_PREFIX):
            monkeypatch.delenv(name)


def test_every_kind_of_value(tmp_path):
    pki = CA(tmp_path)
    cert, key, _ = pki.issue("server", "etcd-adapter", "server", ips=["127.0.0.1"])
    path = write(tmp_path, """
        # etcd-adapter options, keys as the long flags
        store: sqlite:///var/lib/etcd-adapter/db.sqlite
        listen: [tcp:2379:interface=0.0.0.0, "unix:/run/etcd-adapter.sock"]
        max-request-bytes: 1048576
        max-txn-ops: 64
        drain-timeout: 2.5
        watch-progress-notify-interval: 1m30s
        auth-token-ttl: 60
        advertise-client-urls: [http://a.example:2379, http://b.example:2379]
        name: from-file
        cert-file: %s
        key-file: %s
        trusted-ca-file: %s
        client-cert-auth: true
        """ % (cert, key, pki.path))
    o = parse(["--config-file", path])
    c = o.config()
    assert c.store == "sqlite:///var/lib/etcd-adapter/db.sqlite"
    assert c.listen == ["tcp:2379:interface=0.0.0.0", "unix:/run/etcd-adapter.sock"]
    assert (c.max_request_bytes, c.max_txn_ops, c.drain_timeout) == (1048576, 64, 2.5)
    assert (c.watch_progress_notify_interval, c.auth_token_ttl) == (90.0, 60.0)
    assert c.advertise_client_urls == ["http://a.example:2379", "http://b.example:2379"]
    assert (c.name, c.cert_file, c.key_file, c.trusted_ca_file) == (
        "from-file", cert, key, pki.path)
    assert c.client_cert_auth is True
    assert o.tls is not None          # the certificate files were loaded


def test_command_line_over_environment_over_file(tmp_path, monkeypatch):
    path = write(tmp_path, """
        listen: tcp:1
        max-txn-ops: 11
        max-request-bytes: 1111
        name: file
        drain-timeout: 1
        """)
    monkeypatch.setenv("ETCD_ADAPTER_CONFIG_FILE", path)     # the file from the env
    monkeypatch.setenv("ETCD_ADAPTER_MAX_TXN_OPS", "22")
    monkeypatch.setenv("ETCD_ADAPTER_NAME", "env")
    monkeypatch.setenv("ETCD_ADAPTER_LISTEN", "tcp:2,tcp:3")
    c = parse(["--name", "cli"]).config()
    assert (c.name, c.max_txn_ops, c.max_request_bytes, c.drain_timeout) == (
        "cli", 22, 1111, 1.0)
    assert c.listen == ["tcp:2", "tcp:3"]             # env list beats the file's
    c = parse(["--listen", "tcp:4", "--max-txn-ops", "33"]).config()
    assert (c.listen, c.max_txn_ops) == (["tcp:4"], 33)
    monkeypatch.delenv("ETCD_ADAPTER_LISTEN")
    assert parse([]).config().listen == ["tcp:1"]     # one string is a list of one
    # Defaults where nobody says anything.
    assert parse([]).config().max_concurrent_streams == 1000
    # The command line's --config-file wins over the environment's.
    other = write(tmp_path, "name: other-file\nmax-txn-ops: 5\n", "other.yaml")
    monkeypatch.delenv("ETCD_ADAPTER_MAX_TXN_OPS")
    monkeypatch.delenv("ETCD_ADAPTER_NAME")
    c = parse(["--config-file", other]).config()
    assert (c.name, c.max_txn_ops, c.max_request_bytes) == ("other-file", 5, 1572864)


def test_flag_from_file_and_environment_turning_it_off(tmp_path, monkeypatch):
    pki = CA(tmp_path)
    cert, key, _ = pki.issue("server", "etcd-adapter", "server")
    path = write(tmp_path, "client-cert-auth: true\ncert-file: %s\nkey-file: %s\n"
                 "trusted-ca-file: %s\n" % (cert, key, pki.path))
    assert parse(["--config-file", path])["client-cert-auth"] is True
    monkeypatch.setenv("ETCD_ADAPTER_CLIENT_CERT_AUTH", "false")
    assert parse(["--config-file", path])["client-cert-auth"] is False


@pytest.mark.parametrize("text,message", [
    ("stores: memory://\n", "stores: unknown option"),
    ("max-txn-ops: true\n", "max-txn-ops: expected a number or a string, got true/false"),
    ("max-txn-ops: [1]\n", "max-txn-ops: expected a number or a string, got a list"),
    ("max-txn-ops: 0\n", "max-txn-ops: must be a positive integer"),
    ("max-request-bytes: 1.5\n", "max-request-bytes: invalid literal for int()"),
    ("drain-timeout: soon\n", "drain-timeout: could not convert string to float"),
    ("watch-progress-notify-interval: 10x\n", "watch-progress-notify-interval: not a "
                                              "duration"),
    ("store: [memory://]\n", "store: expected a string, got a list"),
    ("name: 12\n", "name: expected a string, got a number"),
    ("client-cert-auth: yes please\n", "client-cert-auth: expected true or false, got a "
                                       "string"),
    ("listen: {tcp: 1}\n", "listen: expected a list of strings, got a mapping"),
    ("listen: [tcp:1, 2]\n", "listen: expected a list of strings, got a list"),
    ("config-file: /etc/other.yaml\n", "config-file: cannot be set in a config file"),
    ("- store\n", "expected a mapping of option names to values, got a list"),
    ("store: [unclosed\n", "not valid YAML"),
])
def test_mistakes_are_usage_errors_naming_the_key(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(usage.UsageError) as e:
        parse(["--config-file", path])
    assert message in str(e.value), str(e.value)
    assert path in str(e.value)


def test_missing_file_and_empty_file(tmp_path):
    with pytest.raises(usage.UsageError) as e:
        parse(["--config-file", str(tmp_path / "nope.yaml")])
    assert "nope.yaml: No such file or directory" in str(e.value)
    assert parse(["--config-file", write(tmp_path, "# nothing\n")]).config().store == \
        "memory://"
    # null leaves an option at its default.
    assert parse(["--config-file", write(tmp_path, "store:\n")]).config().store == \
        "memory://"


@pytest.mark.adapter
def test_daemon_takes_its_options_from_the_file(tmp_path):
    """twistd with only --config-file (beside the harness's --listen/--store): the file's
    max-txn-ops and name are in force."""
    path = write(tmp_path, "max-txn-ops: 2\nname: configured-by-file\n")
    server = servers.AdapterServer("config-file", extra_args=["--config-file", path])
    server.start()
    try:
        with servers.GrpcClient(server.endpoint) as c:
            ops = [rpc.RequestOp(request_put=rpc.PutRequest(key=b"k%d" % i, value=b"v"))
                   for i in range(3)]
            r = c.call("/etcdserverpb.KV/Txn", rpc.TxnRequest(success=ops),
                       rpc.TxnResponse)
            assert r.error() == ("INVALID_ARGUMENT",
                                 "etcdserver: too many operations in txn request")
            r = c.call("/etcdserverpb.KV/Txn", rpc.TxnRequest(success=ops[:2]),
                       rpc.TxnResponse)
            assert r.ok and r.response.succeeded
            r = c.call("/etcdserverpb.Cluster/MemberList", rpc.MemberListRequest(),
                       rpc.MemberListResponse)
            assert [m.name for m in r.response.members] == ["configured-by-file"]
    finally:
        server.stop()
        server.cleanup()
