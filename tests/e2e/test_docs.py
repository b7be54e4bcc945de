"""The configurations in docs/ are real: every YAML block marked ``<!-- yaml: NAME -->``
parses; adapter blocks are accepted by ``twistd etcd-adapter --config-file``; APISIX
blocks use only APISIX 3.x's ``deployment.etcd`` keys and point at their adapter's
listener; and the HTTP and gRPC pairs are run: an adapter started with the doc's config
file, then what APISIX does in that mode (put, full read of the prefix, watch from the
next revision) against it."""

import base64
import os
import re
import socket
from urllib.parse import urlsplit

import pytest
import yaml

from support import servers
from support.docs import marked
from support.certs import CA
from etcdadapter import tap
from etcdadapter.pb.etcdserverpb import rpc_pb2 as rpc
from support.gateway_client import GatewayClient
from support.multi import Watcher

DOCS = os.path.join(servers.REPO_ROOT, "docs")

# APISIX 3.x deployment.etcd keys: apisix/cli/schema.lua (etcd_schema) and
# conf/config-default.yaml of releases 3.2-3.9 (use_grpc: 3.2-3.5; watch_timeout: 3.8+).
APISIX_ETCD_KEYS = {"host", "prefix", "timeout", "watch_timeout", "resync_delay",
                    "health_check_timeout", "startup_retry", "user", "password", "tls",
                    "use_grpc"}
APISIX_ETCD_TLS_KEYS = {"cert", "key", "verify", "sni"}
APISIX_DEPLOYMENT_KEYS = {"role", "role_traditional", "role_data_plane",
                          "role_control_plane", "admin", "etcd"}


def blocks():
    """{name: parsed YAML} of every marked yaml block (README.md and docs/*.md)."""
    return {name: yaml.safe_load(text) for name, text in marked("yaml").items()}


BLOCKS = blocks()
PAIRS = sorted(n[len("apisix-"):] for n in BLOCKS if n.startswith("apisix-"))


def test_docs_are_linked_from_the_readme():
    readme = open(os.path.join(servers.REPO_ROOT, "README.md")).read()
    for name in os.listdir(DOCS):
        assert "docs/%s" % name in readme, name
    assert {"http", "grpc", "mtls"} <= set(PAIRS)
    assert {"adapter-sidecar", "adapter-control-plane"} <= set(BLOCKS)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("docs-pki")
    ca = CA(d)
    cert, key, _ = ca.issue("server", "etcd-adapter", "server", ips=["127.0.0.1"])
    return {"cert-file": cert, "key-file": key, "trusted-ca-file": ca.path}


def write_config(tmp_path, name, pki):
    """The doc's adapter block as a file, certificate paths swapped for real ones."""
    config = dict(BLOCKS[name])
    for key in pki:
        if key in config:
            config[key] = pki[key]
    path = tmp_path / (name + ".yaml")
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.mark.parametrize("name", sorted(n for n in BLOCKS if n.startswith("adapter-")))
def test_adapter_blocks_are_valid_config_files(name, tmp_path, pki, monkeypatch):
    for k in list(os.environ):
        if k.startswith(tap.ENV_PREFIX):
            monkeypatch.delenv(k)
    options = tap.Options()
    options.parseOptions(["--config-file", write_config(tmp_path, name, pki)])
    config = options.config()
    assert config.store == BLOCKS[name]["store"]
    assert config.listen == BLOCKS[name]["listen"]


def _listen_port(listen):
    m = re.match(r"tcp:(\d+)", listen[0])
    return int(m.group(1))


@pytest.mark.parametrize("mode", PAIRS)
def test_apisix_blocks_match_apisix_and_their_adapter(mode):
    apisix, adapter = BLOCKS["apisix-" + mode], BLOCKS["adapter-" + mode]
    deployment = apisix["deployment"]
    assert set(deployment) <= APISIX_DEPLOYMENT_KEYS
    assert deployment["role"] == "traditional"
    assert deployment["role_traditional"] == {"config_provider": "etcd"}
    etcd = deployment["etcd"]
    assert set(etcd) <= APISIX_ETCD_KEYS, set(etcd) - APISIX_ETCD_KEYS
    assert set(etcd.get("tls", {})) <= APISIX_ETCD_TLS_KEYS
    assert isinstance(etcd["timeout"], int) and etcd["timeout"] >= 1
    assert etcd["prefix"].startswith("/")
    assert etcd.get("use_grpc", False) is (mode == "grpc")
    tls = "cert-file" in adapter
    for host in etcd["host"]:
        u = urlsplit(host)
        assert u.scheme == ("https" if tls else "http"), host
        assert u.port == _listen_port(adapter["listen"])
    if adapter.get("client-cert-auth"):
        assert etcd["tls"]["cert"] and etcd["tls"]["key"]


def _b64(data):
    return base64.b64encode(data).decode()


@pytest.mark.adapter
@pytest.mark.parametrize("mode", ["http", "grpc"])
def test_pairs_run(mode, tmp_path, pki):
    """The adapter from the doc's file (the harness's --listen/--store on the command
    line win over the file's), then APISIX's requests for that mode."""
    prefix = BLOCKS["apisix-" + mode]["deployment"]["etcd"]["prefix"].encode()
    end = prefix[:-1] + bytes([prefix[-1] + 1])
    server = servers.AdapterServer("docs-" + mode, extra_args=[
        "--config-file", write_config(tmp_path, "adapter-" + mode, pki)])
    server.start()
    try:
        route = prefix + b"/routes/1"
        if mode == "http":
            gw = GatewayClient(server.endpoint)
            put = gw.call("/v3/kv/put", {"key": _b64(route), "value": _b64(b'{"uri":"/"}'),
                                         "prev_kv": True})        # asserts a 200
            assert "prev_kv" not in put
            full = gw.call("/v3/kv/range", {"key": _b64(prefix), "range_end": _b64(end)})
            rev = int(full["header"]["revision"])
            assert [base64.b64decode(kv["key"]) for kv in full["kvs"]] == [route]
            stream = gw.stream("/v3/watch", {"create_request": {
                "key": _b64(prefix), "range_end": _b64(end), "start_revision": str(rev + 1)}})
            assert stream.next(5)["result"]["created"] is True
            gw.call("/v3/kv/put", {"key": _b64(prefix + b"/routes/2"), "value": _b64(b"{}")})
            event = stream.next(5)["result"]["events"][0]
            assert base64.b64decode(event["kv"]["key"]) == prefix + b"/routes/2"
            assert int(event["kv"]["mod_revision"]) == rev + 1
            stream.close()
            gw.close()
        else:
            with servers.GrpcClient(server.endpoint) as c:
                assert c.call("/etcdserverpb.KV/Put", rpc.PutRequest(key=route, value=b"{}"),
                              rpc.PutResponse).ok
                r = c.call("/etcdserverpb.KV/Range", rpc.RangeRequest(key=prefix,
                                                                      range_end=end),
                           rpc.RangeResponse).response
                assert [kv.key for kv in r.kvs] == [route]
                w = Watcher(server, key=prefix, range_end=end,
                            start_revision=r.header.revision + 1)
                try:
                    c.call("/etcdserverpb.KV/Put", rpc.PutRequest(
                        key=prefix + b"/routes/2", value=b"{}"), rpc.PutResponse)
                    w.wait_for(r.header.revision + 1, timeout=5)
                    assert w.events == [(r.header.revision + 1, 0, prefix + b"/routes/2",
                                         b"{}")]
                finally:
                    w.close()
    except socket.timeout:
        raise AssertionError("no answer from the adapter")
    finally:
        server.stop()
        server.cleanup()
