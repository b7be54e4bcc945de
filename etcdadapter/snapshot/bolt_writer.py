"""Writing a bbolt database (layout: :mod:`.bolt_layout`) in one pass.

Each bucket's keys arrive already sorted, as an iterator: its leaf pages are written out
as soon as they fill, and only one (first key, page id) pair per page is kept to build
the branch pages above them once the bucket ends.  So memory grows with the number of
pages, not with the data.  Pages are packed full; bbolt splits them when it writes to
them later.  The file written is what bbolt itself would accept: both meta pages, an
empty freelist, every bucket in its own pages (none inline).
"""

from etcdadapter.snapshot.bolt_layout import (
    BRANCH_ELEMENT, BRANCH_PAGE, BUCKET_HEADER, BUCKET_LEAF_FLAG, FREELIST_PAGE,
    LEAF_ELEMENT, LEAF_PAGE, PAGE_HEADER, PAGE_SIZE, meta_page)

_FIRST_DATA_PAGE = 3        # 0 and 1: meta pages; 2: the freelist


class BoltWriter(object):
    """Writes a bbolt file into ``f`` (a binary file open for writing, positioned at its
    start).  Call :meth:`add_bucket` for each top-level bucket, then :meth:`close`."""

    def __init__(self, f, page_size=PAGE_SIZE):
        self.f = f
        self.page_size = page_size
        self.next_pgid = _FIRST_DATA_PAGE
        self.buckets = {}               # name -> root page id
        f.write(b"\0" * (page_size * _FIRST_DATA_PAGE))   # filled in by close()

    # -- pages ------------------------------------------------------------------------
    def _write_page(self, flags, elements, data):
        """Append one page (with its overflow pages) holding ``elements`` (packed) and
        ``data`` (keys and values); returns its page id."""
        pgid = self.next_pgid
        body_len = PAGE_HEADER.size + len(elements) + len(data)
        pages = -(-body_len // self.page_size)
        count = len(elements) // LEAF_ELEMENT.size
        self.f.write(PAGE_HEADER.pack(pgid, flags, count, pages - 1))
        self.f.write(elements)
        self.f.write(data)
        self.f.write(b"\0" * (pages * self.page_size - body_len))
        self.next_pgid += pages
        return pgid

    def _pages(self, flags, entries):
        """Pack ``entries`` into pages of kind ``flags`` and write them; returns [(first
        key, page id)].  Leaf entries are (flags, key, value), branch entries (key,
        child page id)."""
        out = []
        batch = []
        size = PAGE_HEADER.size
        for entry in entries:
            need = 16 + len(entry[1] if flags == LEAF_PAGE else entry[0]) + (
                len(entry[2]) if flags == LEAF_PAGE else 0)
            if batch and size + need > self.page_size:
                out.append(self._flush(flags, batch))
                batch = []
                size = PAGE_HEADER.size
            batch.append(entry)
            size += need
        if batch or not out:
            out.append(self._flush(flags, batch))
        return out

    def _flush(self, flags, batch):
        elements = []
        data = []
        offset = len(batch) * 16                 # from the first element to the data
        for i, entry in enumerate(batch):
            pos = offset - i * 16                # from this element to its key
            if flags == LEAF_PAGE:
                eflags, key, value = entry
                elements.append(LEAF_ELEMENT.pack(eflags, pos, len(key), len(value)))
                data.append(key)
                data.append(value)
                offset += len(key) + len(value)
            else:
                key, child = entry
                elements.append(BRANCH_ELEMENT.pack(pos, len(key), child))
                data.append(key)
                offset += len(key)
        first = batch[0][1] if (batch and flags == LEAF_PAGE) else (
            batch[0][0] if batch else b"")
        return first, self._write_page(flags, b"".join(elements), b"".join(data))

    def _tree(self, leaf_entries):
        """Write a B+tree of ``leaf_entries``; returns its root page id."""
        level = self._pages(LEAF_PAGE, leaf_entries)
        while len(level) > 1:
            level = self._pages(BRANCH_PAGE, level)
        return level[0][1]

    # -- buckets ----------------------------------------------------------------------
    def add_bucket(self, name, items):
        """A top-level bucket ``name`` (bytes) holding ``items``: (key, value) bytes
        pairs in strictly increasing key order (ValueError otherwise)."""
        if name in self.buckets:
            raise ValueError("bucket %r written twice" % (name,))

        def checked():
            last = None
            for key, value in items:
                if last is not None and key <= last:
                    raise ValueError("bucket %r: keys out of order (%r after %r)"
                                     % (name, key, last))
                last = key
                yield 0, key, value
        self.buckets[name] = self._tree(checked())

    def close(self):
        """Write the root bucket, the freelist and the meta pages."""
        root = self._tree((BUCKET_LEAF_FLAG, name, BUCKET_HEADER.pack(pgid, 0))
                          for name, pgid in sorted(self.buckets.items()))
        high_water = self.next_pgid
        ps = self.page_size
        self.f.seek(0)
        for page_id in (0, 1):
            # bbolt takes the valid meta with the higher txid; page N holds txid % 2 == N.
            self.f.write(meta_page(page_id, ps, root, 2, high_water, page_id))
        freelist = PAGE_HEADER.pack(2, FREELIST_PAGE, 0, 0)
        self.f.write(freelist + b"\0" * (ps - len(freelist)))
        self.f.seek(high_water * ps)
        self.f.truncate()
        self.f.flush()
        return high_water * ps
