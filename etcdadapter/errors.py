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
    """An error that reaches the client as (gRPC code, message)."""

    def __init__(self, code, message):
        Exception.__init__(self, message)
        self.code = code
        self.message = message

    def __eq__(self, other):
        return (isinstance(other, EtcdError)
                and (self.code, self.message) == (other.code, other.message))

    def __hash__(self):
        return hash((self.code, self.message))

    def __repr__(self):
        return "EtcdError(%d, %r)" % (self.code, self.message)


_C = StatusCode

# KV
ErrKeyNotProvided = EtcdError(_C.INVALID_ARGUMENT, "etcdserver: key is not provided")
ErrKeyNotFound = EtcdError(_C.INVALID_ARGUMENT, "etcdserver: key not found")
ErrValueProvided = EtcdError(_C.INVALID_ARGUMENT, "etcdserver: value is provided")
ErrLeaseProvided = EtcdError(_C.INVALID_ARGUMENT, "etcdserver: lease is provided")
ErrTooManyOps = EtcdError(_C.INVALID_ARGUMENT,
                          "etcdserver: too many operations in txn request")
ErrDuplicateKey = EtcdError(_C.INVALID_ARGUMENT,
                            "etcdserver: duplicate key given in txn request")
ErrCompacted = EtcdError(_C.OUT_OF_RANGE,
                         "etcdserver: mvcc: required revision has been compacted")
ErrFutureRev = EtcdError(_C.OUT_OF_RANGE,
                         "etcdserver: mvcc: required revision is a future revision")
ErrNoSpace = EtcdError(_C.RESOURCE_EXHAUSTED, "etcdserver: mvcc: database space exceeded")
ErrRequestTooLarge = EtcdError(_C.INVALID_ARGUMENT, "etcdserver: request is too large")

# Lease
ErrLeaseNotFound = EtcdError(_C.NOT_FOUND, "etcdserver: requested lease not found")
ErrLeaseExist = EtcdError(_C.FAILED_PRECONDITION, "etcdserver: lease already exists")
ErrLeaseTTLTooLarge = EtcdError(_C.OUT_OF_RANGE, "etcdserver: too large lease TTL")

# Cluster / server state
ErrWatchCanceled = EtcdError(_C.CANCELLED, "etcdserver: watch canceled")
ErrStopped = EtcdError(_C.UNAVAILABLE, "etcdserver: server stopped")
ErrTimeout = EtcdError(_C.UNAVAILABLE, "etcdserver: request timed out")
ErrMemberNotFound = EtcdError(_C.NOT_FOUND, "etcdserver: member not found")
ErrNotCapable = EtcdError(_C.UNAVAILABLE, "etcdserver: not capable")

# Auth
ErrUserEmpty = EtcdError(_C.INVALID_ARGUMENT, "etcdserver: user name is empty")
ErrRoleEmpty = EtcdError(_C.INVALID_ARGUMENT, "etcdserver: role name is empty")
ErrAuthFailed = EtcdError(_C.INVALID_ARGUMENT,
                          "etcdserver: authentication failed, invalid user ID or password")
ErrPermissionDenied = EtcdError(_C.PERMISSION_DENIED, "etcdserver: permission denied")
ErrInvalidAuthToken = EtcdError(_C.UNAUTHENTICATED, "etcdserver: invalid auth token")
ErrAuthOldRevision = EtcdError(_C.INVALID_ARGUMENT,
                               "etcdserver: revision of auth store is old")
ErrAuthNotEnabled = EtcdError(_C.FAILED_PRECONDITION,
                              "etcdserver: authentication is not enabled")
ErrRootUserNotExist = EtcdError(_C.FAILED_PRECONDITION, "etcdserver: root user does not exist")
ErrRootRoleNotExist = EtcdError(_C.FAILED_PRECONDITION,
                                "etcdserver: root user does not have root role")
ErrUserAlreadyExist = EtcdError(_C.FAILED_PRECONDITION, "etcdserver: user name already exists")
ErrUserNotFound = EtcdError(_C.FAILED_PRECONDITION, "etcdserver: user name not found")
ErrRoleAlreadyExist = EtcdError(_C.FAILED_PRECONDITION, "etcdserver: role name already exists")
ErrRoleNotFound = EtcdError(_C.FAILED_PRECONDITION, "etcdserver: role name not found")
ErrRoleNotGranted = EtcdError(_C.FAILED_PRECONDITION,
                              "etcdserver: role is not granted to the user")
ErrPermissionNotGranted = EtcdError(_C.FAILED_PRECONDITION,
                                    "etcdserver: permission is not granted to the role")
ErrPermissionNotGiven = EtcdError(_C.INVALID_ARGUMENT, "etcdserver: permission not given")
ErrInvalidAuthMgmt = EtcdError(_C.INVALID_ARGUMENT, "etcdserver: invalid auth management")


def message_too_large(size, limit):
    """grpc-go's receive-side size error (etcd: max-request-bytes + 512 KiB)."""
    return EtcdError(_C.RESOURCE_EXHAUSTED,
                     "grpc: received message larger than max (%d vs. %d)" % (size, limit))

# Storage unavailable (SQL stores).  etcd answers "no leader" when it cannot serve a request
# at all and "request timed out" when a write may or may not have been applied; the SQL
# stores use the first when the database cannot be reached and the second when the
# connection broke while a COMMIT was in flight.  Both are Unavailable: clients retry.
ErrNoLeader = EtcdError(_C.UNAVAILABLE, "etcdserver: no leader")
