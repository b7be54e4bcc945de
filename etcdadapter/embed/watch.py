"""In-process streaming calls: a :class:`LocalStream` is the transport of a stream whose
client is the host program, and :class:`Watch` is one watch over it.

A watch is one Watch stream of the adapter's WatchService with one watcher -- the same
code remote watchers go through (permission check at create, history replay, fan-out by
the hub, compaction cancel) -- whose responses are turned into :class:`Event` records
and handed to a callback, or queued for ``async for``.  A queue the host does not drain
counts as the stream's pending bytes: past the stream budget the hub stops sending to
it and later catches it up from history, as it does for a slow network client.
"""

from collections import deque

from twisted.logger import Logger

from etcdadapter import errors
from etcdadapter.embed import results
from etcdadapter.services.rpc import ServerStream

log = Logger()

_EVENT_OVERHEAD = 64      # bytes a queued event is counted for beyond key and value


class LocalStream(ServerStream):
    """The handler side of an in-process streaming call: what the handler sends goes to
    ``on_response(response)``, its end to ``on_finish(error or None)``."""

    def __init__(self, context, on_response, on_finish):
        ServerStream.__init__(self, context)
        self._on_response = on_response
        self._on_finish = on_finish

    def send(self, response):
        if not self.closed:
            self._on_response(response)

    def _finish(self, error):
        self._on_finish(error)

    def hang_up(self):
        """The client side goes away (the handler releases everything)."""
        if not self.closed:
            self.closed = True
            self.on_cancel()


def cancel_error(response):
    """The EtcdError a canceled WatchResponse stands for, None for a plain cancel."""
    if response.compact_revision:
        error = errors.ErrCompacted()
        error.compact_revision = response.compact_revision
        return error
    reason = response.cancel_reason
    if not reason:
        return None
    if reason == errors.ErrCompacted.message:
        return errors.ErrCompacted()
    # "rpc error: code = PermissionDenied desc = etcdserver: permission denied"
    head, sep, desc = reason.partition(" desc = ")
    if sep and head.startswith("rpc error: code = "):
        name = head[len("rpc error: code = "):]
        for code, code_name in errors.CODE_NAMES.items():
            if code_name == name:
                return errors.EtcdError(code, desc)
    return errors.EtcdError(errors.StatusCode.INVALID_ARGUMENT, reason)


class Watch(object):
    """One watch of the in-process client (made by :meth:`Client.watch`).

    Events arrive in revision order, each :class:`~etcdadapter.embed.Event` once: to the
    ``callback`` given to :meth:`Client.watch`, or else through ``async for event in
    watch``.  :attr:`created` fires once the watch is in place (with the revision it
    watches from); :attr:`done` once it has ended: with None after :meth:`cancel` or
    when the adapter stops, with an :class:`~etcdadapter.errors.EtcdError` when the
    server ended it -- ``ErrCompacted`` (its ``compact_revision`` attribute says from
    where to re-read) or a refused create (e.g. ``ErrPermissionDenied``).  ``async
    for`` ends the same way: it stops, or raises that error.
    """

    def __init__(self, futures, callback=None, on_end=None):
        self._futures = futures
        self._callback = callback
        self._on_end = on_end           # called with the watch once it has ended
        self._queue = deque()           # events not yet taken by the iterator
        self._queued_bytes = 0
        self._waiters = deque()         # futures of __anext__ calls waiting for events
        self._stream = None
        self._created_rev = None
        self._created_f = None
        self._done_f = None
        self.ended = False
        #: The error the watch ended with (None: not ended, or ended cleanly).
        self.error = None

    # -- opening (by the client) ---------------------------------------------------------
    def _open(self, handler, context, request):
        if self.ended:
            return                      # canceled while the client was logging in
        self._stream = LocalStream(context, self._response, self._finished)
        if self._callback is None:
            self._stream.pending_bytes = lambda: self._queued_bytes
        handler(self._stream)
        self._stream.on_message(request)

    def _open_failed(self, error):
        self._end(error)

    # -- the stream's responses ----------------------------------------------------------
    def _response(self, response):
        if self.ended:
            return
        if response.canceled:
            self._end(cancel_error(response))
            return
        if response.created:
            self._created_rev = response.header.revision
            if self._created_f is not None:
                self._futures.resolve(self._created_f, self._created_rev)
        for m in response.events:
            self._deliver(results.event(m))

    def _finished(self, error):
        self._end(error)

    def _deliver(self, event):
        if self._callback is not None:
            try:
                self._callback(event)
            except Exception:
                log.failure("watch callback failed on revision {rev}", rev=event.revision)
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not self._futures.txaio.is_called(waiter):   # not cancelled by the host
                self._futures.resolve(waiter, event)
                return
        self._queue.append(event)
        self._queued_bytes += len(event.kv.key) + len(event.kv.value) + _EVENT_OVERHEAD

    def _end(self, error):
        if self.ended:
            return
        self.ended = True
        self.error = error
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.hang_up()            # release the watcher (a canceled one keeps its ID)
        if self._on_end is not None:
            self._on_end(self)
        f = self._futures
        if self._created_f is not None and self._created_rev is None:
            f.reject(self._created_f, error or errors.ErrStopped())
        if self._done_f is not None:
            self._settle_done(self._done_f)
        while self._waiters:
            self._settle_end(self._waiters.popleft())

    def _settle_done(self, future):
        if self.error is None:
            self._futures.resolve(future, None)
        else:
            self._futures.reject(future, self.error)

    def _settle_end(self, future):
        self._futures.reject(future, self.error or StopAsyncIteration())

    # -- the host's side -----------------------------------------------------------------
    @property
    def created(self):
        """Fires with the revision the watch was created at (the header revision of
        etcd's created response); fails if the watch could not be created."""
        if self._created_f is None:
            self._created_f = self._futures.future()
            if self._created_rev is not None:
                self._futures.resolve(self._created_f, self._created_rev)
            elif self.ended:
                self._futures.reject(self._created_f, self.error or errors.ErrStopped())
        return self._created_f

    @property
    def done(self):
        """Fires with None when the watch ended cleanly, fails with the EtcdError the
        server ended it with."""
        if self._done_f is None:
            self._done_f = self._futures.future()
            if self.ended:
                self._settle_done(self._done_f)
        return self._done_f

    def cancel(self):
        """Stop watching (no more events; ``done`` fires with None)."""
        self._end(None)

    def __aiter__(self):
        if self._callback is not None:
            raise TypeError("this watch delivers to its callback; iterate a watch made "
                            "without one")
        return self

    def __anext__(self):
        if self._queue:
            event = self._queue.popleft()
            self._queued_bytes -= len(event.kv.key) + len(event.kv.value) + _EVENT_OVERHEAD
            return self._futures.succeeded(event)
        f = self._futures.future()
        if self.ended:
            self._settle_end(f)
        else:
            self._waiters.append(f)
        return f
