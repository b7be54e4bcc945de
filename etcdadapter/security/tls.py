"""TLS for the client port: certificates, ALPN, optional client-certificate auth, reload.

The options are etcd's (``--cert-file``, ``--key-file``, ``--trusted-ca-file``,
``--client-cert-auth``) so operators keep their habits.  After the handshake the same
sniffing as on plain TCP picks HTTP/2 or HTTP/1.1; ALPN offers ``h2`` (gRPC clients
require it) and ``http/1.1``, and a client that sends no ALPN at all (APISIX's OpenResty,
LuaSec) simply gets no ALPN and speaks HTTP/1.1.

The server certificate is only ever used as a server certificate (etcd's own gateway
reuses it as a client certificate and so needs the clientAuth usage, etcd#9785).

:meth:`ServerTLS.reload` builds a new context from the files; connections already open
keep theirs, new connections get the new one.  A reload that fails (a half-written file)
keeps the old context and logs why.
"""

from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory

from etcdadapter.logs import address_text
from zope.interface import implementer

log = Logger()

ALPN_PROTOCOLS = (b"h2", b"http/1.1")


class TLSConfigError(Exception):
    pass


def _select_alpn(connection, offered):
    for proto in ALPN_PROTOCOLS:
        if proto in offered:
            return proto
    return SSL.NO_OVERLAPPING_PROTOCOLS


def _accept_verified(connection, x509, errno, depth, ok):
    return bool(ok)


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS(object):
    def __init__(self, cert_file, key_file, trusted_ca_file=None, client_cert_auth=False):
        if not cert_file or not key_file:
            raise TLSConfigError("--cert-file and --key-file go together")
        if client_cert_auth and not trusted_ca_file:
            raise TLSConfigError("--client-cert-auth needs --trusted-ca-file")
        self.cert_file = cert_file
        self.key_file = key_file
        self.trusted_ca_file = trusted_ca_file
        self.client_cert_auth = client_cert_auth
        #: Handshakes that failed (no or untrusted client certificate, no common
        #: protocol or cipher, not TLS at all), for /metrics.
        self.handshakes_refused = 0
        self._refusal_log = None
        self.context = self._build()

    def _build(self):
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE)
        # One file at a time, so that the error names the file and the reason.
        _load("--cert-file", self.cert_file, "a PEM certificate",
              ctx.use_certificate_chain_file)
        try:
            _load("--key-file", self.key_file, "a PEM private key",
                  ctx.use_privatekey_file)
            ctx.check_privatekey()
        except (SSL.Error, TLSConfigError) as e:
            # OpenSSL compares the key with the certificate while loading it.
            if isinstance(e, TLSConfigError) and "mismatch" not in str(e):
                raise
            raise TLSConfigError("--key-file %s is not the key of --cert-file %s" % (
                self.key_file, self.cert_file))
        if self.trusted_ca_file:
            _load("--trusted-ca-file", self.trusted_ca_file, "PEM CA certificates",
                  ctx.load_verify_locations)
        if self.client_cert_auth:
            ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT,
                           _accept_verified)
        # Session resumption with client certificates needs a session id context.
        ctx.set_session_id(b"etcd-adapter")
        ctx.set_alpn_select_callback(_select_alpn)
        return ctx

    def reload(self):
        """Re-read the files; True if the new certificates are in use."""
        try:
            self.context = self._build()
        except TLSConfigError as e:
            log.error("TLS reload failed, keeping the previous certificates: {error}",
                      error=str(e))
            return False
        log.info("TLS certificates reloaded from {cert}", cert=self.cert_file)
        return True

    # IOpenSSLServerConnectionCreator
    def serverConnectionForTLS(self, tlsProtocol):
        return SSL.Connection(self.context, None)

    def wrap(self, factory, clock=None):
        """``factory``'s protocols, behind TLS; refused handshakes are counted and
        logged (at most one line per 10 s, with how many since the last)."""
        if clock is None:
            from twisted.internet import reactor as clock
        from etcdadapter.transport.limits import LogThrottle
        self._refusal_log = LogThrottle(clock, 10.0)
        wrapping = TLSMemoryBIOFactory(self, False, factory)
        wrapping.protocol = _counting_protocol(self)
        return wrapping

    def handshake_refused(self, peer, error):
        self.handshakes_refused += 1
        n = self._refusal_log.due() if self._refusal_log is not None else 1
        if n:
            log.warn("refused {n} TLS handshake(s) (latest from {peer}: {reason})",
                     event="tls-handshake-refused", n=n, peer=peer,
                     reason=_ssl_reason(error))


def _counting_protocol(tls):
    base = TLSMemoryBIOFactory.protocol

    class CountingTLSProtocol(base):
        def _tlsShutdownFinished(self, reason):
            # A TLS error before the handshake completed: the handshake was refused.
            if (reason is not None and not self._handshakeDone
                    and isinstance(reason.value, SSL.Error)):
                peer = self.transport.getPeer() if self.transport else None
                tls.handshake_refused(address_text(peer), reason.value)
            return base._tlsShutdownFinished(self, reason)
    return CountingTLSProtocol


def _load(option, path, what, load):
    try:
        with open(path, "rb"):
            pass        # the OS's reason first: missing, unreadable (DynamicUser=yes...)
    except OSError as e:
        raise TLSConfigError("%s %s: %s" % (option, path, (e.strerror or str(e)).lower()))
    try:
        load(path)
    except SSL.Error as e:
        raise TLSConfigError("%s %s: not %s (%s)" % (option, path, what, _ssl_reason(e)))


def _ssl_reason(error):
    if isinstance(error, SSL.Error) and error.args and isinstance(error.args[0], list):
        return "; ".join(str(x[-1]) for x in error.args[0]) or repr(error)
    return str(error)
