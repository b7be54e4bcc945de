"""etcd's users, roles and simple tokens (etcd ``server/auth/store.go``, ``simple_token.go``).

State (users with password hashes, roles with key permissions, the enabled flag and the
auth revision) is kept in memory for the per-request checks and persisted as one JSON
blob through the store's ``auth_load()`` / ``auth_save(blob)``, so adapters sharing a
database share users and roles: every mutation re-reads the blob first, and a running
adapter re-reads it every ``refresh_interval`` seconds and before each Authenticate.

Tokens (etcd's ``--auth-token=simple`` shape) are signed with a secret kept in the shared
state (:mod:`etcdadapter.security.tokens`), so every adapter on the database accepts
them, as every etcd member knows a token Authenticate put through raft.  Each adapter
keeps its own sliding TTL, as each etcd member does: a token is valid for ``token_ttl``
seconds after its last use here; one this adapter has not seen yet is accepted if it was
issued less than ``token_ttl`` seconds ago (by the wall clock; adapters' clocks should
agree), and slides from then on.

Passwords are hashed as etcd 3.4 hashes them, with bcrypt (cost 10; only the first 72
bytes count, as in etcd), in a thread (``twisted.internet.threads.deferToThread``) so the
reactor never waits for the KDF.  So an etcd snapshot saved from the adapter carries
hashes etcd checks, and users restored from an etcd snapshot keep their passwords here.
scrypt hashes made by older adapters keep working here, not on etcd.
Plain passwords are never stored or logged.
"""

import base64
import hashlib
import hmac
import json
import os
import random

from twisted.internet import defer, task, threads
from twisted.logger import Logger

from etcdadapter import errors
from etcdadapter.logs import background_failure
from etcdadapter.pb.authpb import auth_pb2 as authpb
from etcdadapter.security import tokens
from etcdadapter.security.permissions import ALL, Permission, PermissionSet

log = Logger()

ROOT = "root"                 # etcd's root user and root role
TOKEN_TTL = 300.0             # etcd's --auth-token-ttl default
REFRESH_INTERVAL = 2.0
# Compare-and-save attempts of one auth change racing other adapters before giving up
# with "request timed out" (Unavailable: clients retry).
MUTATE_ATTEMPTS = 20

# bcrypt as etcd: golang.org/x/crypto/bcrypt's DefaultCost (etcd's --bcrypt-cost), and
# the password bytes bcrypt reads (etcd 3.4 ignores the rest: checked on 3.4.23).
BCRYPT_COST = 10
BCRYPT_MAX = 72
# scrypt (hashes of older adapters): about 16 MiB and a few tens of milliseconds.
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2 ** 14, 8, 1
_NONE = PermissionSet()
_READ, _WRITE, _READWRITE = (authpb.Permission.READ, authpb.Permission.WRITE,
                             authpb.Permission.READWRITE)


# -- password hashing (pure, run in a thread) ----------------------------------------------

def _check_bcrypt(password, stored):
    """etcd's check (Go's bcrypt.CompareHashAndPassword), which reads only the first 72
    bytes of the password, as bcrypt does."""
    import bcrypt
    try:
        return bcrypt.checkpw(password.encode("utf-8")[:BCRYPT_MAX], stored.encode("ascii"))
    except (ValueError, UnicodeError):
        return False


def hash_password(password):
    """The stored form of ``password``: etcd's own, a bcrypt hash of cost 10
    (``$2a$10$...``, what etcd 3.4 stores), so that users carried to etcd in a snapshot
    keep their passwords there.  Like etcd 3.4 (Go's bcrypt), only the first 72 bytes
    count."""
    import bcrypt
    data = password.encode("utf-8")[:BCRYPT_MAX]
    return bcrypt.hashpw(data, bcrypt.gensalt(BCRYPT_COST, prefix=b"2a")).decode("ascii")


def _scrypt_hash(password):
    """``scrypt$N$r$p$<salt>$<hash>`` (base64): what adapters before bcrypt stored (kept
    for tests of those hashes)."""
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R,
                            p=_SCRYPT_P, maxmem=64 * 1024 * 1024, dklen=32)
    return "scrypt$%d$%d$%d$%s$%s" % (_SCRYPT_N, _SCRYPT_R, _SCRYPT_P,
                                      base64.b64encode(salt).decode("ascii"),
                                      base64.b64encode(digest).decode("ascii"))


def check_password(password, stored):
    """Does ``password`` match the stored hash?  bcrypt hashes (ours and etcd's, e.g.
    users restored from an etcd snapshot) are checked as etcd checks them; scrypt hashes
    made by older adapters still work.  (Constant-time comparisons.)"""
    if stored.startswith("$2"):
        return _check_bcrypt(password, stored)
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        want = base64.b64decode(digest)
        got = hashlib.scrypt(password.encode("utf-8"), salt=base64.b64decode(salt),
                             n=int(n), r=int(r), p=int(p), maxmem=64 * 1024 * 1024,
                             dklen=len(want))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)


def _in_thread(fn, *args):
    return threads.deferToThread(fn, *args)


# -- the state -----------------------------------------------------------------------------

class User(object):
    __slots__ = ("name", "password", "roles", "no_password")

    def __init__(self, name, password=None, roles=(), no_password=False):
        self.name = name
        self.password = password            # the hash (str) or None
        self.roles = sorted(roles)
        self.no_password = no_password


def _b64(data):
    return base64.b64encode(data).decode("ascii")


class AuthState(object):
    """Users, roles, the enabled flag, the auth revision and the token-signing secret
    (set while auth is enabled); (de)serialised as JSON."""

    def __init__(self):
        self.enabled = False
        self.revision = 1               # etcd starts its auth revision at 1
        self.users = {}                 # name -> User
        self.roles = {}                 # name -> [authpb.Permission], sorted by key
        self.token_secret = None        # bytes

    def password_of(self, name):
        user = self.users.get(name)
        return None if user is None or user.password is None else user.password

    def to_blob(self):
        doc = {
            "version": 1, "enabled": self.enabled, "revision": self.revision,
            "token_secret": _b64(self.token_secret) if self.token_secret else None,
            "users": {u.name: {"password": u.password, "roles": u.roles,
                               "no_password": u.no_password}
                      for u in self.users.values()},
            "roles": {name: [{"type": p.permType, "key": _b64(p.key),
                              "range_end": _b64(p.range_end)} for p in perms]
                      for name, perms in self.roles.items()},
        }
        return json.dumps(doc, sort_keys=True).encode("utf-8")

    @classmethod
    def from_blob(cls, blob):
        st = cls()
        if not blob:
            return st
        doc = json.loads(blob.decode("utf-8"))
        st.enabled = bool(doc.get("enabled"))
        st.revision = int(doc.get("revision", 1))
        secret = doc.get("token_secret")
        st.token_secret = base64.b64decode(secret) if secret else None
        for name, u in doc.get("users", {}).items():
            st.users[name] = User(name, u.get("password"), u.get("roles", ()),
                                  bool(u.get("no_password")))
        for name, perms in doc.get("roles", {}).items():
            st.roles[name] = [authpb.Permission(permType=p["type"],
                                                key=base64.b64decode(p["key"]),
                                                range_end=base64.b64decode(p["range_end"]))
                              for p in perms]
        return st


class AuthStore(object):
    """etcd's authStore over a :class:`~etcdadapter.store.base.Store`.

    ``clock`` (IReactorTime) measures token lifetimes and dates new tokens (its
    ``seconds()`` is the wall clock under a real reactor); ``run_in_thread(fn, *args)``
    -> Deferred runs the password KDF (default: the reactor's thread pool).
    """

    def __init__(self, store, clock=None, token_ttl=TOKEN_TTL, run_in_thread=_in_thread,
                 refresh_interval=REFRESH_INTERVAL, rand=None):
        self.store = store
        if clock is None:
            from twisted.internet import reactor as clock
        self.clock = clock
        self.token_ttl = token_ttl
        self.run_in_thread = run_in_thread
        self.refresh_interval = refresh_interval
        self.rand = rand or random.SystemRandom()
        self.state = AuthState()
        self._blob = None
        self._tokens = {}               # token -> [user name, deadline]
        self._perm_cache = {}
        self._lock = defer.DeferredLock()
        self._loop = None

    # -- lifecycle ---------------------------------------------------------------------
    @defer.inlineCallbacks
    def start(self):
        yield self.refresh()
        if self.refresh_interval and self._loop is None:
            self._loop = task.LoopingCall(self._tick)
            self._loop.clock = self.clock
            self._loop.start(self.refresh_interval, now=False).addErrback(
                lambda f: log.failure("auth refresh loop stopped", f))

    def stop(self):
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def _tick(self):
        self._sweep()
        d = self.refresh()
        d.addErrback(lambda f: background_failure(log, "reading the auth state failed", f))

    def refresh(self):
        """Re-read the persisted state (another adapter may have changed it)."""
        return self.store.auth_load().addCallback(self._loaded)

    def _loaded(self, blob):
        if blob is not None and blob == self._blob:
            return
        self._blob = blob
        self._install(AuthState.from_blob(blob))

    def _install(self, state):
        old = self.state
        self.state = state
        self._perm_cache.clear()
        if not state.enabled or state.token_secret != old.token_secret:
            self._tokens.clear()        # disabled (maybe enabled again meanwhile)
            return
        for token, (name, _deadline) in list(self._tokens.items()):
            user, before = state.users.get(name), old.users.get(name)
            if user is None or before is None or user.password != before.password:
                del self._tokens[token]

    @property
    def enabled(self):
        return self.state.enabled

    @property
    def revision(self):
        return self.state.revision

    # -- mutations ---------------------------------------------------------------------
    def mutate(self, change, bump=True):
        """Run ``change(state)`` (may raise EtcdError) on the freshly read state, then
        bump the auth revision and persist it -- one mutation at a time in this process,
        and compare-and-save against other adapters on the same store: if another saved
        in between, read again and re-apply (etcd serialises these through raft)."""
        def run(attempt=1):
            d = self.store.auth_load()

            def apply(blob):
                if blob is None or blob != self._blob:
                    self._blob = blob
                    self._install(AuthState.from_blob(blob))
                state = AuthState.from_blob(self.state.to_blob())
                result = change(state)
                if result is _UNCHANGED:
                    return None
                if bump:
                    state.revision += 1
                new_blob = state.to_blob()

                def saved(ok):
                    if not ok:
                        if attempt >= MUTATE_ATTEMPTS:
                            raise errors.ErrTimeout()
                        return run(attempt + 1)
                    self._blob = new_blob
                    self._install(state)
                    return result
                return self.store.auth_save(new_blob, expected=blob).addCallback(saved)
            return d.addCallback(apply)
        return self._lock.run(run)

    def hash_password(self, password):
        return self.run_in_thread(hash_password, password)

    def check_password(self, password, stored):
        return self.run_in_thread(check_password, password, stored)

    # -- tokens ------------------------------------------------------------------------
    def ensure_token_secret(self):
        """Deferred: the state has a signing secret if auth is enabled (a state saved
        by an older adapter may have none)."""
        if self.state.token_secret or not self.state.enabled:
            return defer.succeed(None)

        def change(state):
            if state.token_secret or not state.enabled:
                return UNCHANGED
            state.token_secret = tokens.new_secret()
        return self.mutate(change, bump=False)

    def assign_token(self, name):
        """A new token for user ``name`` (auth enabled, secret present)."""
        self._sweep()
        now = self.clock.seconds()
        token = tokens.issue(self.state.token_secret, name, self.state.password_of(name),
                             int(now * 1000), self.rand.getrandbits(32))
        self._tokens[token] = [name, now + self.token_ttl]
        return token

    def user_of_token(self, token):
        """The user name of a live token (its TTL restarts), or None."""
        now = self.clock.seconds()
        entry = self._tokens.get(token)
        if entry is None:
            entry = self._first_seen(token, now)
            if entry is None:
                return None
        elif now > entry[1]:
            del self._tokens[token]
            return None
        entry[1] = now + self.token_ttl
        return entry[0]

    def _first_seen(self, token, now):
        """A token issued by another adapter (or before a restart): genuine and issued
        within the TTL, it starts sliding here."""
        state = self.state
        if not state.enabled:
            return None
        found = tokens.verify(state.token_secret, token, state.password_of)
        if found is None:
            return None
        name, issued_ms = found
        if abs(now - issued_ms / 1000.0) > self.token_ttl:
            return None
        self._sweep()
        entry = self._tokens[token] = [name, now + self.token_ttl]
        return entry

    def _sweep(self):
        now = self.clock.seconds()
        for token, (_name, deadline) in list(self._tokens.items()):
            if now > deadline:
                del self._tokens[token]

    def invalidate_user(self, name):
        for token, (user, _deadline) in list(self._tokens.items()):
            if user == name:
                del self._tokens[token]

    # -- permissions -------------------------------------------------------------------
    def permissions_of(self, name):
        """The PermissionSet of user ``name`` (nothing for an unknown user, everything
        for a holder of role root)."""
        perms = self._perm_cache.get(name)
        if perms is None:
            user = self.state.users.get(name)
            if user is None:
                perms = _NONE
            elif ROOT in user.roles:
                perms = ALL
            else:
                grants = []
                for role in user.roles:
                    for p in self.state.roles.get(role, ()):
                        grants.append(Permission(
                            p.key, p.range_end,
                            p.permType in (_READ, _READWRITE),
                            p.permType in (_WRITE, _READWRITE)))
                perms = PermissionSet(grants)
            self._perm_cache[name] = perms
        return perms

    def check_admin(self, name):
        """etcd's IsAdminPermitted for an authenticated request (auth enabled)."""
        if not name:
            raise errors.ErrUserEmpty
        user = self.state.users.get(name)
        if user is None:
            raise errors.ErrUserNotFound
        if ROOT not in user.roles:
            raise errors.ErrPermissionDenied

    def has_role(self, name, role):
        user = self.state.users.get(name)
        return user is not None and role in user.roles


_UNCHANGED = object()
UNCHANGED = _UNCHANGED     # returned by a change: nothing to persist, no new revision
