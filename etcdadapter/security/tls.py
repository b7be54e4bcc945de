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
        self.context = self._build()

    def _build(self):
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE)
        try:
            ctx.use_certificate_chain_file(self.cert_file)
            ctx.use_privatekey_file(self.key_file)
            ctx.check_privatekey()
            if self.trusted_ca_file:
                ctx.load_verify_locations(self.trusted_ca_file)
        except (SSL.Error, OSError) as e:
            raise TLSConfigError("cannot load TLS files (%s, %s, %s): %s" % (
                self.cert_file, self.key_file, self.trusted_ca_file, _ssl_reason(e)))
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

    def wrap(self, factory):
        """``factory``'s protocols, behind TLS."""
        return TLSMemoryBIOFactory(self, False, factory)


def _ssl_reason(error):
    if isinstance(error, SSL.Error) and error.args and isinstance(error.args[0], list):
        return "; ".join(str(x[-1]) for x in error.args[0]) or repr(error)
    return str(error)
