#!/usr/bin/env python3
"""What one gRPC Put crosses, request bytes in -> answer bytes out: the sans-IO H2Server of
bench/unary_cpu.py (memory store) under a profiler for one call.  Prints the project
calls, distinct project functions and files, and all Python calls; ``-v`` lists the files,
``-f`` every project function with its count.  The figure a newcomer's trace of a Put is
measured by (calls and files to read).

    python bench/put_trace.py [-v] [-f]
"""

import collections
import importlib.util
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PACKAGE = os.path.join(ROOT, "etcdadapter")


def _unary_cpu():
    spec = importlib.util.spec_from_file_location(
        "unary_cpu", os.path.join(HERE, "unary_cpu.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def trace_one_put():
    """[(file, function)] of every Python call the server makes for one Put."""
    run = _unary_cpu().Run("put", 1)
    for _ in range(20):                 # warm: caches, the client's HPACK table
        run.batch()
    calls = []

    def profile(frame, event, arg):
        if event == "call":
            calls.append((frame.f_code.co_filename, frame.f_code.co_name))

    feed = run._feed_server

    def traced(data):
        sys.setprofile(profile)
        try:
            feed(data)
        finally:
            sys.setprofile(None)

    run._feed_server = traced
    run.batch()
    return calls


def main():
    calls = trace_one_put()
    ours = [(os.path.relpath(os.path.abspath(f), ROOT), name) for f, name in calls
            if os.path.abspath(f).startswith(PACKAGE + os.sep)]
    files = sorted({f for f, _ in ours})
    print("project calls %d, distinct project functions %d, project files %d, "
          "all Python calls %d" % (len(ours), len(set(ours)), len(files), len(calls)))
    if "-v" in sys.argv:
        for f in files:
            print("  ", f)
    if "-f" in sys.argv:
        for (f, name), n in sorted(collections.Counter(ours).items()):
            print("   %-45s %-30s %d" % (f, name, n))


if __name__ == "__main__":
    main()
