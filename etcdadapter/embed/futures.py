"""How the embedding API hands results to the host: Twisted Deferreds, or asyncio futures.

Inside, everything is Twisted (the adapter runs on a Twisted reactor; under asyncio that
is Twisted's asyncio reactor on the host's loop, so both fire on the loop's thread).
:class:`Futures` turns the internal Deferreds into what the host's framework awaits,
through txaio's framework-neutral API (one instance per loop, no global txaio state).
"""

class Futures(object):
    """Deferreds for a Twisted host (``loop`` None), asyncio futures on ``loop``
    otherwise."""

    def __init__(self, loop=None):
        if loop is None:
            from txaio import tx
            self.txaio = tx.with_config()
        else:
            from txaio import aio
            self.txaio = aio.with_config(loop=loop)
        self.asyncio = loop is not None

    def out(self, d):
        """The host's awaitable for Deferred ``d`` (``d`` itself under Twisted).
        Cancelling the asyncio future cancels ``d``."""
        if not self.asyncio:
            return d
        api = self.txaio
        f = api.create_future(canceller=lambda _f: d.cancel())

        def ok(result):
            if not api.is_called(f):
                api.resolve(f, result)

        def failed(failure):
            if not api.is_called(f):
                api.reject(f, failure.value)
        d.addCallbacks(ok, failed)
        return f

    def future(self):
        """A new unresolved future of the host's framework."""
        return self.txaio.create_future()

    def resolve(self, f, result=None):
        if not self.txaio.is_called(f):
            self.txaio.resolve(f, result)

    def reject(self, f, error):
        """Fail ``f`` with exception ``error``."""
        if not self.txaio.is_called(f):
            self.txaio.reject(f, error)

    def succeeded(self, result):
        return self.txaio.create_future_success(result)

    def failed(self, error):
        f = self.future()
        self.reject(f, error)
        return f
