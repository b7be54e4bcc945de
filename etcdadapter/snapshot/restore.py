"""Restoring an etcd snapshot file into a store, and the command doing it::

    etcd-adapter snapshot restore FILE --to STORE_URL [--skip-hash-check]

The target must be empty (a new database, or one only an adapter created and nobody
wrote to); run it before starting adapters on that database.  The store then holds
etcd's retained history at the same revisions -- every revision from the compact
revision on, with the same create/mod revisions and versions --, the compact revision,
the leases (each starting its full granted TTL, as in a restored etcd), and the users
(with etcd's bcrypt password hashes, which the adapter checks as etcd does), roles and
auth flag.  The memory store lives inside the adapter process: start the adapter with
``--store 'memory://?snapshot=FILE'`` instead.
"""

import argparse
import sys

from etcdadapter.snapshot.etcd_format import SnapshotError, SnapshotFile
from etcdadapter.store.importing import Imported, HistoryError, StoreNotEmpty

PROG = "etcd-adapter snapshot"     # also python -m etcdadapter.snapshot


def imported(snapshot):
    """The :class:`Imported` history of an open :class:`SnapshotFile`."""
    return Imported(snapshot.revision, snapshot.compact_revision, snapshot.versions,
                    [(lease.id, lease.ttl) for lease in snapshot.leases],
                    snapshot.auth.to_blob())


def open_snapshot(path, skip_hash_check=False):
    """(file, SnapshotFile) for ``path``; SnapshotError with a clear message."""
    try:
        f = open(path, "rb")
    except OSError as e:
        raise SnapshotError("cannot open %s: %s" % (path, e.strerror or e))
    try:
        return f, SnapshotFile(f, skip_hash_check)
    except BaseException:
        f.close()
        raise


def _parser(prog):
    parser = argparse.ArgumentParser(prog=prog, description="etcd snapshot files.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    r = sub.add_parser("restore", help="restore an etcd snapshot file into an empty store",
                       description="Fill an empty store with an etcd snapshot: its "
                       "retained history at the same revisions, compact revision, "
                       "leases, users and roles.")
    r.add_argument("file", metavar="FILE", help="the snapshot (etcdctl snapshot save)")
    r.add_argument("--to", required=True, metavar="STORE_URL",
                   help="the store to fill (sqlite:///path, mysql://..., postgresql://...)")
    r.add_argument("--skip-hash-check", action="store_true",
                   help="accept a file without a valid trailing SHA-256 (as etcdctl's "
                   "flag: e.g. a db file copied from an etcd data directory)")
    return parser


def _restore(reactor, args, out):
    from twisted.internet import defer
    from etcdadapter.store.urls import open_store, redact

    @defer.inlineCallbacks
    def run():
        f, snapshot = open_snapshot(args.file, args.skip_hash_check)
        try:
            store = open_store(args.to)
            yield store.import_history(imported(snapshot))
        finally:
            f.close()
        auth = snapshot.auth
        out.write("restored %s into %s: revision %d, compact revision %d, %d lease(s), "
                  "%d user(s), %d role(s), auth %s\n"
                  % (args.file, redact(args.to), snapshot.revision,
                     snapshot.compact_revision, len(snapshot.leases), len(auth.users),
                     len(auth.roles), "enabled" if auth.enabled else "disabled"))
    return run()


def main(argv=None, out=None, err=None, prog=PROG):
    """The command (``argv`` without the program name: ``["restore", FILE, "--to",
    URL]``); returns its exit status (0 done, 1 failed, 2 usage).  ``prog``: the name
    messages start with (e.g. ``etcd-adapter snapshot`` when another command wires this
    one in)."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        args = _parser(prog).parse_args(argv)
    except SystemExit as e:          # --help (0) or a usage error (2), already printed
        return e.code
    from etcdadapter.store.urls import StoreURLError
    if args.to.lower().startswith("memory:"):
        err.write("%s: the memory store lives inside the adapter process: start the "
                  "adapter with --store 'memory://?snapshot=%s' instead\n"
                  % (prog, args.file))
        return 2
    from twisted.internet import reactor
    status = []

    def done(_):
        status.append(0)

    def failed(failure):
        known = (SnapshotError, StoreNotEmpty, HistoryError, StoreURLError)
        if failure.check(*known):
            err.write("%s: %s\n" % (prog, failure.value))
        else:
            err.write("%s: restore failed: %s\n" % (prog, failure.getErrorMessage()
                                                    or failure.type.__name__))
        status.append(1)

    def go():
        from twisted.internet import defer
        d = defer.maybeDeferred(_restore, reactor, args, out)
        d.addCallbacks(done, failed)
        d.addBoth(lambda _: reactor.stop())
    reactor.callWhenRunning(go)
    reactor.run(installSignalHandlers=False)
    return status[0] if status else 1
