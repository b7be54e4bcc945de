#!/usr/bin/env python3
"""What one gRPC Put crosses, request bytes in -> answer bytes out: the sans-IO H2Server of
bench/unary_cpu.py (memory store) under a profiler for one call.  Prints the project
calls, distinct project functions and files, and all Python calls (``-v`` lists the
files, ``-f`` every project function with its count, ``-p`` the path below).  The figure
a newcomer's trace of a Put is measured by (calls and files to read).  Also the path a
reader follows: the project
functions on the call stack when the store applies the write and when the answer's
bytes are handed to the transport (the socket's ``Protocol.dataReceived`` ->
``H2Server.data_received`` is one more call, in one more file).

    python bench/put_trace.py [-v] [-f] [-p]
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
    """[(file, function)] of every Python call the server makes for one Put, and the
    call stacks at the store's write and at the answer's hand-over to the transport."""
    run = _unary_cpu().Run("put", 1)
    for _ in range(20):                 # warm: caches, the client's HPACK table
        run.batch()
    calls = []
    stack = []
    path_stacks = []

    def profile(frame, event, arg):
        if event == "call":
            code = frame.f_code
            calls.append((code.co_filename, code.co_name))
            stack.append((code.co_filename, code.co_name))
            if code.co_name in PATH_ENDS.get(os.path.basename(code.co_filename), ()):
                path_stacks.append(list(stack))
        elif event == "return" and stack:
            stack.pop()

    feed = run._feed_server

    def traced(data):
        sys.setprofile(profile)
        try:
            feed(data)
        finally:
            sys.setprofile(None)

    run._feed_server = traced
    run.batch()
    return calls, path_stacks


# Where a Put's path ends: the store applies it, the answer goes to the transport.
PATH_ENDS = {"keyspace.py": ("apply",), "h2_server.py": ("_write_framed",)}


def _ours(calls):
    return [(os.path.relpath(os.path.abspath(f), ROOT), name) for f, name in calls
            if os.path.abspath(f).startswith(PACKAGE + os.sep)]


def main():
    calls, path_stacks = trace_one_put()
    ours = _ours(calls)
    files = sorted({f for f, _ in ours})
    print("project calls %d, distinct project functions %d, project files %d, "
          "all Python calls %d" % (len(ours), len(set(ours)), len(files), len(calls)))
    path = list(dict.fromkeys(fn for stack in path_stacks for fn in _ours(stack)))
    print("the path a reader follows (stacks at the store's write and the answer's "
          "hand-over): %d functions in %d files"
          % (len(path), len({f for f, _ in path})))
    if "-p" in sys.argv:
        for f, name in path:
            print("   %-45s %s" % (f, name))
    if "-v" in sys.argv:
        for f in files:
            print("  ", f)
    if "-f" in sys.argv:
        for (f, name), n in sorted(collections.Counter(ours).items()):
            print("   %-45s %-30s %d" % (f, name, n))


if __name__ == "__main__":
    main()
