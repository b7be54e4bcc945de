"""Txn requests nested deeper than etcd allows, as gRPC messages (bytes) and as JSON bodies
of the gateway's /v3/kv/txn, with the innermost txns the tests wrap."""

from etcdadapter.pb.etcdserverpb import rpc_pb2 as rpc
from etcdadapter.transport.proto_decode import _varint_bytes as _varint  # base-128 varint


def nested_txn(levels, innermost):
    """A serialized TxnRequest nested ``levels`` deep (the outer one is level 1) through
    each level's success[0].request_txn, around the serialized ``innermost``.  Built as
    bytes: protobuf in Python nests no more than 50 levels."""
    heads = []
    size = len(innermost)
    for _ in range(levels - 1):
        op = b"\x22" + _varint(size)                       # RequestOp.request_txn
        head = b"\x12" + _varint(len(op) + size) + op       # TxnRequest.success
        heads.append(head)
        size += len(head)
    return b"".join(reversed(heads)) + innermost


def _one_op(**op):
    return rpc.TxnRequest(success=[rpc.RequestOp(**op)]).SerializeToString()


RANGE_ONLY = _one_op(request_range=rpc.RangeRequest(key=b"deep"))
PUT_ONLY = _one_op(request_put=rpc.PutRequest(key=b"deep", value=b"v"))


def nested_txn_json(levels, innermost):
    """A /v3/kv/txn body nested ``levels`` deep (the outer txn is level 1) through each
    level's success[0].request_txn, around the JSON text ``innermost``."""
    text = innermost
    for _ in range(levels - 1):
        text = '{"success":[{"request_txn":%s}]}' % text
    return text


PUT_ONLY_JSON = '{"success":[{"request_put":{"key":"ZGVlcA==","value":"dg=="}}]}'  # deep=v
