"""The differential harness: the same random KV operations on a real etcd and on the server
under test, outcomes compared.

A seeded generator builds each operation from the state seen so far on the reference etcd
(current and compacted revision), so the sequence for a seed is reproducible.  Each
operation is sent to both servers (revision fields in the request mapped by the revision
offset between the two fresh stores) and the outcomes are compared: responses field by
field after normalisation (cluster_id/member_id/raft_term, revisions), errors as gRPC
code + details.  Sorting on VERSION/CREATE/MOD/VALUE leaves the order of ties
unspecified, so those results are compared as sorted-ness + multiset per tie group.

The key space is small (12 keys under a/, b/ and 0xff, several with 0xff bytes) so
that operations collide.
"""

import random

import pytest

from etcdadapter.pb.etcdserverpb import rpc_pb2 as rpc
from etcdadapter.store.mvcc import prefix_end

from support import servers


def seeds(spec):
    """'1-5' or '1,7,9' -> list of ints."""
    out = []
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


KEYS = [b"a/1", b"a/10", b"a/2", b"a/3",
        b"b/x", b"b/y", b"b/\xff", b"b/\xff\xff",
        b"\xff/a", b"\xff/\xff", b"\xff", b"\xff\xff"]
ABSENT_KEYS = [b"a", b"a/", b"a/0", b"b/z", b"c", b"\x00", b"\xff\xff\xff", b"\xfe"]
PREFIXES = [b"a/", b"b/", b"\xff/", b"\xff", b"a", b"b/\xff", b"\xff\xff"]
VALUES = [b"", b"v1", b"v2", b"\x00", b"\xff", b"\x00\xff", b"a\x00b"]
MISSING_LEASE = 0x7E57  # never granted

RO = rpc.RangeRequest
CMP = rpc.Compare

METHODS = {
    "range": ("/etcdserverpb.KV/Range", rpc.RangeResponse),
    "put": ("/etcdserverpb.KV/Put", rpc.PutResponse),
    "delete": ("/etcdserverpb.KV/DeleteRange", rpc.DeleteRangeResponse),
    "txn": ("/etcdserverpb.KV/Txn", rpc.TxnResponse),
    "compact": ("/etcdserverpb.KV/Compact", rpc.CompactionResponse),
}


# ---------------------------------------------------------------------------------------
# Generator

class Generator(object):
    """Random requests; revisions are in the reference's (etcd's) numbering."""

    def __init__(self, seed, allow_nonpositive_compact):
        self.rnd = random.Random(seed)
        self.current = 1        # etcd revision seen last
        self.compacted = 0      # last successful compaction (0: none)
        self.allow_nonpositive_compact = allow_nonpositive_compact

    # -- observed state
    def observe(self, kind, request, result):
        if not result.ok:
            return
        rev = result.response.header.revision
        if rev > self.current:
            self.current = rev
        if kind == "compact":
            self.compacted = max(self.compacted, request.revision)

    # -- primitives
    def chance(self, p):
        return self.rnd.random() < p

    def key(self, absent=0.2, empty=0.0):
        r = self.rnd.random()
        if r < empty:
            return b""
        if r < empty + absent:
            return self.rnd.choice(ABSENT_KEYS)
        return self.rnd.choice(KEYS)

    def value(self):
        if self.chance(0.6):
            return self.rnd.choice(VALUES)
        n = self.rnd.randint(0, 12)
        return bytes(self.rnd.randrange(256) for _ in range(n))

    def revision_any(self):
        """A Range.revision: latest, historic, compacted, future or negative."""
        r = self.rnd.random()
        cur, comp = self.current, self.compacted
        if r < 0.35:
            return 0
        if r < 0.40:
            return -self.rnd.randint(1, 3)
        if r < 0.50:
            return cur
        if r < 0.75:
            return self.rnd.randint(max(1, comp), cur)
        if r < 0.82 and comp > 0:
            return comp
        if r < 0.90 and comp > 1:
            return self.rnd.randint(1, comp - 1)
        return cur + self.rnd.randint(1, 3)

    def revision_bound(self):
        if self.chance(0.7):
            return 0
        return self.rnd.randint(1, self.current + 1)

    def key_and_end(self, empty_key=0.01):
        """(key, range_end) covering every range_end form."""
        r = self.rnd.random()
        if r < empty_key:
            return b"", self.rnd.choice([b"", b"\x00", b"b"])
        if r < 0.40:
            return self.key(), b""
        if r < 0.60:
            p = self.rnd.choice(PREFIXES)
            return p, prefix_end(p)
        if r < 0.70:
            k = self.rnd.choice([b"\x00", b"a", b"b/", self.key()])
            return k, b"\x00"
        if r < 0.80:
            k = self.key()
            return k, k                           # range_end == key: empty range
        a, b = self.key(), self.key()
        return a, b                               # general (may be <= key)

    # -- requests
    def range_request(self, in_txn=False):
        key, end = self.key_and_end()
        req = rpc.RangeRequest(key=key, range_end=end)
        if self.chance(0.4):
            req.limit = self.rnd.choice([-1, 1, 1, 2, 3, 5, 20])
        if in_txn:
            if self.chance(0.25):
                req.revision = self.revision_any()
        elif self.chance(0.5):
            req.revision = self.revision_any()
        if self.chance(0.5):
            # Values outside the enums are not generated: etcd 3.4 ignores an unknown
            # sort_order (3.5 rejects it: "etcdserver: invalid sort option") and crashes
            # on an unknown sort_target (nil sorter).
            req.sort_order = self.rnd.choice([0, 1, 2])
            req.sort_target = self.rnd.choice([0, 1, 2, 3, 4])
        req.serializable = self.chance(0.2)
        if self.chance(0.15):
            req.keys_only = True
        if self.chance(0.1):
            req.count_only = True
        if self.chance(0.2):
            req.min_mod_revision = self.revision_bound()
            req.max_mod_revision = self.revision_bound()
        if self.chance(0.2):
            req.min_create_revision = self.revision_bound()
            req.max_create_revision = self.revision_bound()
        return req

    def put_request(self, key=None):
        if key is None:
            key = self.key(absent=0.1, empty=0.01)
        req = rpc.PutRequest(key=key, value=self.value())
        req.prev_kv = self.chance(0.4)
        r = self.rnd.random()
        if r < 0.04:
            req.lease = MISSING_LEASE                  # NotFound
        elif r < 0.10:
            req.ignore_value = True
            if self.chance(0.7):
                req.value = b""
            elif not req.value:
                req.value = b"x"                       # "value is provided"
        elif r < 0.16:
            req.ignore_lease = True
            if self.chance(0.3):
                req.lease = MISSING_LEASE              # "lease is provided"
        elif r < 0.18:
            req.ignore_value = req.ignore_lease = True
            req.value = b""
        return req

    def delete_request(self):
        if self.chance(0.5):
            key, end = self.key(absent=0.2), b""
        else:
            key, end = self.key_and_end()
        return rpc.DeleteRangeRequest(key=key, range_end=end, prev_kv=self.chance(0.5))

    def compare(self):
        c = rpc.Compare()
        c.key = self.key(absent=0.25, empty=0.01)
        c.result = self.rnd.choice([0, 1, 2, 3])
        c.target = self.rnd.choice([0, 1, 2, 3, 4])
        if self.chance(0.15):
            c.range_end = self.rnd.choice([prefix_end(c.key or b"a"), b"\x00", self.key()])
        which = c.target
        if self.chance(0.05):
            which = self.rnd.choice([0, 1, 2, 3, 4])   # union field for another target
        if self.chance(0.05):
            return c                                   # target_union unset
        if which == CMP.VERSION:
            c.version = self.rnd.choice([0, 1, 2, 3, self.rnd.randint(0, 8)])
        elif which == CMP.CREATE:
            c.create_revision = self.rnd.choice([0, self.rnd.randint(1, self.current + 1)])
        elif which == CMP.MOD:
            c.mod_revision = self.rnd.choice([0, self.current,
                                              self.rnd.randint(1, self.current + 1)])
        elif which == CMP.VALUE:
            c.value = self.value()
        else:
            c.lease = self.rnd.choice([0, 0, MISSING_LEASE])
        return c

    def request_op(self, depth, used_put_keys):
        r = self.rnd.random()
        op = rpc.RequestOp()
        if r < 0.01:
            return op                                  # empty op -> "key not found"
        if r < 0.35:
            op.request_range.CopyFrom(self.range_request(in_txn=True))
        elif r < 0.70:
            key = self.key(absent=0.15, empty=0.01)
            if key in used_put_keys and self.chance(0.8):
                key = self.rnd.choice(KEYS + ABSENT_KEYS)
            used_put_keys.add(key)
            op.request_put.CopyFrom(self.put_request(key))
        elif r < 0.88 or depth >= 2:
            op.request_delete_range.CopyFrom(self.delete_request())
        else:
            op.request_txn.CopyFrom(self.txn_request(depth + 1))
        return op

    def txn_request(self, depth=0):
        req = rpc.TxnRequest()
        if depth == 0 and self.chance(0.03):
            return req                                 # empty txn
        for _ in range(self.rnd.choice([0, 1, 1, 2, 3])):
            req.compare.add().CopyFrom(self.compare())
        for branch, most in ((req.success, 4), (req.failure, 3)):
            used = set()
            for _ in range(self.rnd.randint(0, most)):
                branch.add().CopyFrom(self.request_op(depth, used))
        return req

    def txn_request_top(self):
        req = self.txn_request()
        _avoid_etcd_txn_panic(req)
        return req

    def big_txn(self):
        """Txns around the 128 operation limit (incl. the nested budget)."""
        kind = self.rnd.choice(["ok128", "ops129", "cmp129", "fail129", "nested_ok",
                                "nested_over"])
        req = rpc.TxnRequest()

        def ranges(branch, n):
            for i in range(n):
                branch.add().request_range.key = KEYS[i % len(KEYS)]

        if kind == "ok128":
            ranges(req.success, 128)
            ranges(req.failure, 3)
        elif kind == "ops129":
            ranges(req.success, 129)
        elif kind == "cmp129":
            for i in range(129):
                c = req.compare.add(key=KEYS[i % len(KEYS)], target=CMP.VERSION)
                c.result = CMP.GREATER
                c.version = -1
        elif kind == "fail129":
            ranges(req.failure, 129)
        else:
            ranges(req.success, 100)
            nested = req.success.add().request_txn
            ranges(nested.success, 27 if kind == "nested_ok" else 28)
            # 101 ops in the outer branch: 27 left for the nested one.
        return req

    def compact_request(self):
        cur, comp = self.current, self.compacted
        choices = [("current", 2), ("future", 2)]
        if cur > max(comp, 1):
            choices.append(("past", 5))         # not compacted yet: succeeds
        if comp > 0:
            choices.append(("compacted", 2))    # exactly the compacted revision
        if comp > 1:
            choices.append(("below", 2))        # below the compacted revision
        if self.allow_nonpositive_compact:
            choices.append(("nonpositive", 1))
        kind = self.rnd.choices([c for c, _ in choices], [w for _, w in choices])[0]
        rev = {
            "current": lambda: cur,
            "future": lambda: cur + self.rnd.randint(1, 3),
            "past": lambda: self.rnd.randint(max(comp + 1, 1), cur),
            "compacted": lambda: comp,
            "below": lambda: self.rnd.randint(1, max(1, comp - 1)),
            "nonpositive": lambda: self.rnd.choice([0, -1]),
        }[kind]()
        return rpc.CompactionRequest(revision=rev, physical=self.chance(0.5))

    def special(self):
        r = self.rnd.random()
        if r < 0.2:
            return "txn", self.big_txn()
        if r < 0.3:
            return "range", rpc.RangeRequest(key=b"", range_end=self.rnd.choice(
                [b"", b"\x00", b"z"]))
        if r < 0.4:
            return "put", rpc.PutRequest(key=b"", value=b"v")
        if r < 0.5:
            return "delete", rpc.DeleteRangeRequest(key=b"", range_end=b"\x00")
        if r < 0.6:
            return "put", rpc.PutRequest(key=self.key(), value=b"v", lease=MISSING_LEASE)
        if r < 0.7:
            return "put", rpc.PutRequest(key=self.key(absent=0.5), ignore_value=True,
                                         prev_kv=self.chance(0.5))
        if r < 0.8:
            return "put", rpc.PutRequest(key=self.key(absent=0.5), value=b"v",
                                         ignore_lease=True)
        if r < 0.9:
            return "range", rpc.RangeRequest(key=b"\x00", range_end=b"\x00",
                                             revision=self.revision_any())
        # every key byte value 0x00-0xff in one value
        return "put", rpc.PutRequest(key=self.key(), value=bytes(range(256)),
                                     prev_kv=True)

    def next(self):
        r = self.rnd.random()
        if r < 0.30:
            return "range", self.range_request()
        if r < 0.55:
            return "put", self.put_request()
        if r < 0.65:
            return "delete", self.delete_request()
        if r < 0.88:
            return "txn", self.txn_request_top()
        if r < 0.91:
            return "compact", self.compact_request()
        return self.special()


def _avoid_etcd_txn_panic(txn):
    """Drop ignore_value/ignore_lease from puts of a txn that also deletes.

    etcd 3.4.23 validates ignore_* puts against the state before the txn, so a put with
    ignore_lease of a key deleted by an earlier op of the same txn (e.g. a from-key delete,
    which its duplicate-key check does not see) fails while applying: etcd panics
    ("unexpected error during txn: etcdserver: key not found") and exits.
    """
    puts, has_delete = [], [False]

    def visit(m):
        if isinstance(m, rpc.RequestOp):
            kind = m.WhichOneof("request")
            if kind == "request_delete_range":
                has_delete[0] = True
            elif kind == "request_put":
                puts.append(m.request_put)

    servers._walk(txn, visit)
    if has_delete[0]:
        for put in puts:
            put.ignore_value = put.ignore_lease = False


# ---------------------------------------------------------------------------------------
# Comparison

SORT_KEYS = {
    RO.VERSION: lambda kv: kv.version,
    RO.CREATE: lambda kv: kv.create_revision,
    RO.MOD: lambda kv: kv.mod_revision,
    RO.VALUE: lambda kv: kv.value,
}


def _is_sorted(values, descending):
    pairs = zip(values, values[1:])
    if descending:
        return all(a >= b for a, b in pairs)
    return all(a <= b for a, b in pairs)


def diff_range(req, ref, got):
    """Differences between two (normalised) RangeResponses to ``req``; [] if equal."""
    problems = []
    if ref.header != got.header:
        problems.append("header differs")
    if ref.count != got.count:
        problems.append("count: etcd %d, ours %d" % (ref.count, got.count))
    if ref.more != got.more:
        problems.append("more: etcd %s, ours %s" % (ref.more, got.more))
    target = req.sort_target
    exact = (target == RO.KEY or target not in SORT_KEYS or req.count_only
             or req.sort_order not in (RO.NONE, RO.ASCEND, RO.DESCEND))
    if exact:
        if list(ref.kvs) != list(got.kvs):
            problems.append("kvs differ")
        return problems
    if len(ref.kvs) != len(got.kvs):
        problems.append("len(kvs): etcd %d, ours %d" % (len(ref.kvs), len(got.kvs)))
        return problems
    descending = req.sort_order == RO.DESCEND
    truncated = req.limit > 0 and len(ref.kvs) == req.limit
    ser = lambda kv: kv.SerializeToString(deterministic=True)  # noqa: E731
    if target == RO.VALUE and req.keys_only:
        # Values are not returned: the tie structure is invisible.  Compare as a set
        # unless truncated (then which keys made the cut depends on the tie order).
        if not truncated and sorted(map(ser, ref.kvs)) != sorted(map(ser, got.kvs)):
            problems.append("kvs differ (as a multiset; sort by VALUE, keys_only)")
        return problems
    keyfn = SORT_KEYS[target]
    ref_vals = [keyfn(kv) for kv in ref.kvs]
    got_vals = [keyfn(kv) for kv in got.kvs]
    if not _is_sorted(got_vals, descending):
        problems.append("our kvs are not sorted by %s %s"
                        % (RO.SortTarget.Name(target), "DESCEND" if descending else "ASCEND"))
    if ref_vals != got_vals:
        problems.append("sequence of sort values differs")
        return problems
    # Tie groups: equal multisets, except the last group when the result was truncated.
    groups = []
    for i, v in enumerate(ref_vals):
        if i and v == ref_vals[i - 1]:
            groups[-1].append(i)
        else:
            groups.append([i])
    for n, group in enumerate(groups):
        if truncated and n == len(groups) - 1:
            continue
        a = sorted(ser(ref.kvs[i]) for i in group)
        b = sorted(ser(got.kvs[i]) for i in group)
        if a != b:
            problems.append("kvs with %s=%r differ" % (RO.SortTarget.Name(target),
                                                       ref_vals[group[0]]))
    return problems


def diff_txn(req, ref, got):
    problems = []
    if ref.header != got.header:
        problems.append("header differs")
    if ref.succeeded != got.succeeded:
        problems.append("succeeded: etcd %s, ours %s" % (ref.succeeded, got.succeeded))
        return problems
    ops = req.success if ref.succeeded else req.failure
    if len(ref.responses) != len(got.responses):
        problems.append("len(responses): etcd %d, ours %d"
                        % (len(ref.responses), len(got.responses)))
        return problems
    for i, (op, r, g) in enumerate(zip(ops, ref.responses, got.responses)):
        kind_r, kind_g = r.WhichOneof("response"), g.WhichOneof("response")
        if kind_r != kind_g:
            problems.append("responses[%d]: etcd %s, ours %s" % (i, kind_r, kind_g))
            continue
        if kind_r == "response_range":
            sub = diff_range(op.request_range, r.response_range, g.response_range)
        elif kind_r == "response_txn":
            sub = diff_txn(op.request_txn, r.response_txn, g.response_txn)
        else:
            sub = [] if r == g else ["differs"]
        problems.extend("responses[%d].%s: %s" % (i, kind_r, p) for p in sub)
    return problems


def diff_outcome(kind, req, ref, got):
    """Differences between two RpcResults (responses already normalised)."""
    if ref.ok != got.ok:
        return ["etcd %s, ours %s" % ("succeeded" if ref.ok else "failed",
                                      "succeeded" if got.ok else "failed")]
    if not ref.ok:
        if ref.error() != got.error():
            return ["error: etcd %r, ours %r" % (ref.error(), got.error())]
        return []
    if kind == "range":
        return diff_range(req, ref.response, got.response)
    if kind == "txn":
        return diff_txn(req, ref.response, got.response)
    return [] if ref.response == got.response else ["response differs"]


def _normalised(result, offset):
    if not result.ok:
        return result
    return servers.RpcResult(response=servers.normalise_response(result.response, offset))


def describe(result):
    if result.ok:
        return servers.show(result.response)
    return "error %s: %r" % (result.code.name, result.details)


def run_sequence(pair, seed, count):
    gen = Generator(seed, allow_nonpositive_compact=(pair.offset == 0))
    history = []
    for index in range(count):
        kind, req = gen.next()
        method, response_class = METHODS[kind]
        mapped = servers.map_request_revisions(req, pair.offset)
        ref = pair.etcd_client.call(method, req, response_class)
        got = pair.target_client.call(method, mapped, response_class)
        ref_n, got_n = _normalised(ref, 0), _normalised(got, pair.offset)
        problems = diff_outcome(kind, req, ref_n, got_n)
        if problems:
            recent = "\n".join("  #%d %s -> %s" % h for h in history[-8:])
            pytest.fail(
                "seed %d, operation #%d (%s): %s\n\n"
                "revision offset %d (ours = etcd + offset)\n"
                "recent operations:\n%s\n\n"
                "request (etcd numbering):\n%s\n\nrequest sent to ours:\n%s\n\n"
                "etcd (normalised):\n%s\n\nours (normalised):\n%s\n\nours (raw):\n%s"
                % (seed, index, method, "; ".join(problems), pair.offset, recent,
                   servers.show(req), servers.show(mapped), describe(ref_n),
                   describe(got_n), describe(got)),
                pytrace=False)
        history.append((index, kind, "ok" if ref.ok else ref.error()[0]))
        gen.observe(kind, req, ref)
    return gen
