"""The in-process client's calls are counted in /metrics like remote ones -- replace_prefix
(no etcd RPC) included, under etcdadapter.KV/ReplacePrefix."""

import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from etcdadapter import errors

from support.embedding import embedded  # noqa: F401 (the fixture)
from support.embedding import endpoint
from support.stores import call


def handled(adapter):
    """{(service, method, code): calls handled} as GET /metrics shows them."""
    url = "http://%s/metrics" % endpoint(adapter)
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "grpc_server_handled_total":
                out[(s.labels["grpc_service"], s.labels["grpc_method"],
                     s.labels["grpc_code"])] = s.value
    return out


@pytest.mark.parametrize("store_kind", ["memory"])
def test_replace_prefix_counted_in_metrics_like_the_other_calls(embedded):
    adapter = embedded()
    client = adapter.client()
    call(client.put, "/r/a", "1")
    assert call(client.replace_prefix, "/r/", {"/r/b": "2"}).revision == 3
    with pytest.raises(errors.EtcdError) as info:
        call(client.replace_prefix, "/r/", {"/elsewhere": "x"})    # outside the prefix
    assert info.value == errors.ErrKeyOutsidePrefix
    got = handled(adapter)
    assert got[("etcdserverpb.KV", "Put", "OK")] == 1
    assert got[("etcdadapter.KV", "ReplacePrefix", "OK")] == 1
    assert got[("etcdadapter.KV", "ReplacePrefix", "InvalidArgument")] == 1
