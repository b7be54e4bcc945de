"""Auth tokens that every adapter on one database can verify, in etcd's simple-token shape.

etcd's simple tokens are ``<16 random letters>.<index>`` and every member knows them
because Authenticate goes through raft.  Ours carry what another adapter needs to accept
them without having seen them: ``<16 letters>.<digits>`` where

* the digits are a big integer holding version, issue time (ms), a random nonce and the
  user name (not secret: the token is a bearer credential either way), and
* the letters are an HMAC-SHA256 of those bytes and of the user's stored password hash,
  keyed with a secret kept in the shared auth state, in base 52 (about 91 bits).

So a token stops verifying everywhere when its user's password changes or the user is
deleted (the hash is gone), and when auth is disabled (the secret is dropped; enabling
makes a new one).  Clients treat tokens as opaque; only the shape is etcd's.

Pure functions; :class:`~etcdadapter.security.auth_store.AuthStore` keeps the sliding
TTL per process.
"""

import hashlib
import hmac
import os
import string
import struct

_LETTERS = string.ascii_letters
_VERSION = 1
_HEAD = struct.Struct(">BQI")       # version, issued (ms), nonce
_MAC_LETTERS = 16
_MAX_TOKEN = 400                    # characters; anything longer is not ours


def new_secret():
    return os.urandom(32)


def _mac(secret, payload, password_hash):
    digest = hmac.new(secret, payload + b"\0" + password_hash.encode("utf-8"),
                      hashlib.sha256).digest()
    n = int.from_bytes(digest[:12], "big")
    out = []
    for _ in range(_MAC_LETTERS):
        n, r = divmod(n, len(_LETTERS))
        out.append(_LETTERS[r])
    return "".join(out)


def issue(secret, name, password_hash, issued_ms, nonce):
    """The token of user ``name`` issued at ``issued_ms`` (wall clock, ms)."""
    payload = _HEAD.pack(_VERSION, issued_ms, nonce) + name.encode("utf-8")
    return "%s.%d" % (_mac(secret, payload, password_hash),
                      int.from_bytes(payload, "big"))


def verify(secret, token, password_hash_of):
    """(user name, issued ms) of a genuine token, else None.  ``password_hash_of(name)``
    returns the user's stored hash, or None if there is no such user."""
    if not secret or not isinstance(token, str) or len(token) > _MAX_TOKEN:
        return None
    letters, dot, digits = token.partition(".")
    if not dot or len(letters) != _MAC_LETTERS or not letters.isascii() \
            or not digits.isdigit() or not digits.isascii():
        return None
    n = int(digits)
    payload = n.to_bytes((n.bit_length() + 7) // 8, "big")
    if len(payload) < _HEAD.size or payload[0] != _VERSION:
        return None
    _version, issued_ms, _nonce = _HEAD.unpack_from(payload)
    try:
        name = payload[_HEAD.size:].decode("utf-8")
    except UnicodeDecodeError:
        return None
    password_hash = password_hash_of(name)
    if password_hash is None:
        return None
    if not hmac.compare_digest(letters, _mac(secret, payload, password_hash)):
        return None
    return name, issued_ms
