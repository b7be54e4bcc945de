"""A small blocking client of etcd's HTTP/JSON gateway (``/v3/...``, etcd 3.4 and later):
what ``etcd-adapter migrate`` asks a running etcd.  Requests and responses are the
protobuf messages of :mod:`etcdadapter.pb`, converted with protobuf's JSON mapping, so the
fields are etcd's own.  Standard library HTTP only: no gRPC runtime needed.

Several endpoints: each request goes to the first that answers (the next on a connection
error).  ``--user NAME:PASSWORD`` logs in (Authenticate) and sends the token; a token that
expired is renewed once.
"""

import http.client
import json
import socket
import ssl
from urllib.parse import urlsplit

from google.protobuf import json_format

from etcdadapter.pb.etcdserverpb import rpc_pb2 as rpc

TIMEOUT = 10.0


class EtcdClientError(Exception):
    """etcd could not be reached, or answered an error (the message says which)."""

    def __init__(self, message, code=None):
        Exception.__init__(self, message)
        self.code = code


class Endpoint(object):
    def __init__(self, url):
        parts = urlsplit(url if "://" in url else "http://" + url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise EtcdClientError("bad etcd endpoint %r: expected http(s)://host:port"
                                  % url)
        self.url = url
        self.tls = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or 2379


class EtcdClient(object):
    def __init__(self, endpoints, cacert=None, cert=None, key=None, user=None,
                 timeout=TIMEOUT):
        self.endpoints = [Endpoint(u.strip()) for u in endpoints.split(",") if u.strip()]
        if not self.endpoints:
            raise EtcdClientError("no etcd endpoint given")
        self.timeout = timeout
        self._context = None
        if any(e.tls for e in self.endpoints):
            self._context = ssl.create_default_context(cafile=cacert)
            if cert:
                self._context.load_cert_chain(cert, key)
        self.user = None
        self.password = None
        if user:
            if ":" not in user:
                raise EtcdClientError("--user takes NAME:PASSWORD")
            self.user, self.password = user.split(":", 1)
        self.token = None
        self.auth_enabled = False

    # -- plumbing ------------------------------------------------------------------------
    def connect(self, endpoint, timeout=None):
        timeout = self.timeout if timeout is None else timeout
        if endpoint.tls:
            return http.client.HTTPSConnection(endpoint.host, endpoint.port,
                                               timeout=timeout, context=self._context)
        return http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=timeout)

    def headers(self):
        h = {"Content-Type": "application/json"}
        if self.token:
            h["Authorization"] = self.token
        return h

    def open(self, path, request, timeout=None, keepalive=False):
        """(connection, response) of a POST to the first endpoint that answers.
        ``keepalive``: TCP keep-alive probes, so that a stream that waits for etcd
        without a timeout notices an etcd host that vanished (~1 min)."""
        body = json_format.MessageToJson(request, preserving_proto_field_name=True)
        errors = []
        for endpoint in self.endpoints:
            conn = self.connect(endpoint, timeout)
            try:
                if keepalive:
                    conn.connect()
                    _keepalive(conn.sock)
                conn.request("POST", path, body, self.headers())
                return conn, conn.getresponse()
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                errors.append("%s: %s" % (endpoint.url, e))
        raise EtcdClientError("cannot reach etcd (%s)" % "; ".join(errors))

    def call(self, path, request, response_class, renewed=False):
        conn, response = self.open(path, request)
        try:
            text = response.read()
        finally:
            conn.close()
        if response.status != 200:
            error = _error_of(text, response.status)
            if not renewed and self.user and "token" in str(error):
                self.login()
                return self.call(path, request, response_class, renewed=True)
            raise error
        return json_format.Parse(text, response_class(), ignore_unknown_fields=True)

    def login(self):
        """Log in as --user (if given); whether etcd's auth is enabled."""
        self.token = None
        if not self.user:
            return False
        try:
            r = self.call("/v3/auth/authenticate",
                          rpc.AuthenticateRequest(name=self.user, password=self.password),
                          rpc.AuthenticateResponse, renewed=True)
        except EtcdClientError as e:
            if "authentication is not enabled" in str(e):
                self.auth_enabled = False
                return False
            raise
        self.token = r.token
        self.auth_enabled = True
        return True

    # -- requests --------------------------------------------------------------------------
    def range(self, request):
        return self.call("/v3/kv/range", request, rpc.RangeResponse)

    def revision(self):
        """etcd's current revision."""
        return self.range(rpc.RangeRequest(key=b"\0", count_only=True)).header.revision

    def lease_ids(self):
        r = self.call("/v3/kv/lease/leases", rpc.LeaseLeasesRequest(), rpc.LeaseLeasesResponse)
        return sorted(lease.ID for lease in r.leases)

    def lease_ttl(self, lease_id):
        """(granted TTL, remaining seconds), or None if the lease is gone."""
        r = self.call("/v3/kv/lease/timetolive", rpc.LeaseTimeToLiveRequest(ID=lease_id),
                      rpc.LeaseTimeToLiveResponse)
        if r.TTL < 0 or r.grantedTTL == 0:
            return None
        return r.grantedTTL, r.TTL

    def users(self):
        r = self.call("/v3/auth/user/list", rpc.AuthUserListRequest(),
                      rpc.AuthUserListResponse)
        out = {}
        for name in r.users:
            out[name] = list(self.call("/v3/auth/user/get", rpc.AuthUserGetRequest(name=name),
                                       rpc.AuthUserGetResponse).roles)
        return out

    def roles(self):
        r = self.call("/v3/auth/role/list", rpc.AuthRoleListRequest(),
                      rpc.AuthRoleListResponse)
        out = {}
        for name in r.roles:
            out[name] = list(self.call("/v3/auth/role/get", rpc.AuthRoleGetRequest(role=name),
                                       rpc.AuthRoleGetResponse).perm)
        return out

    def watch(self, start_revision, timeout=None):
        """A generator of WatchResponses of a watch over the whole keyspace from
        ``start_revision``, with prev_kv (blocking reads, each at most ``timeout``
        seconds; ends when the stream does)."""
        request = rpc.WatchRequest(create_request=rpc.WatchCreateRequest(
            key=b"\0", range_end=b"\0", start_revision=start_revision, prev_kv=True))
        conn, response = self.open("/v3/watch", request, timeout=timeout, keepalive=True)
        try:
            if response.status != 200:
                raise _error_of(response.read(), response.status)
            while True:
                line = response.readline()
                if not line:
                    return
                line = line.strip()
                if not line:
                    continue
                doc = json.loads(line.decode("utf-8"))
                if "error" in doc:
                    raise _error_of(json.dumps(doc["error"]).encode(), 200)
                yield json_format.ParseDict(doc.get("result", {}), rpc.WatchResponse(),
                                            ignore_unknown_fields=True)
        finally:
            conn.close()


def _keepalive(sock, idle=30, interval=10, count=3):
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", idle), ("TCP_KEEPINTVL", interval),
                        ("TCP_KEEPCNT", count)):
        if hasattr(socket, name):              # Linux; elsewhere the system's defaults
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


def _error_of(text, status):
    try:
        doc = json.loads(text.decode("utf-8"))
        message = doc.get("error") or doc.get("message") or text.decode("utf-8", "replace")
        code = doc.get("code")
    except (ValueError, AttributeError):
        message, code = text.decode("utf-8", "replace"), None
    return EtcdClientError("etcd answered HTTP %d: %s" % (status, message), code)
