"""etcdctl against etcd and against our server: same commands, same output.

Each scenario runs one command sequence with the real etcdctl (ETCDCTL_API=3) against a
fresh etcd and a fresh server under test, and compares exit status, stdout and stderr of
every step:

* ``-w json`` / ``-w fields`` output: cluster/member IDs and raft terms are replaced by
  placeholders, revisions are shifted back by the offset between the two stores;
* simple output is compared as text (only "compacted revision N" carries a revision);
* stderr: etcdctl's client-side JSON warnings are compared without their timestamp and
  client target; "Error: ..." lines (the server's message) must match exactly.

``{rev+N}`` in a command stands for the N-th revision after the fresh store's first one
(etcd: N + 1), so revision arguments mean the same thing on both sides.

etcdctl 3.4 has no ``get --count-only`` and panics on ``lease("k") = "0"`` compares; both
are covered by test_differential.py instead.
"""

import json
import re

import pytest

from support.etcdctl import etcdctl, run_steps

pytestmark = pytest.mark.adapter

# Every test here runs with the adapter on each store (tests/conftest.py).
TARGET_STORES = ("memory", "sqlite", "mariadb", "postgresql")


# ---------------------------------------------------------------------------------------
# Scenarios

SETUP = [
    "put foo bar",             # rev+1
    "put foo2 bar2",           # rev+2
    "put fop x",               # rev+3
    "put a/1 one",             # rev+4
    "put a/2 two",             # rev+5
    "put a/2 two-2",           # rev+6
    "put a/3 three",           # rev+7
    "put a/3 three-2",         # rev+8
    "put a/3 three-3",         # rev+9
    "put b/1 b1",              # rev+10
    "put foo bar-2",           # rev+11
]


def test_put_get(pair):
    steps = list(SETUP) + [
        "put --prev-kv b/1 b1-2",
        "put --prev-kv new fresh",
        "put -w json z zz",
        "put --prev-kv -w json b/1 b1-3",
        "get foo", "get foo -w json", "get foo -w fields", "get foo --hex",
        "get nothing", "get nothing -w json",
        "get foo --prefix", "get foo --prefix -w json",
        "get f --prefix --limit 2", "get f --prefix --limit 2 -w json",
        "get --from-key foo2", "get --from-key a --limit 3", "get --from-key a -w json",
        "get foo fop", "get a/1 a/3", "get a/3 a/1",
        "get --prefix a/ --keys-only", "get --prefix a/ --keys-only -w json",
        "get --prefix a/ --print-value-only", "get --prefix a/ --print-value-only --limit 1",
        "get --prefix a/ --consistency=s",
        "get '' --prefix --keys-only", "get '' --from-key --keys-only",
        "get foo --rev={rev+1}", "get foo --rev={rev+1} -w json",
        "get --prefix a/ --rev={rev+5} -w json", "get --prefix f --rev={rev+2}",
        "get foo --rev={rev+99}",
        "get foo --rev={rev+14}",
    ]
    # Sorting: a/1..a/3 have distinct versions, values, create and mod revisions; over all
    # keys create and mod revisions are distinct too (ties would make the order unspecified).
    for target in ("KEY", "CREATE", "MODIFY", "VALUE", "VERSION"):
        for order in ("ASCEND", "DESCEND"):
            steps.append("get --prefix a/ --sort-by=%s --order=%s" % (target, order))
        steps.append("get --prefix a/ --sort-by=%s" % target)
        steps.append("get --prefix a/ --sort-by=%s --order=DESCEND --limit 2 -w json"
                     % target)
    for target in ("KEY", "CREATE", "MODIFY"):
        steps.append("get --from-key a --sort-by=%s --order=DESCEND --keys-only" % target)
    steps += ["get --prefix a/ --order=DESCEND", "get --prefix a/ --order=ASCEND --limit 1"]
    run_steps(pair, steps)


def test_del(pair):
    steps = list(SETUP) + [
        "del foo", "del foo", "get foo -w json",
        "del --prefix a/ -w json",
        "put a/1 again",
        "del --prev-kv b/1",
        "del --prev-kv a/1 -w json",
        "del --prefix nothing",
        "del --from-key fop --prev-kv",
        "put x 1", "put y 2", "put z 3",
        "del x z --prev-kv",
        "del --prev-kv --prefix ''",
        "get '' --from-key -w json",
        "put c 1",
        "del --from-key a",
        "del --from-key a -w json",
        "get '' --prefix -w json",
    ]
    run_steps(pair, steps)


TXN_SUCCEEDS = """value("foo") = "bar-2"
version("a/3") > "2"
create("a/1") = "{rev+4}"
mod("foo2") < "{rev+3}"
create("missing") = "0"

put foo baz
get foo
get --prefix a/
del a/1
put missing here

put never ran

"""

TXN_FAILS = """value("foo") = "nope"
version("a/3") = "3"

put never ran

get foo
del --prefix a/
get --prefix a/

"""


def test_txn(pair):
    steps = list(SETUP) + [
        (["txn", "-i"], TXN_SUCCEEDS),
        (["txn", "-i"], TXN_FAILS),
        (["txn", "-i", "-w", "json"], TXN_SUCCEEDS),     # now fails (foo changed)
        (["txn", "-w", "json"], 'mod("foo") = "{rev+12}"\n\nget foo\nput foo q\n\n\n'),
        (["txn"], 'version("foo") != "0"\nmod("zz") = "0"\n\ndel foo\n\n\n'),
        (["txn"], '\nget fop\n\nget foo\n\n'),                 # no compares: success
        (["txn"], 'value("fop") > "w"\nvalue("fop") < "y"\n\nput fop y\n\n\n'),
        (["txn"], 'create("foo2") > "{rev+1}"\nmod("foo2") != "{rev+2}"\n\n\nget foo2\n\n'),
        (["txn"], '\nput k 1\nput k 2\n\n\n'),                  # duplicate key
        (["txn"], '\ndel --prefix k\nput k2 v\n\n\n'),         # put inside a delete range
        (["txn"], '\n\n\n'),                                    # empty txn
        (["txn", "-w", "json"], '\n\n\n'),
        (["txn", "-w", "json"], '\nget foo2 --rev={rev+2}\nget foo2 --rev={rev+99}\n\n\n'),
        "get '' --prefix -w json",
    ]
    run_steps(pair, steps)


def test_compaction(pair):
    steps = list(SETUP) + [
        "compaction {rev+3}",
        "compaction {rev+3}",              # already compacted
        "compaction {rev+2}",              # below the compacted revision
        "compaction {rev+100}",            # future
        "get foo --rev={rev+2}",           # compacted
        "get foo --rev={rev+3} -w json",   # the compacted revision itself is readable
        "get --prefix a/ --rev={rev+6}",
        "compaction --physical {rev+6}",
        "get --prefix a/ --rev={rev+5}",
        "compaction {rev+11}",             # current revision
        "get '' --from-key --rev={rev+11} -w json",
        "get foo --rev={rev+12}",
        "put foo again",
        "compaction {rev+11}",
        "get foo -w json",
    ]
    run_steps(pair, steps)


def test_errors(pair):
    steps = [
        "put foo bar",
        "put k v --lease=1234",
        "put missing --ignore-value",
        "put foo --ignore-value",
        "get foo -w json",
        "put foo newval --ignore-lease",
        "put missing2 v --ignore-lease",
        "get foo --rev={rev+9}",
        "endpoint health",
    ]
    run_steps(pair, steps)


def test_lease_errors(pair):
    steps = [
        "lease revoke 1234",
        "lease timetolive 1234",
        "lease keep-alive --once 1234",
        "put k v --lease=4d2",
    ]
    run_steps(pair, steps)


def _status(server):
    rc, out, err = etcdctl(server, ["endpoint", "status", "-w", "json"])
    assert rc == 0, (server.describe(), out, err)
    doc = json.loads(out)
    assert isinstance(doc, list) and len(doc) == 1, out
    return doc[0]


def test_endpoint_status(pair):
    ref, got = _status(pair.etcd), _status(pair.target)
    rs, gs = ref["Status"], got["Status"]
    problems = []

    def check(ok, what):
        if not ok:
            problems.append(what)

    check(got.get("Endpoint") == pair.target.endpoint, "Endpoint")
    check(isinstance(gs.get("version"), str) and gs.get("version"),
          "version must be a non-empty string")
    check(gs["header"].get("member_id"), "header.member_id missing")
    check(gs["header"].get("cluster_id"), "header.cluster_id missing")
    check(gs.get("leader") == gs["header"].get("member_id"),
          "leader must be our own member id")
    check(gs["header"].get("revision", 0) - pair.offset == rs["header"]["revision"],
          "header.revision (mapped) %s != etcd's %s"
          % (gs["header"].get("revision", 0) - pair.offset, rs["header"]["revision"]))
    # etcdctl omits zero values: a field missing here is 0 on the wire.
    for key in sorted(set(rs) - set(gs)):
        check(False, "%s missing (zero) in ours, etcd has %r" % (key, rs[key]))
    check(sorted(rs["header"]) == sorted(gs["header"]), "header fields differ")
    for key in ("dbSize", "raftIndex", "raftTerm", "raftAppliedIndex", "dbSizeInUse"):
        if key in gs:
            check(isinstance(gs[key], int) and gs[key] > 0, "%s not a positive int" % key)
    if "dbSize" in gs and "dbSizeInUse" in gs:
        check(gs["dbSizeInUse"] <= gs["dbSize"], "dbSizeInUse > dbSize")
    check(not gs.get("errors"), "errors reported")
    check(not gs.get("isLearner"), "isLearner set")
    # After a write the revision moves the same way on both.
    for server in (pair.etcd, pair.target):
        assert etcdctl(server, ["put", "k", "v"])[0] == 0
    ref2, got2 = _status(pair.etcd), _status(pair.target)
    check(got2["Status"]["header"]["revision"] - pair.offset
          == ref2["Status"]["header"]["revision"] == rs["header"]["revision"] + 1,
          "revision after a put")
    assert not problems, "endpoint status differs:\n  %s\netcd: %s\nours: %s" % (
        "\n  ".join(problems), json.dumps(ref), json.dumps(got))


def _members(server):
    rc, out, err = etcdctl(server, ["member", "list", "-w", "json"])
    assert rc == 0, (server.describe(), out, err)
    return json.loads(out)


def test_member_list(pair):
    ref, got = _members(pair.etcd), _members(pair.target)
    assert sorted(ref) == sorted(got), (ref, got)
    assert sorted(ref["header"]) == sorted(got["header"]), (
        "header fields differ (MemberList has no revision): etcd %r, ours %r"
        % (ref["header"], got["header"]))
    assert len(got["members"]) == 1, got
    member = got["members"][0]
    assert member["ID"] == got["header"]["member_id"], got
    assert member["clientURLs"] == [pair.target.client_url], got
    assert sorted(member) == sorted(ref["members"][0]), (ref, got)
    assert member.get("name"), got
    for url in member.get("peerURLs", []):
        assert re.match(r"^https?://[^/]+:\d+$", url), got
    # The simple format lists the same member.
    rc, out, _ = etcdctl(pair.target, ["member", "list"])
    assert rc == 0 and "%x" % member["ID"] in out and pair.target.client_url in out, out
