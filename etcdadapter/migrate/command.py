"""``etcd-adapter migrate``: move a running etcd into a SQL store, keeping every revision.

::

    etcd-adapter migrate --from http(s)://etcd:2379[,...] --to STORE_URL
                         [--cacert FILE] [--cert FILE --key FILE] [--user NAME:PASSWORD]
    etcd-adapter migrate --cut-over --to STORE_URL [--timeout SECONDS]
    etcd-adapter migrate --status --to STORE_URL

The first copies etcd's state at its revision R into an empty store (or resumes a
migration already under way on that store) and follows etcd until a cut-over; adapters
on the store meanwhile serve reads and watches and refuse writes.  The second asks the
follower to catch up with etcd's revision and hand over: it returns once the store
accepts writes.  The third says where a migration stands (exit status 0 while one is in
progress, 3 when none is).  SIGTERM/SIGINT stop the follower; the same command resumes.

Exit status: 0 done (cut over, or stopped by a signal), 1 failure, 2 usage error.
"""

import argparse
import signal
import sys
import time

from etcdadapter.errors import EtcdError

PROG = "etcd-adapter migrate"
CUT_OVER_TIMEOUT = 60.0


def _parser(prog):
    p = argparse.ArgumentParser(
        prog=prog, description="Copy a running etcd into a SQL store at the same "
        "revisions and follow it until the cut-over.")
    p.add_argument("--from", dest="source", metavar="URLS",
                   help="etcd endpoints, comma-separated (http://host:2379, https://...)")
    p.add_argument("--to", required=True, metavar="STORE_URL",
                   help="the SQL store (sqlite:///path, mysql://..., postgresql://...)")
    p.add_argument("--cacert", metavar="FILE", help="CA bundle to verify etcd's TLS")
    p.add_argument("--cert", metavar="FILE", help="client certificate for etcd")
    p.add_argument("--key", metavar="FILE", help="client certificate's key")
    p.add_argument("--user", metavar="NAME:PASSWORD",
                   help="etcd user (auth enabled): needs to read everything (root)")
    p.add_argument("--cut-over", action="store_true",
                   help="ask the running follower to catch up with etcd and hand over, "
                   "and wait until the store accepts writes")
    p.add_argument("--status", action="store_true",
                   help="say whether a migration is in progress on the store and where it "
                   "is (exit status 3: none)")
    p.add_argument("--timeout", type=float, default=CUT_OVER_TIMEOUT, metavar="SECONDS",
                   help="how long --cut-over waits (default %(default)s)")
    return p


def _dialect(url):
    from etcdadapter.store.urls import open_store
    return open_store(url).dialect


def _cut_over(dialect, args, out):
    from etcdadapter.store.sql.following import read_mark, request_cut_over
    from etcdadapter.store.sql.replica import read_meta
    from etcdadapter.store.sql.runner import Runner, Session
    session = Session(Runner(dialect, 1, None, 1))
    try:
        found = session.transaction("write", request_cut_over)
    except EtcdError:
        raise
    except Exception:                  # no schema: not an adapter's database (yet)
        found = False
    if not found:
        raise _Failed("no migration is in progress on %s" % args.to_redacted)
    deadline = time.monotonic() + args.timeout
    while session.transaction("read", read_mark) is not None:
        if time.monotonic() > deadline:
            raise _Failed("the cut-over did not happen within %gs: is `etcd-adapter "
                          "migrate --from ... --to ...` running?" % args.timeout)
        time.sleep(0.1)
    revision = session.transaction("read", read_meta)[0]
    out.write("cut over at revision %d: the store accepts writes\n" % revision)
    return 0


def _status(dialect, args, out):
    from etcdadapter.store.sql.following import read_mark
    from etcdadapter.store.sql.replica import read_meta
    from etcdadapter.store.sql.runner import Runner, Session
    session = Session(Runner(dialect, 1, None, 1))
    try:
        mark, (revision, _compact) = session.transaction(
            "read", lambda tx: (read_mark(tx), read_meta(tx)))
    except EtcdError:
        raise
    except Exception:                  # no schema yet
        mark = None
        revision = None
    if mark is None:
        out.write("no migration in progress on %s%s\n" % (
            args.to_redacted, "" if revision is None else " (revision %d)" % revision))
        return 3
    out.write("migration in progress on %s: copied at revision %d, now at revision %d%s\n"
              % (args.to_redacted, mark[0], revision,
                 ", cut-over requested" if mark[1] else ""))
    return 0


class _Failed(Exception):
    pass


def _migrate(dialect, args, out):
    from etcdadapter.migrate.etcd_client import EtcdClient
    from etcdadapter.migrate.follower import Follower
    client = EtcdClient(args.source, args.cacert, args.cert, args.key, args.user)
    follower = Follower(client, dialect, out)

    def stop(_signum, _frame):
        follower.stopping.set()
    previous = [signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)]
    try:
        follower.prepare()
        follower.follow()
    finally:
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])
    return 0


def main(argv=None, out=None, err=None, prog=PROG):
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        args = _parser(prog).parse_args(argv)
    except SystemExit as e:
        return e.code
    from etcdadapter.store.urls import StoreURLError, redact
    args.to_redacted = redact(args.to)
    if args.to.lower().startswith("memory:"):
        err.write("%s: the memory store lives inside one adapter process: migrate into "
                  "a SQL store (sqlite://, mysql://, postgresql://), or start the adapter "
                  "with --store 'memory://?snapshot=FILE' from an etcd snapshot\n" % prog)
        return 2
    if not (args.cut_over or args.status or args.source):
        err.write("%s: --from (etcd endpoints) is required, or --cut-over\n" % prog)
        return 2
    if (args.cut_over or args.status) and args.source:
        err.write("%s: --cut-over and --status talk to the store only: no --from\n" % prog)
        return 2
    from etcdadapter.migrate.etcd_client import EtcdClientError
    from etcdadapter.migrate.follower import MigrationError
    from etcdadapter.store.importing import StoreNotEmpty
    from etcdadapter.store.sql.following import FollowError
    try:
        dialect = _dialect(args.to)
        if args.status:
            return _status(dialect, args, out)
        if args.cut_over:
            return _cut_over(dialect, args, out)
        return _migrate(dialect, args, out)
    except StoreNotEmpty:
        err.write("%s: %s holds data and no migration is in progress there: migrate "
                  "into an empty store\n" % (prog, args.to_redacted))
    except (StoreURLError, EtcdClientError, MigrationError, FollowError, _Failed) as e:
        err.write("%s: %s\n" % (prog, e))
    except EtcdError as e:
        err.write("%s: store %s: %s\n" % (prog, args.to_redacted, e))
    except OSError as e:
        err.write("%s: %s\n" % (prog, e))
    except Exception as e:            # one line, as every etcd-adapter command fails
        err.write("%s: failed: %s: %s\n" % (prog, e.__class__.__name__, e))
    return 1
