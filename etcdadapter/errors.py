"""etcd's client-visible errors: gRPC status code plus the exact message.

Go clientv3 maps errors by their message string, so these texts must match etcd's
``api/v3rpc/rpctypes/error.go`` to the letter.  Every layer (store, services, transport)
raises :class:`EtcdError`; the transports turn it into gRPC trailers or a gateway JSON body.
"""


class StatusCode:
    """gRPC status codes (grpc/codes)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


# HTTP status the etcd gateway (grpc-gateway runtime.HTTPStatusFromCode) gives each code.
HTTP_STATUS = {
    0: 200, 1: 408, 2: 500, 3: 400, 4: 504, 5: 404, 6: 409, 7: 403, 8: 429,
    9: 400, 10: 409, 11: 400, 12: 501, 13: 500, 14: 503, 15: 500, 16: 401,
}


# grpc-go's names of the codes, as its "rpc error: code = X desc = ..." texts and
# go-grpc-prometheus' grpc_code label spell them.
CODE_NAMES = {
    0: "OK", 1: "Canceled", 2: "Unknown", 3: "InvalidArgument", 4: "DeadlineExceeded",
    5: "NotFound", 6: "AlreadyExists", 7: "PermissionDenied", 8: "ResourceExhausted",
    9: "FailedPrecondition", 10: "Aborted", 11: "OutOfRange", 12: "Unimplemented",
    13: "Internal", 14: "Unavailable", 15: "DataLoss", 16: "Unauthenticated",
}


class EtcdError(Exception):
    """An error that reaches the client as (gRPC code, message).

    etcd's named errors below (ErrCompacted, ...) are subclasses, not shared instances:
    ``raise errors.ErrCompacted`` raises a fresh instance.  Raising one shared instance
    again and again would chain every raise's traceback onto it and keep all those frames
    (requests, transactions) alive for the life of the process.  Errors compare equal by
    (code, message), instances and these classes alike.
    """

    code = StatusCode.UNKNOWN
    message = ""

    def __init__(self, code=None, message=None):
        if code is not None:
            self.code = code
        if message is not None:
            self.message = message
        Exception.__init__(self, self.message)

    def __eq__(self, other):
        if isinstance(other, EtcdError) or (isinstance(other, type)
                                            and issubclass(other, EtcdError)):
            return (self.code, self.message) == (other.code, other.message)
        return NotImplemented

    def __hash__(self):
        return hash((self.code, self.message))

    def __repr__(self):
        return "EtcdError(%d, %r)" % (self.code, self.message)


def error_kind(name, code, message):
    """A named etcd error: an EtcdError subclass with a fixed code and message."""
    return type(name, (EtcdError,), {"code": code, "message": message,
                                     "__module__": __name__})


_C = StatusCode

# KV
ErrKeyNotProvided = error_kind("ErrKeyNotProvided", _C.INVALID_ARGUMENT,
                               "etcdserver: key is not provided")
ErrKeyNotFound = error_kind("ErrKeyNotFound", _C.INVALID_ARGUMENT, "etcdserver: key not found")
ErrValueProvided = error_kind("ErrValueProvided", _C.INVALID_ARGUMENT,
                              "etcdserver: value is provided")
ErrLeaseProvided = error_kind("ErrLeaseProvided", _C.INVALID_ARGUMENT,
                              "etcdserver: lease is provided")
ErrTooManyOps = error_kind("ErrTooManyOps", _C.INVALID_ARGUMENT,
                           "etcdserver: too many operations in txn request")
# How deep txns may nest (the outer txn is level 1).  Each level spends one op of
# --max-txn-ops, so etcd's default (128) allows 129 levels; deeper is refused with
# ErrTooManyOps whatever --max-txn-ops says (the decoders build no deeper, and the code
# that walks a txn recurses: this bounds its depth).
MAX_TXN_LEVELS = 129
ErrDuplicateKey = error_kind("ErrDuplicateKey", _C.INVALID_ARGUMENT,
                             "etcdserver: duplicate key given in txn request")
ErrCompacted = error_kind("ErrCompacted", _C.OUT_OF_RANGE,
                          "etcdserver: mvcc: required revision has been compacted")
ErrFutureRev = error_kind("ErrFutureRev", _C.OUT_OF_RANGE,
                          "etcdserver: mvcc: required revision is a future revision")
ErrNoSpace = error_kind("ErrNoSpace", _C.RESOURCE_EXHAUSTED,
                        "etcdserver: mvcc: database space exceeded")
ErrRequestTooLarge = error_kind("ErrRequestTooLarge", _C.INVALID_ARGUMENT,
                                "etcdserver: request is too large")
ErrInvalidSortOption = error_kind("ErrInvalidSortOption", _C.INVALID_ARGUMENT,
                                  "etcdserver: invalid sort option")
# Ours (ReplacePrefix, the embedding API's resync, is not an etcd request).
ErrKeyOutsidePrefix = error_kind("ErrKeyOutsidePrefix", _C.INVALID_ARGUMENT,
                                 "etcd-adapter: key outside the replaced prefix")

# Lease
ErrLeaseNotFound = error_kind("ErrLeaseNotFound", _C.NOT_FOUND,
                              "etcdserver: requested lease not found")
ErrLeaseExist = error_kind("ErrLeaseExist", _C.FAILED_PRECONDITION,
                           "etcdserver: lease already exists")
ErrLeaseTTLTooLarge = error_kind("ErrLeaseTTLTooLarge", _C.OUT_OF_RANGE,
                                 "etcdserver: too large lease TTL")

# Cluster / server state
ErrWatchCanceled = error_kind("ErrWatchCanceled", _C.CANCELLED, "etcdserver: watch canceled")
ErrStopped = error_kind("ErrStopped", _C.UNAVAILABLE, "etcdserver: server stopped")
ErrTimeout = error_kind("ErrTimeout", _C.UNAVAILABLE, "etcdserver: request timed out")
ErrMemberNotFound = error_kind("ErrMemberNotFound", _C.NOT_FOUND,
                               "etcdserver: member not found")
ErrNotCapable = error_kind("ErrNotCapable", _C.UNAVAILABLE, "etcdserver: not capable")

# Auth
ErrUserEmpty = error_kind("ErrUserEmpty", _C.INVALID_ARGUMENT,
                          "etcdserver: user name is empty")
ErrRoleEmpty = error_kind("ErrRoleEmpty", _C.INVALID_ARGUMENT,
                          "etcdserver: role name is empty")
ErrAuthFailed = error_kind("ErrAuthFailed", _C.INVALID_ARGUMENT,
                           "etcdserver: authentication failed, invalid user ID or password")
ErrPermissionDenied = error_kind("ErrPermissionDenied", _C.PERMISSION_DENIED,
                                 "etcdserver: permission denied")
ErrInvalidAuthToken = error_kind("ErrInvalidAuthToken", _C.UNAUTHENTICATED,
                                 "etcdserver: invalid auth token")
ErrAuthOldRevision = error_kind("ErrAuthOldRevision", _C.INVALID_ARGUMENT,
                                "etcdserver: revision of auth store is old")
ErrAuthNotEnabled = error_kind("ErrAuthNotEnabled", _C.FAILED_PRECONDITION,
                               "etcdserver: authentication is not enabled")
ErrRootUserNotExist = error_kind("ErrRootUserNotExist", _C.FAILED_PRECONDITION,
                                 "etcdserver: root user does not exist")
ErrRootRoleNotExist = error_kind("ErrRootRoleNotExist", _C.FAILED_PRECONDITION,
                                 "etcdserver: root user does not have root role")
ErrUserAlreadyExist = error_kind("ErrUserAlreadyExist", _C.FAILED_PRECONDITION,
                                 "etcdserver: user name already exists")
ErrUserNotFound = error_kind("ErrUserNotFound", _C.FAILED_PRECONDITION,
                             "etcdserver: user name not found")
ErrRoleAlreadyExist = error_kind("ErrRoleAlreadyExist", _C.FAILED_PRECONDITION,
                                 "etcdserver: role name already exists")
ErrRoleNotFound = error_kind("ErrRoleNotFound", _C.FAILED_PRECONDITION,
                             "etcdserver: role name not found")
ErrRoleNotGranted = error_kind("ErrRoleNotGranted", _C.FAILED_PRECONDITION,
                               "etcdserver: role is not granted to the user")
ErrPermissionNotGranted = error_kind("ErrPermissionNotGranted", _C.FAILED_PRECONDITION,
                                     "etcdserver: permission is not granted to the role")
ErrPermissionNotGiven = error_kind("ErrPermissionNotGiven", _C.INVALID_ARGUMENT,
                                   "etcdserver: permission not given")
ErrInvalidAuthMgmt = error_kind("ErrInvalidAuthMgmt", _C.INVALID_ARGUMENT,
                                "etcdserver: invalid auth management")
# Ours: etcd 3.5's hashedPassword field of AuthUserAdd, which this adapter does not take.
ErrHashedPassword = error_kind("ErrHashedPassword", _C.INVALID_ARGUMENT,
                               "etcdserver: hashed passwords are not supported")


def message_too_large(size, limit):
    """grpc-go's receive-side size error (etcd: max-request-bytes + 512 KiB)."""
    return EtcdError(_C.RESOURCE_EXHAUSTED,
                     "grpc: received message larger than max (%d vs. %d)" % (size, limit))

# Storage unavailable (SQL stores).  etcd answers "no leader" when it cannot serve a request
# at all and "request timed out" when a write may or may not have been applied; the SQL
# stores use the first when the database cannot be reached and the second when the
# connection broke while a COMMIT was in flight.  Both are Unavailable: clients retry.
ErrNoLeader = error_kind("ErrNoLeader", _C.UNAVAILABLE, "etcdserver: no leader")
