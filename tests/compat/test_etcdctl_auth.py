"""etcdctl's user, role and auth commands, then authenticated KV and watch: the same
command sequence against a real etcd 3.4 and against our server, outputs compared after
normalising IDs and revisions (the runner and normaliser of support/etcdctl.py)."""

import subprocess

import pytest

from support.etcdctl import normalise_stderr, run_steps
from support.etcdctl_watch import etcdctl_watch, normalise_watch_output, stop_watch

pytestmark = pytest.mark.adapter

SETUP = [
    "user add root:pw",
    "user add alice:apw",
    "user add alice:again",                        # already exists
    "user add bob:bpw",
    "role add r1",
    "role add r1",                                 # already exists
    "role add ''",                                 # empty
    "role grant-permission r1 readwrite /a/ --prefix",
    "role grant-permission r1 read /b",
    "role grant-permission --prefix=true r1 write /w/",
    "role grant-permission r1 read /from --from-key",
    "role grant-permission r1 read /k1 /k5",
    "role grant-permission nope read /x",
    "role get r1", "role get r1 -w json", "role get nope",
    "user grant-role alice r1",
    "user grant-role alice r1",                    # twice: fine
    "user grant-role alice nope",
    "user grant-role nobody r1",
    "user get alice", "user get alice --detail", "user get nobody",
    "user list", "user list -w json", "role list",
    "get /a/1 --user alice:apw",                   # auth not enabled yet
    "auth enable",                                 # etcdctl adds role root itself
    "auth enable --user root:pw",
    "role list --user root:pw",
    "user get root --user root:pw",
]


def test_etcdctl_auth_sequence(pair):
    steps = list(SETUP) + [
        "put /a/1 v1 --user alice:apw",
        "get /a/1 --user alice:apw",
        "get /a/1 --user alice:apw -w json",
        "put /a/2 v2 --user alice:apw",
        "get --prefix /a/ --user alice:apw",
        "put /w/1 x --user alice:apw",
        "get /w/1 --user alice:apw",               # write-only
        "get /from/zzz --user alice:apw",
        "get /k2 /k4 --user alice:apw",
        "get /k2 /k6 --user alice:apw",
        "put /b x --user alice:apw",
        "put /c x --user alice:apw",
        "get /c --user alice:apw",
        "get /c --user alice:wrong",
        "get /c --user nobody:x",
        "get /c",
        "put /c x",
        "get /c --user bob:bpw",
        "put /c x --user root:pw",
        "get /c --user root:pw",
        "del /c --user alice:apw",
        "txn --user alice:apw",
        "user list --user alice:apw",
        "user get alice --user alice:apw",
        "user get root --user alice:apw",
        "role get r1 --user alice:apw",
        "role get root --user alice:apw",
        "user list --user root:pw",
        "role get root --user root:pw",
        "user delete root --user root:pw",
        "role delete root --user root:pw",
        "user revoke-role root root --user root:pw",
        "user add carol:cpw --user alice:apw",
        "role revoke-permission r1 /b --user root:pw",
        "role revoke-permission r1 /b --user root:pw",
        "role get r1 --user root:pw",
        "get /b --user alice:apw",
        "user revoke-role alice r1 --user root:pw",
        "user revoke-role alice r1 --user root:pw",
        "get /a/1 --user alice:apw",
        ("user passwd alice --interactive=false --user root:pw", "npw\n"),
        "get /a/1 --user alice:apw",
        "user grant-role alice r1 --user root:pw",
        "get /a/1 --user alice:npw",
        "role delete r1 --user root:pw",
        "user get alice --user root:pw",
        "get /a/1 --user alice:npw",
        "auth disable --user alice:npw",
        "auth disable --user root:pw",
        "auth disable",
        "get /a/1",
        "get /a/1 --user alice:npw",               # not enabled: etcdctl goes on
        "user delete alice", "user delete alice", "role delete root",
        "user list", "role list",
    ]
    log = "\n".join(run_steps(pair, steps))
    # the sequence does what it says (on both servers, as they agree)
    for line, status in (("auth enable", 0), ("put /a/1 v1 --user alice:apw", 0),
                         ("put /c x --user alice:apw", 1), ("get /c", 1),
                         ("get /c --user alice:wrong", 2), ("get /c --user root:pw", 0)):
        assert "etcdctl %s -> exit %d" % (line, status) in log, (line, log)


def _watch_both(pair, args):
    return [etcdctl_watch(s, args) for s in (pair.etcd, pair.target)]


def _finish(procs, timeout=10):
    out = []
    for p in procs:
        try:
            o, e = p.communicate(timeout=timeout)
            out.append((p.returncode, o.decode("utf-8", "replace"),
                        e.decode("utf-8", "replace")))
        except subprocess.TimeoutExpired:
            o, e = stop_watch(p)
            out.append((None, o, e))
    return out


def _last_line(text):
    lines = [l for l in text.splitlines() if l.strip()]
    return lines[-1] if lines else ""


def test_etcdctl_authenticated_watch(pair):
    run_steps(pair, SETUP)
    allowed = _watch_both(pair, ["--prefix", "/a/", "--user", "alice:apw", "-w", "json"])
    plain = _watch_both(pair, ["--prefix", "/a/", "--user", "alice:apw"])
    procs = allowed + plain
    try:
        # Denied (permission, wrong password, no user): etcdctl exits on its own.
        for args in (["/c", "--user", "alice:apw"], ["/c", "--user", "alice:x"], ["/c"]):
            ref, got = _finish(_watch_both(pair, args))
            assert ref[:2] == got[:2], (args, ref, got)
            ref_err = normalise_stderr(ref[2], pair.etcd)
            got_err = normalise_stderr(got[2], pair.target)
            if args == ["/c"]:
                # etcd's cancel_reason here is "... InvalidArgument desc = etcdserver:
                # user name is empty"; watch.py always says "permission denied" (see
                # Authorizer.for_watch().cancel_reason).
                ref_err, got_err = _last_line(ref_err), _last_line(got_err)
            assert ref_err == got_err, (args, ref, got)
        import time
        time.sleep(1.0)                            # the watches are up
        run_steps(pair, ["put /a/1 one --user alice:apw", "put /c no --user root:pw",
                         "put /a/2 two --user root:pw", "del /a/1 --user alice:apw"])
        time.sleep(1.0)
        outs = [stop_watch(p) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    (ref_json, _), (got_json, _), (ref_plain, _), (got_plain, _) = outs
    assert ref_plain == got_plain
    assert "one" in ref_plain and "two" in ref_plain and "no" not in ref_plain.split()
    offset_ref, offset_got = 0, pair.offset
    assert (normalise_watch_output(ref_json, offset_ref, True)
            == normalise_watch_output(got_json, offset_got, True))
