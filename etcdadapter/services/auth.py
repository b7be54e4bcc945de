"""etcdserverpb.Auth: etcd's users, roles and tokens (v3rpc/auth.go, auth/store.go).

Behaviour checked against etcd 3.4.23 (AuthStatus is 3.5's):

* With auth enabled every call but Authenticate needs role root (etcd's
  needAdminPermission); UserGet of oneself and RoleGet of one's own role are allowed.
* AuthEnable: user root must exist and hold role root; enabling twice is a no-op.
  AuthDisable drops every token.  Authenticate with auth disabled -> "authentication is
  not enabled"; a wrong user or password (or a no-password user) -> "authentication
  failed, invalid user ID or password".
* UserGrantRole of role root needs no role root to exist; granting a role twice is a
  no-op.  UserRevokeRole of a role the user lacks -> "role is not granted to the user".
  Deleting user or role root, or revoking role root from user root, while auth is
  enabled -> "invalid auth management".  Deleting a role revokes it from every user.
* Lists are sorted; a role's permissions are sorted by key.
* Every mutation bumps the auth revision (AuthStatus), never the KV revision; AuthEnable
  and no-op grants do not bump it.  Response headers carry the KV revision.
* UserDelete and UserChangePassword invalidate the user's tokens.
"""

from twisted.internet import defer

from etcdadapter import errors
from etcdadapter.pb.authpb import auth_pb2 as authpb
from etcdadapter.pb.etcdserverpb import rpc_pb2 as rpc
from etcdadapter.security import tokens
from etcdadapter.security.auth_store import ROOT, UNCHANGED, User
from etcdadapter.services.rpc import service_methods



class AuthService(object):
    def __init__(self, auth, authz, store, identity):
        self.auth = auth            # AuthStore
        self.authz = authz          # Authorizer
        self.store = store
        self.identity = identity

    def _answer(self, response):
        self.identity.fill(response.header, self.store.revision)
        return response

    def _done(self, response_type):
        return lambda _: self._answer(response_type())

    def _admin(self, context):
        self.authz.check_admin(context)

    def _after_refresh(self, answer):
        """Answer a read from the stored auth state, not this process's copy (another
        adapter on the same store may have changed it since the last refresh): etcd
        serves these reads linearizably."""
        return self.auth.refresh().addCallback(lambda _: answer())

    # -- enable / disable / status --------------------------------------------------------
    def AuthEnable(self, request, context):
        # Auth off: only a stale token (or a client-certificate policy) can refuse it.
        self._admin(context)

        def change(state):
            if state.enabled:
                return UNCHANGED
            root = state.users.get(ROOT)
            if root is None:
                raise errors.ErrRootUserNotExist
            if ROOT not in root.roles:
                raise errors.ErrRootRoleNotExist
            state.enabled = True
            state.token_secret = tokens.new_secret()
        return self.auth.mutate(change, bump=False).addCallback(
            self._done(rpc.AuthEnableResponse))

    def AuthDisable(self, request, context):
        self._admin(context)

        def change(state):
            if not state.enabled:
                return UNCHANGED
            state.enabled = False
            state.token_secret = None       # every token issued so far stops verifying
        return self.auth.mutate(change).addCallback(self._done(rpc.AuthDisableResponse))

    def AuthStatus(self, request, context):
        def answer():
            self._admin(context)
            return self._answer(rpc.AuthStatusResponse(enabled=self.auth.enabled,
                                                       authRevision=self.auth.revision))
        return self._after_refresh(answer)

    # -- authenticate ---------------------------------------------------------------------
    @defer.inlineCallbacks
    def Authenticate(self, request, context):
        yield self.auth.refresh()
        state = self.auth.state
        if not state.enabled:
            raise errors.ErrAuthNotEnabled
        user = state.users.get(request.name)
        if user is None or user.no_password or user.password is None:
            raise errors.ErrAuthFailed
        stored = user.password
        ok = yield self.auth.check_password(request.password, stored)
        state = self.auth.state
        user = state.users.get(request.name)
        if not ok or not state.enabled or user is None or user.password != stored:
            raise errors.ErrAuthFailed
        yield self.auth.ensure_token_secret()
        state = self.auth.state
        if not state.enabled or state.password_of(request.name) != stored:
            raise errors.ErrAuthFailed
        response = rpc.AuthenticateResponse(token=self.auth.assign_token(request.name))
        return self._answer(response)

    # -- users ----------------------------------------------------------------------------
    def _password(self, request):
        """Deferred[hash or None] of a UserAdd/UserChangePassword request's password."""
        if request.hashedPassword and not request.password:
            raise errors.ErrHashedPassword
        return self.auth.hash_password(request.password)

    def UserAdd(self, request, context):
        self._admin(context)
        if not request.name:
            raise errors.ErrUserEmpty
        no_password = request.options.no_password
        hashed = defer.succeed(None) if no_password else self._password(request)

        def add(password):
            def change(state):
                if request.name in state.users:
                    raise errors.ErrUserAlreadyExist
                state.users[request.name] = User(request.name, password, (), no_password)
            return self.auth.mutate(change)
        return hashed.addCallback(add).addCallback(self._done(rpc.AuthUserAddResponse))

    def UserGet(self, request, context):
        def answer():
            caller = self.authz.caller(context)
            error = self.authz.admin_error(context, caller)
            if error is not None and request.name != (caller or ""):
                raise error
            user = self.auth.state.users.get(request.name)
            if user is None:
                raise errors.ErrUserNotFound
            return self._answer(rpc.AuthUserGetResponse(roles=user.roles))
        return self._after_refresh(answer)

    def UserList(self, request, context):
        def answer():
            self._admin(context)
            return self._answer(rpc.AuthUserListResponse(users=sorted(self.auth.state.users)))
        return self._after_refresh(answer)

    def UserDelete(self, request, context):
        self._admin(context)

        def change(state):
            if state.enabled and request.name == ROOT:
                raise errors.ErrInvalidAuthMgmt
            if request.name not in state.users:
                raise errors.ErrUserNotFound
            del state.users[request.name]
        return self.auth.mutate(change).addCallback(
            self._invalidated(request.name, rpc.AuthUserDeleteResponse))

    def _invalidated(self, name, response_type):
        def done(_):
            self.auth.invalidate_user(name)
            return self._answer(response_type())
        return done

    def UserChangePassword(self, request, context):
        self._admin(context)

        def store(password):
            def change(state):
                user = state.users.get(request.name)
                if user is None:
                    raise errors.ErrUserNotFound
                if not user.no_password:
                    user.password = password
            return self.auth.mutate(change)
        return self._password(request).addCallback(store).addCallback(
            self._invalidated(request.name, rpc.AuthUserChangePasswordResponse))

    def UserGrantRole(self, request, context):
        self._admin(context)

        def change(state):
            user = state.users.get(request.user)
            if user is None:
                raise errors.ErrUserNotFound
            if request.role != ROOT and request.role not in state.roles:
                raise errors.ErrRoleNotFound
            if request.role in user.roles:
                return UNCHANGED
            user.roles = sorted(user.roles + [request.role])
        return self.auth.mutate(change).addCallback(self._done(rpc.AuthUserGrantRoleResponse))

    def UserRevokeRole(self, request, context):
        self._admin(context)

        def change(state):
            if state.enabled and request.name == ROOT and request.role == ROOT:
                raise errors.ErrInvalidAuthMgmt
            user = state.users.get(request.name)
            if user is None:
                raise errors.ErrUserNotFound
            if request.role not in user.roles:
                raise errors.ErrRoleNotGranted
            user.roles = [r for r in user.roles if r != request.role]
        return self.auth.mutate(change).addCallback(
            self._done(rpc.AuthUserRevokeRoleResponse))

    # -- roles ----------------------------------------------------------------------------
    def RoleAdd(self, request, context):
        self._admin(context)
        if not request.name:
            raise errors.ErrRoleEmpty

        def change(state):
            if request.name in state.roles:
                raise errors.ErrRoleAlreadyExist
            state.roles[request.name] = []
        return self.auth.mutate(change).addCallback(self._done(rpc.AuthRoleAddResponse))

    def RoleGet(self, request, context):
        def answer():
            caller = self.authz.caller(context)
            error = self.authz.admin_error(context, caller)
            if error is not None and not self.auth.has_role(caller, request.role):
                raise error
            perms = self.auth.state.roles.get(request.role)
            if perms is None:
                raise errors.ErrRoleNotFound
            return self._answer(rpc.AuthRoleGetResponse(perm=perms))
        return self._after_refresh(answer)

    def RoleList(self, request, context):
        def answer():
            self._admin(context)
            return self._answer(rpc.AuthRoleListResponse(roles=sorted(self.auth.state.roles)))
        return self._after_refresh(answer)

    def RoleDelete(self, request, context):
        self._admin(context)

        def change(state):
            if state.enabled and request.role == ROOT:
                raise errors.ErrInvalidAuthMgmt
            if request.role not in state.roles:
                raise errors.ErrRoleNotFound
            del state.roles[request.role]
            for user in state.users.values():
                if request.role in user.roles:
                    user.roles = [r for r in user.roles if r != request.role]
        return self.auth.mutate(change).addCallback(self._done(rpc.AuthRoleDeleteResponse))

    def RoleGrantPermission(self, request, context):
        if not request.HasField("perm"):
            raise errors.ErrPermissionNotGiven
        self._admin(context)
        new = authpb.Permission()
        new.CopyFrom(request.perm)

        def change(state):
            perms = state.roles.get(request.name)
            if perms is None:
                raise errors.ErrRoleNotFound
            # etcd: the first permission whose key is >= the new key is updated if it has
            # the same key and range end; otherwise the new one is added.
            idx = next((i for i, p in enumerate(perms) if p.key >= new.key), len(perms))
            if idx < len(perms) and perms[idx].key == new.key and \
                    perms[idx].range_end == new.range_end:
                perms[idx].permType = new.permType
            else:
                perms.append(new)
                perms.sort(key=lambda p: p.key)
        return self.auth.mutate(change).addCallback(
            self._done(rpc.AuthRoleGrantPermissionResponse))

    def RoleRevokePermission(self, request, context):
        self._admin(context)

        def change(state):
            perms = state.roles.get(request.role)
            if perms is None:
                raise errors.ErrRoleNotFound
            kept = [p for p in perms
                    if p.key != request.key or p.range_end != request.range_end]
            if len(kept) == len(perms):
                raise errors.ErrPermissionNotGranted
            state.roles[request.role] = kept
        return self.auth.mutate(change).addCallback(
            self._done(rpc.AuthRoleRevokePermissionResponse))

    def methods(self):
        # (method, gateway path under /v3/auth/)
        table = [
            ("AuthEnable", "enable"),
            ("AuthDisable", "disable"),
            ("AuthStatus", "status"),
            ("Authenticate", "authenticate"),
            ("UserAdd", "user/add"),
            ("UserGet", "user/get"),
            ("UserList", "user/list"),
            ("UserDelete", "user/delete"),
            ("UserChangePassword", "user/changepw"),
            ("UserGrantRole", "user/grant"),
            ("UserRevokeRole", "user/revoke"),
            ("RoleAdd", "role/add"),
            ("RoleGet", "role/get"),
            ("RoleList", "role/list"),
            ("RoleDelete", "role/delete"),
            ("RoleGrantPermission", "role/grant"),
            ("RoleRevokePermission", "role/revoke"),
        ]
        return service_methods("Auth", [(name, getattr(self, name), ("/v3/auth/" + http,))
                                        for name, http in table])
