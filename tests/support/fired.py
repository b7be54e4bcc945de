"""Reading already-fired Deferreds in synchronous tests (the memory store fires at once)."""

import pytest
from twisted.python.failure import Failure

from etcdadapter import errors


def result(d):
    """The result of an already-fired Deferred; raises its failure."""
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
