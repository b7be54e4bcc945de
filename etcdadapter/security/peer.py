"""Who is on the other end of a TLS connection: the verified client certificate's names.

Both faces take the identity from the same place (the connection), so a policy applied to
it holds identically for gRPC and HTTP requests -- etcd's own gateway loses it.
"""

from collections import namedtuple

from cryptography import x509
from cryptography.x509.oid import NameOID

# common_name: the subject CN (what etcd's --client-cert-auth uses as the user name);
# dns_names, uris, ips: the subjectAltName entries (tuples of str; empty by default, so
# an embedding host can say PeerIdentity("apisix")).
PeerIdentity = namedtuple("PeerIdentity", "common_name dns_names uris ips",
                          defaults=((), (), ()))


def identity_of_certificate(cert):
    """PeerIdentity of a cryptography ``x509.Certificate``."""
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    common_name = cns[0].value if cns else ""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    if san is None:
        return PeerIdentity(common_name, (), (), ())
    return PeerIdentity(
        common_name,
        tuple(san.get_values_for_type(x509.DNSName)),
        tuple(san.get_values_for_type(x509.UniformResourceIdentifier)),
        tuple(str(ip) for ip in san.get_values_for_type(x509.IPAddress)))


def peer_identity(transport):
    """The verified client certificate's identity on ``transport`` (a Twisted TLS
    transport), or None for plain TCP or a client that sent no certificate."""
    get = getattr(transport, "getPeerCertificate", None)
    if get is None:
        return None
    try:
        cert = get()
    except Exception:
        return None
    if cert is None:
        return None
    return identity_of_certificate(cert.to_cryptography())
