"""The ``etcd-adapter`` command: what ``twistd -n --pidfile= etcd-adapter`` runs, in the
foreground, without a pid file, with one-line errors.

* Options are those of :mod:`etcdadapter.tap` (``etcd-adapter --help``); the command line,
  ``ETCD_ADAPTER_*`` variables and ``--config-file`` as there.
* Log lines go to standard output (``--log-format text|json``, ``--log-level``).
* A failure to start is one line on standard error, ``etcd-adapter: <cause>``, and exit
  status 2 for a usage error (a bad flag or value), 1 for anything else (port in use, TLS
  file, database); never the help text, never a traceback (an unexpected error's
  traceback goes to the log, the line still names it).
* SIGTERM/SIGINT drain and exit 0 (see etcdadapter.drain and etcdadapter.signal_stop).
* ``etcd-adapter snapshot restore FILE --to URL``: an etcd snapshot into a store
  (:mod:`etcdadapter.snapshot.restore`), instead of serving.
* ``etcd-adapter migrate --from ETCD_URLS --to URL``: a running etcd into a SQL store at
  etcd's revisions, followed until ``etcd-adapter migrate --cut-over --to URL``
  (:mod:`etcdadapter.migrate.command`).
"""

import sys

from twisted.python import usage

PROG = "etcd-adapter"
USAGE_ERROR = 2


def fail(text, status):
    sys.stderr.write("%s: %s\n" % (PROG, text))
    sys.stderr.flush()
    return status


def parse(argv):
    from etcdadapter import tap
    options = tap.Options()
    options.synopsis = "Usage: %s [options]" % PROG     # not twistd's sub-command form
    options.parseOptions(argv)
    return options


def _start_logging(options):
    from twisted.logger import globalLogBeginner

    from etcdadapter import logs
    logs.DEFAULT_LEVEL = options["log-level"]
    observer = logs.json() if options["log-format"] == "json" else logs.text()
    # Twisted's "Log opened" banner and stdio redirection are not wanted here.
    globalLogBeginner.beginLoggingTo([observer], discardBuffer=False,
                                     redirectStandardIO=False)


def run(options):
    """Run the adapter until it is stopped; the exit status."""
    from twisted.internet import reactor
    from twisted.logger import Logger

    from etcdadapter import __version__, startup_errors, tap
    log = Logger(namespace="etcdadapter.cli")
    service = tap.makeService(options)
    service.exit_on_start_failure = False
    outcome = {"status": 0}

    def failed(failure):
        line = startup_errors.one_line(failure.value)
        if line is None:
            log.failure("etcd-adapter failed to start", failure)
            line = "failed to start: %s: %s (traceback in the log)" % (
                failure.type.__name__, failure.value)
        outcome["status"] = fail(line, 1)
        outcome["failed"] = True
        if reactor.running:
            reactor.stop()

    def start():
        log.info("etcd-adapter {version} starting", event="starting", version=__version__)
        service.startService().addErrback(failed)

    def stop():
        if not outcome.get("failed"):
            return service.stopService()
    reactor.callWhenRunning(start)
    reactor.addSystemEventTrigger("before", "shutdown", stop)
    reactor.run()
    return outcome["status"]


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["snapshot"]:
        from etcdadapter.snapshot import restore
        return restore.main(argv[1:], prog=PROG + " snapshot")
    if argv[:1] == ["migrate"]:
        from etcdadapter.migrate import command
        return command.main(argv[1:], prog=PROG + " migrate")
    try:
        options = parse(argv)
    except BrokenPipeError:          # --help piped into head
        return 0
    except usage.UsageError as e:
        text = str(e)
        if "not recognized" in text:
            text += " (%s --help lists the options)" % PROG
        return fail(text, USAGE_ERROR)
    _start_logging(options)
    status = run(options)
    sys.stdout.flush()
    return status


if __name__ == "__main__":
    sys.exit(main())
