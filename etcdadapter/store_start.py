"""Start the store, waiting a bounded time for a database that is not up yet.

A SQL database is connected to once before the store starts: a refused or unanswered
connection (the database is starting, restarting, its DNS name not there yet) is tried
again with back-off -- 0.5 s doubling to 5 s, each try logged (``store-wait``) -- for at
most ``--store-start-timeout``; systemd's and Kubernetes' restarts need not be the only
retry.  What waiting cannot fix -- a wrong password, a database that does not exist,
missing rights, a SQLite folder that is not there -- fails at once.  Every failure is a
:class:`~etcdadapter.startup_errors.StartupError` of one line that names the store and
the server's own message, with a hint where one helps.
"""

import os

from twisted.internet import defer, task, threads
from twisted.logger import Logger

from etcdadapter.startup_errors import StartupError
from etcdadapter.store.sql.schema import SchemaError
from etcdadapter.store.urls import redact

log = Logger()

FIRST_PAUSE = 0.5
MAX_PAUSE = 5.0

# What an error means for the operator: wait and try again, or fix something.
TRANSIENT, AUTH, MISSING, PERMISSION, OTHER = "transient", "auth", "missing", \
    "permission", "other"

_HINTS = {
    AUTH: "check the user and password in --store",
    MISSING: "create it first (README: Quick start per store)",
    PERMISSION: "grant the user its rights (README: Quick start per store)",
}

_MYSQL_CODES = {
    2002: TRANSIENT, 2003: TRANSIENT, 2005: TRANSIENT, 2006: TRANSIENT, 2013: TRANSIENT,
    1040: TRANSIENT, 1053: TRANSIENT,      # too many connections, server shutting down
    1045: AUTH, 1049: MISSING, 1044: PERMISSION, 1142: PERMISSION, 1227: PERMISSION,
    1370: PERMISSION,
}

_PG_STATES = {"57P03": TRANSIENT, "53300": TRANSIENT, "57P01": TRANSIENT,
              "28P01": AUTH, "28000": AUTH, "3D000": MISSING, "42501": PERMISSION}


def classify(error):
    """(kind, message) of a database driver's exception."""
    args = getattr(error, "args", ())
    module = type(error).__module__ or ""
    if module.startswith("pymysql") and len(args) >= 2 and isinstance(args[0], int):
        return _MYSQL_CODES.get(args[0], OTHER), _flat(args[1])
    if module.startswith("psycopg"):
        return _postgres(error)
    if module == "sqlite3":
        return OTHER, _flat(str(error))
    return OTHER, _flat("%s: %s" % (type(error).__name__, error))


def _postgres(error):
    diag = getattr(error, "diag", None)
    # The server's message without the statement excerpt ("LINE 1: CREATE ...").
    text = _flat(getattr(diag, "message_primary", None) or str(error))
    state = getattr(error, "sqlstate", None)
    if state in _PG_STATES:
        return _PG_STATES[state], text
    # Connection failures carry no SQLSTATE; libpq's text says which it was.
    lowered = text.lower()
    if "password authentication failed" in lowered or "no pg_hba.conf entry" in lowered:
        return AUTH, text
    if "does not exist" in lowered:
        return MISSING, text
    if "permission denied" in lowered:
        return PERMISSION, text
    if state is None and ("fatal" not in lowered or "starting up" in lowered
                          or "shutting down" in lowered or "too many" in lowered):
        return TRANSIENT, text
    return OTHER, text


def _flat(text):
    return " ".join(str(text).split())


def _failure_line(dialect, error):
    kind, message = classify(error)
    line = "store %s: %s" % (redact(dialect.describe()), message)
    if kind in _HINTS:
        line += "; " + _HINTS[kind]
    return kind, line


def _check_sqlite_folder(dialect):
    folder = os.path.dirname(os.path.abspath(dialect.path))
    if not os.path.isdir(folder):
        raise StartupError("store %s: folder %s does not exist; create it (mkdir -p %s) "
                           "and let the adapter's user write there"
                           % (dialect.describe(), folder, folder))
    if not os.access(folder, os.W_OK | os.X_OK):
        raise StartupError("store %s: folder %s is not writable by this user (SQLite "
                           "writes its journal next to the database)"
                           % (dialect.describe(), folder))


@defer.inlineCallbacks
def wait_for_database(dialect, timeout, reactor):
    """Fires once a connection to the database could be made (and is closed again);
    fails with StartupError."""
    if dialect.name == "sqlite":
        _check_sqlite_folder(dialect)
    deadline = reactor.seconds() + timeout
    pause = FIRST_PAUSE
    attempt = 0
    while True:
        attempt += 1
        try:
            conn = yield threads.deferToThreadPool(reactor, reactor.getThreadPool(),
                                                   dialect.connect)
        except Exception as e:
            kind, line = _failure_line(dialect, e)
            if kind != TRANSIENT:
                raise StartupError(line)
            left = deadline - reactor.seconds()
            if left <= 0:
                raise StartupError("%s (gave up after %d tries in %gs: "
                                   "--store-start-timeout)" % (line, attempt, timeout))
            wait = min(pause, left)
            log.warn("database {db} not reachable (try {attempt}): {error}; trying again "
                     "in {wait:.1f}s", event="store-wait", db=redact(dialect.describe()),
                     attempt=attempt, error=classify(e)[1], wait=wait)
            yield task.deferLater(reactor, wait, lambda: None)
            pause = min(pause * 2, MAX_PAUSE)
            continue
        try:
            conn.close()
        except Exception:
            pass
        if attempt > 1:
            log.info("database {db} reachable after {attempt} tries", event="store-reached",
                     db=redact(dialect.describe()), attempt=attempt)
        return


@defer.inlineCallbacks
def start_store(store, timeout, reactor):
    """``store.start()``, after :func:`wait_for_database` for a SQL store; a database
    error during the start (creating the tables without the rights to) becomes a
    StartupError too."""
    dialect = getattr(store, "dialect", None)
    if dialect is None:
        yield store.start()
        return
    yield wait_for_database(dialect, timeout, reactor)
    try:
        yield store.start()
    except SchemaError as e:            # written by a newer adapter
        raise StartupError("store %s: %s" % (redact(dialect.describe()), e))
    except Exception as e:
        kind, line = _failure_line(dialect, e)
        if kind == OTHER and type(e).__module__.startswith("etcdadapter"):
            raise             # not the database's error: keep the traceback
        raise StartupError(line)
