"""``--listen-metrics-urls``: /metrics, /health and /version on listeners of their own,
in plain HTTP and without client certificates even when the client port requires them
(etcd's flag of the same name), so that Prometheus, a load balancer's health check or a
kubelet probe can reach them.  No gRPC method and no v3 API path is served there."""

from etcdadapter.gateway import endpoints as http_endpoints
from etcdadapter.gateway.router import HttpRouter
from etcdadapter.services.rpc import MethodRegistry
from etcdadapter.transport.protocol import EtcdFactory


def factory(metrics, health_check, clock):
    router = HttpRouter()
    router.max_body_bytes = 65536           # GETs only
    http_endpoints.install(router, health_check)
    metrics.install(router)
    return EtcdFactory(MethodRegistry(), router, clock=clock)
