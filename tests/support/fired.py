"""Reading already-fired Deferreds in synchronous tests (the memory store fires at once)."""

import pytest
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from etcdadapter import errors


def result(d):
    """The result of an already-fired Deferred (or a handler's answer given as it is,
    see services.rpc.then); raises its failure."""
    if not isinstance(d, Deferred):
        return d
    out = []
    d.addBoth(out.append)
    assert out, "Deferred has not fired"
    r = out[0]
    if isinstance(r, Failure):
        r.raiseException()
    return r


def error_of(d):
    """The EtcdError an already-fired Deferred failed with."""
    with pytest.raises(errors.EtcdError) as info:
        result(d)
    return info.value
