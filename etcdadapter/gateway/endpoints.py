"""Endpoints every etcd serves on its client port besides the v3 API: /version, /health."""

from etcdadapter.gateway.router import JSON, json_body
from etcdadapter.services.identity import CLUSTER_VERSION, SERVER_VERSION


def install(router, health_check):
    """``health_check()`` returns a Deferred firing with (healthy, reason)."""

    def version(exchange):
        exchange.respond(200, [JSON], json_body(
            {"etcdserver": SERVER_VERSION, "etcdcluster": CLUSTER_VERSION}))

    def health(exchange):
        def answer(result):
            healthy, reason = result
            exchange.respond(200 if healthy else 503, [JSON], json_body(
                {"health": "true" if healthy else "false", "reason": reason}))

        def failed(failure):
            answer((False, str(failure.value)))

        health_check().addCallbacks(answer, failed)

    router.add("/version", version, methods=("GET",))
    router.add("/health", health, methods=("GET",))
