"""Test PKI made with `cryptography`: a CA, server and client certificates, as PEM files."""

import datetime
import ipaddress
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key():
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key):
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


class CA(object):
    def __init__(self, directory, cn="etcd-adapter test CA"):
        self.dir = str(directory)
        self.key = _key()
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (x509.CertificateBuilder()
                     .subject_name(_name(cn)).issuer_name(_name(cn))
                     .public_key(self.key.public_key())
                     .serial_number(x509.random_serial_number())
                     .not_valid_before(now - datetime.timedelta(hours=1))
                     .not_valid_after(now + datetime.timedelta(days=2))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
                     .add_extension(x509.KeyUsage(
                         digital_signature=True, key_cert_sign=True, crl_sign=True,
                         content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False,
                         encipher_only=False, decipher_only=False), True)
                     .sign(self.key, hashes.SHA256()))
        self.path = os.path.join(self.dir, "ca.pem")
        with open(self.path, "wb") as f:
            f.write(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, name, cn, usage, dns=(), ips=(), uris=()):
        """Write ``name``.pem / ``name``-key.pem; return (cert path, key path, cert).
        ``usage``: "server" (serverAuth only), "client" (clientAuth only),
        "server+client" (both)."""
        key = _key()
        now = datetime.datetime.now(datetime.timezone.utc)
        eku = {"server": [ExtendedKeyUsageOID.SERVER_AUTH],
               "client": [ExtendedKeyUsageOID.CLIENT_AUTH],
               # etcd's HTTP/JSON gateway dials etcd's gRPC with the server certificate
               "server+client": [ExtendedKeyUsageOID.SERVER_AUTH,
                                 ExtendedKeyUsageOID.CLIENT_AUTH]}[usage]
        b = (x509.CertificateBuilder()
             .subject_name(_name(cn)).issuer_name(self.cert.subject)
             .public_key(key.public_key())
             .serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(hours=1))
             .not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
             .add_extension(x509.ExtendedKeyUsage(eku), False))
        alt = ([x509.DNSName(d) for d in dns]
               + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
               + [x509.UniformResourceIdentifier(u) for u in uris])
        if alt:
            b = b.add_extension(x509.SubjectAlternativeName(alt), False)
        cert = b.sign(self.key, hashes.SHA256())
        cert_path = os.path.join(self.dir, name + ".pem")
        key_path = os.path.join(self.dir, name + "-key.pem")
        with open(cert_path, "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM))
        with open(key_path, "wb") as f:
            f.write(_pem_key(key))
        return cert_path, key_path, cert


def read(path):
    with open(path, "rb") as f:
        return f.read()
