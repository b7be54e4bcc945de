"""etcdctl against a server, and its output normalised so that etcd's and ours compare:
cluster/member IDs and raft terms become placeholders, revisions are shifted back by the
offset between the two stores, timings and client-side log fields are dropped.

``{rev+N}`` in an argument stands for the N-th revision after the server's fresh store's
first one (etcd: N + 1), so revision arguments mean the same thing on both sides.
"""

import json
import os
import re
import shlex
import subprocess

import pytest

from support import servers

_REV = re.compile(r"\{rev(?:\+(\d+))?\}")


def _subst(text, server):
    return _REV.sub(lambda m: str(server.base_revision + int(m.group(1) or 0)), text)


def etcdctl(server, args, stdin=None, timeout=20):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL_")}
    env["ETCDCTL_API"] = "3"
    cmd = [servers.ETCDCTL_BIN, "--endpoints=" + server.endpoint,
           "--dial-timeout=3s", "--command-timeout=5s"]
    cmd += [_subst(a, server) for a in args]
    proc = subprocess.run(cmd, input=_subst(stdin, server).encode() if stdin else b"",
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                          timeout=timeout)
    return proc.returncode, proc.stdout.decode("utf-8", "replace"), \
        proc.stderr.decode("utf-8", "replace")


# ---------------------------------------------------------------------------------------
# Normalisation

_ID_KEYS = {"cluster_id": "<CLUSTER>", "member_id": "<MEMBER>", "raft_term": "<TERM>",
            "leader": "<MEMBER>", "raftTerm": "<TERM>"}
_REV_KEYS = ("revision", "create_revision", "mod_revision", "compact_revision")


def _norm_json(obj, offset, ids):
    if isinstance(obj, list):
        return [_norm_json(x, offset, ids) for x in obj]
    if not isinstance(obj, dict):
        return obj
    out = {}
    for key, value in obj.items():
        if key in _ID_KEYS and isinstance(value, int) and value:
            value = _ID_KEYS[key]
        elif key == "ID" and isinstance(value, int) and value:
            value = ids.setdefault(value, "<ID%d>" % len(ids))
        elif key in _REV_KEYS and isinstance(value, int) and value > 0:
            value -= offset
        else:
            value = _norm_json(value, offset, ids)
        out[key] = value
    return out


_FIELDS_ID = re.compile(r'^"(ClusterID|MemberID|RaftTerm)" : \d+$')
_FIELDS_REV = re.compile(r'^"(Revision|CreateRevision|ModRevision)" : (\d+)$')
_COMPACTED = re.compile(r"^compacted revision (\d+)$")


def _norm_line(line, offset):
    if line[:1] in ("{", "["):
        try:
            doc = json.loads(line)
        except ValueError:
            pass
        else:
            return json.dumps(_norm_json(doc, offset, {}), sort_keys=True)
    m = _FIELDS_REV.match(line)
    if m and int(m.group(2)) > 0:
        return '"%s" : %d' % (m.group(1), int(m.group(2)) - offset)
    if _FIELDS_ID.match(line):
        return line.split(":")[0] + ": <ID>"
    m = _COMPACTED.match(line)
    if m and int(m.group(1)) > 0:
        return "compacted revision %d" % (int(m.group(1)) - offset)
    return _TOOK.sub("took = <T>", line)


_TOOK = re.compile(r"took = [0-9.]+[a-z\u00b5]+")


def normalise_stdout(text, server, offset):
    """JSON documents (etcdctl prints each on one line), fields and simple output."""
    text = text.replace(server.endpoint, "<ENDPOINT>")
    return "\n".join(_norm_line(line, offset) for line in text.split("\n"))


def normalise_stderr(text, server):
    lines = []
    for line in text.replace(server.endpoint, "<ENDPOINT>").splitlines():
        if line.startswith('{"level"'):
            try:
                doc = json.loads(line)
            except ValueError:
                pass
            else:
                doc.pop("ts", None)
                doc.pop("target", None)
                line = json.dumps(doc, sort_keys=True)
        lines.append(_TOOK.sub("took = <T>", line))
    return "\n".join(lines)


def run_steps(pair, steps):
    """Run each step on both servers; fail at the first difference."""
    log = []
    for n, step in enumerate(steps):
        if isinstance(step, tuple):
            args, stdin = step
        else:
            args, stdin = step, None
        args = shlex.split(args) if isinstance(args, str) else list(args)
        ref = etcdctl(pair.etcd, args, stdin)
        got = etcdctl(pair.target, args, stdin)
        ref_n = (ref[0], normalise_stdout(ref[1], pair.etcd, 0),
                 normalise_stderr(ref[2], pair.etcd))
        got_n = (got[0], normalise_stdout(got[1], pair.target, pair.offset),
                 normalise_stderr(got[2], pair.target))
        if ref_n != got_n:
            what = [name for name, a, b in zip(("exit status", "stdout", "stderr"),
                                               ref_n, got_n) if a != b]
            pytest.fail(
                "step %d: etcdctl %s%s\ndiffers in %s\n\n"
                "--- etcd: exit %d\nstdout:\n%s\nstderr:\n%s\n\n"
                "--- ours: exit %d\nstdout:\n%s\nstderr:\n%s\n\n"
                "--- ours (raw stdout):\n%s\n\nprevious steps:\n%s"
                % (n, " ".join(args), "  <<< %r" % stdin if stdin else "",
                   ", ".join(what), ref_n[0], ref_n[1], ref_n[2], got_n[0], got_n[1],
                   got_n[2], got[1], "\n".join(log[-10:])), pytrace=False)
        log.append("  %d: etcdctl %s -> exit %d" % (n, " ".join(args), ref[0]))
    return log
