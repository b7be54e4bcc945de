"""Who may do what, decided once per request from the call context, for every face.

The services ask :meth:`Authorizer.permissions` with the call's context (the same object
for gRPC, the JSON gateway and the embedding API's in-process client) and apply etcd's
request checks (:mod:`etcdadapter.security.permissions`).  Two sources of permissions
exist and a request must pass both when both are configured:

* the client-certificate policy (``--client-cert-policy``), by the verified certificate;
* etcd's users and roles (:mod:`etcdadapter.security.auth_store`), by the token in the
  ``token`` or ``authorization`` metadata (HTTP: the ``Authorization`` header, raw or
  with a ``Bearer `` prefix) or, with ``--client-cert-auth`` and no token, by the client
  certificate's CN as the user name -- as etcd's AuthInfoFromCtx does.

etcd's errors: a token that is not live -> Unauthenticated "invalid auth token" (even
with auth disabled, as etcd); auth enabled and no user -> InvalidArgument "user name is
empty", raised lazily by the first permission the request needs (an empty txn passes, as
in etcd); no permission -> PermissionDenied.
"""

from etcdadapter import errors
from etcdadapter.security.permissions import ALL, PermissionSet

_NONE = PermissionSet()


def token_of(metadata):
    """The auth token of a call's metadata, or None."""
    token = metadata.get("token")
    if token is None:
        token = metadata.get("authorization")
        if token is not None and token[:7].lower() == "bearer ":
            token = token[7:]
    if isinstance(token, bytes):
        token = token.decode("latin-1")
    return token


class Refused(object):
    """The permissions of a request without a user while auth is on: every check fails
    with ``error`` (etcd: "user name is empty").  ``admin`` fails the same way unless
    ``quiet_admin`` (then it is just False)."""

    def __init__(self, error, quiet_admin=False):
        self.error = error
        self.quiet_admin = quiet_admin

    @property
    def admin(self):
        if self.quiet_admin:
            return False
        raise self.error

    def can_read(self, key, range_end=b""):
        raise self.error

    def can_write(self, key, range_end=b""):
        raise self.error


class Both(object):
    """Allowed only if both permission sets allow it."""

    def __init__(self, first, second):
        self.first = first
        self.second = second

    @property
    def admin(self):
        return self.first.admin and self.second.admin

    def can_read(self, key, range_end=b""):
        return self.first.can_read(key, range_end) and self.second.can_read(key, range_end)

    def can_write(self, key, range_end=b""):
        return (self.first.can_write(key, range_end)
                and self.second.can_write(key, range_end))


class Authorizer(object):
    def __init__(self, cert_policy=None, auth=None, cert_users=False):
        self.cert_policy = cert_policy
        self.auth = auth                  # an AuthStore, or None (no etcd auth at all)
        self.cert_users = cert_users      # --client-cert-auth: the CN names the user

    @property
    def enabled(self):
        """False: every caller may do everything (no checks are made).  With an auth
        store it is always True: even with auth disabled a stale token is refused."""
        return self.cert_policy is not None or self.auth is not None

    # -- who is calling ----------------------------------------------------------------
    def user_of(self, context):
        """The calling user's name, or None; raises ErrInvalidAuthToken for a token that
        is not live."""
        token = token_of(context.metadata)
        if token is not None:
            name = self.auth.user_of_token(token)
            if name is None:
                raise errors.ErrInvalidAuthToken
            return name
        if self.cert_users and context.peer_identity is not None:
            return context.peer_identity.common_name or None
        return None

    def _auth_permissions(self, context, quiet_admin=False):
        if not self.auth.enabled:
            if token_of(context.metadata) is not None:
                self.user_of(context)       # a stale token is refused even so
            return ALL
        name = self.user_of(context)
        if name is None:
            return Refused(errors.ErrUserEmpty(), quiet_admin)
        return self.auth.permissions_of(name)

    def _policy(self, context, perms):
        if self.cert_policy is None:
            return perms
        policy = self.cert_policy.permissions_for(context.peer_identity)
        return policy if perms is ALL else Both(perms, policy)

    def permissions(self, context):
        """What the caller may do (KV requests).  Raises ErrInvalidAuthToken."""
        perms = ALL if self.auth is None else self._auth_permissions(context)
        return self._policy(context, perms)

    def lease_key_readers(self, context):
        """Who may see the key names of a lease (LeaseTimeToLive with ``keys``): None
        when anyone may; else the permissions to check them against.  etcd's
        checkLeaseTimeToLive: with auth off no token is looked at; with auth on a user
        is required ("user name is empty" even for a lease without keys)."""
        if not self.enabled:
            return None
        perms = ALL
        if self.auth is not None and self.auth.enabled:
            perms = self._auth_permissions(context)
            if isinstance(perms, Refused):
                raise perms.error
        return self._policy(context, perms)

    # -- admin calls (Auth management, AuthStatus) --------------------------------------
    def check_admin(self, context):
        """etcd's IsAdminPermitted: raises ErrInvalidAuthToken, ErrUserEmpty,
        ErrUserNotFound or ErrPermissionDenied; returns the user name (or None)."""
        name = self.caller(context)
        error = self.admin_error(context, name)
        if error is not None:
            raise error
        return name

    def caller(self, context):
        """The user name of the call (None: none); raises ErrInvalidAuthToken."""
        return self.user_of(context) if self.auth is not None else None

    def admin_error(self, context, name):
        """Why ``name`` (from :meth:`caller`) may not make an admin call, or None."""
        if self.auth is not None and self.auth.enabled:
            try:
                self.auth.check_admin(name)
            except errors.EtcdError as e:
                return e
        if self.cert_policy is not None and \
                not self.cert_policy.permissions_for(context.peer_identity).admin:
            return errors.ErrPermissionDenied()
        return None

    # -- views for the streaming services -----------------------------------------------
    def for_watch(self):
        """Watch creates are never errors: a caller without permission (no user, bad
        token) gets its watch created and canceled with "permission denied"."""
        return _WatchView(self)

    def for_lease(self):
        """LeaseRevoke: no user only matters if the lease has keys (etcd's
        checkLeasePuts), so ``admin`` is quietly False."""
        return _LeaseView(self)


class _WatchView(object):
    def __init__(self, authz):
        self.authz = authz

    def cancel_reason(self, context, key, range_end):
        """etcd 3.4.22+/3.5.6+'s cancel_reason for a watch create the caller may not
        make ("rpc error: code = ... desc = ..." of "user name is empty", "invalid auth
        token" or "permission denied"), or None when it is allowed."""
        try:
            if self.authz.permissions(context).can_read(key, range_end):
                return None
            error = errors.ErrPermissionDenied()
        except errors.EtcdError as e:
            error = e
        return "rpc error: code = %s desc = %s" % (
            errors.CODE_NAMES.get(error.code, "Unknown"), error.message)

    @property
    def enabled(self):
        return self.authz.enabled

    def permissions(self, context):
        try:
            perms = self.authz.permissions(context)
        except errors.EtcdError:
            return _NONE
        if isinstance(perms, Refused):
            return _NONE
        if isinstance(perms, Both) and isinstance(perms.first, Refused):
            return _NONE
        return perms


class _LeaseView(object):
    def __init__(self, authz):
        self.authz = authz

    @property
    def enabled(self):
        return self.authz.enabled

    def permissions(self, context):
        a = self.authz
        perms = ALL if a.auth is None else a._auth_permissions(context, quiet_admin=True)
        return a._policy(context, perms)

    def lease_key_readers(self, context):
        return self.authz.lease_key_readers(context)
