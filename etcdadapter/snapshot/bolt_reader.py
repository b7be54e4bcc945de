"""Reading a bbolt database (layout: :mod:`.bolt_layout`): its top-level buckets and
their keys in order, one page at a time from the file (nothing is loaded whole)."""

from etcdadapter.snapshot.bolt_layout import (
    BRANCH_ELEMENT, BRANCH_PAGE, BUCKET_HEADER, BUCKET_LEAF_FLAG, CHECKSUM, LEAF_ELEMENT,
    LEAF_PAGE, MAGIC, META_BODY, META_OFFSET, PAGE_HEADER, VERSION, BoltFormatError,
    fnv1a64)

_MIN_PAGE = 512
_MAX_PAGE = 1 << 20


class BoltReader(object):
    """A bbolt file ``f`` (binary, seekable) of ``size`` bytes (the database part only:
    a snapshot's trailing checksum excluded)."""

    def __init__(self, f, size):
        self.f = f
        self.size = size
        metas = []
        f.seek(0)
        first = f.read(_MIN_PAGE)
        if len(first) < META_OFFSET + META_BODY.size + CHECKSUM.size:
            raise BoltFormatError("file too small to be a bbolt database")
        meta0 = self._meta(first)
        page_size = meta0[2] if meta0 else None
        if meta0:
            metas.append(meta0)
        if page_size is None:
            # Meta page 0 is damaged: look for page 1 at the usual page sizes.
            for guess in (4096, 8192, 16384, 65536):
                f.seek(guess)
                m = self._meta(f.read(_MIN_PAGE))
                if m and m[2] == guess:
                    page_size = guess
                    metas.append(m)
                    break
        else:
            f.seek(page_size)
            m = self._meta(f.read(_MIN_PAGE))
            if m:
                metas.append(m)
        if not metas:
            raise BoltFormatError("not a bbolt database (no valid meta page)")
        magic, version, ps, flags, root, seq, freelist, high_water, txid = max(
            metas, key=lambda m: m[8])
        self.page_size = ps
        self.root = root
        self.txid = txid
        self.high_water = high_water
        if high_water * ps > size:
            raise BoltFormatError("bbolt file truncated: %d pages declared, %d bytes"
                                  % (high_water, size))

    @staticmethod
    def _meta(data):
        if len(data) < META_OFFSET + META_BODY.size + CHECKSUM.size:
            return None
        _id, flags, _count, _overflow = PAGE_HEADER.unpack_from(data, 0)
        body = data[META_OFFSET:META_OFFSET + META_BODY.size]
        meta = META_BODY.unpack(body)
        (checksum,) = CHECKSUM.unpack_from(data, META_OFFSET + META_BODY.size)
        if meta[0] != MAGIC or meta[1] != VERSION or checksum != fnv1a64(body):
            return None
        if not _MIN_PAGE <= meta[2] <= _MAX_PAGE:
            return None
        return meta

    def page(self, pgid):
        """The bytes of page ``pgid`` with its overflow pages."""
        if not 2 <= pgid < self.high_water:
            raise BoltFormatError("page %d outside the file" % pgid)
        ps = self.page_size
        self.f.seek(pgid * ps)
        data = self.f.read(ps)
        page_id, _flags, _count, overflow = PAGE_HEADER.unpack_from(data, 0)
        if page_id != pgid:
            raise BoltFormatError("page %d says it is page %d" % (pgid, page_id))
        if overflow:
            if pgid + overflow >= self.high_water:
                raise BoltFormatError("page %d overflows the file" % pgid)
            data += self.f.read(overflow * ps)
        return data

    def _walk(self, data):
        """(flags, key, value) of the leaf elements under the page image ``data``."""
        _id, flags, count, _overflow = PAGE_HEADER.unpack_from(data, 0)
        base = PAGE_HEADER.size
        if flags == LEAF_PAGE:
            for i in range(count):
                at = base + i * LEAF_ELEMENT.size
                eflags, pos, ksize, vsize = LEAF_ELEMENT.unpack_from(data, at)
                k = at + pos
                if k + ksize + vsize > len(data):
                    raise BoltFormatError("leaf element outside its page")
                yield eflags, data[k:k + ksize], data[k + ksize:k + ksize + vsize]
        elif flags == BRANCH_PAGE:
            for i in range(count):
                at = base + i * BRANCH_ELEMENT.size
                _pos, _ksize, child = BRANCH_ELEMENT.unpack_from(data, at)
                for item in self._walk(self.page(child)):
                    yield item
        else:
            raise BoltFormatError("unexpected page kind 0x%x in a bucket" % flags)

    def _bucket_items(self, header_and_page):
        root, _seq = BUCKET_HEADER.unpack_from(header_and_page, 0)
        if root == 0:
            return self._walk(header_and_page[BUCKET_HEADER.size:])      # inline
        return self._walk(self.page(root))

    def buckets(self):
        """{name: bucket value} of the top-level buckets."""
        out = {}
        for eflags, key, value in self._walk(self.page(self.root)):
            if eflags & BUCKET_LEAF_FLAG:
                out[bytes(key)] = bytes(value)
        return out

    def items(self, name, buckets=None):
        """(key, value) pairs of top-level bucket ``name`` in key order (none when the
        bucket does not exist); nested buckets are skipped."""
        value = (buckets if buckets is not None else self.buckets()).get(name)
        if value is None:
            return
        for eflags, key, val in self._bucket_items(value):
            if not eflags & BUCKET_LEAF_FLAG:
                yield bytes(key), bytes(val)
