"""The on-disk layout of a bbolt database (go.etcd.io/bbolt, format version 2), the file
etcd keeps its data in and streams as a snapshot.  Facts from bbolt's ``page.go``,
``meta.go``, ``bucket.go`` and ``freelist.go``; all integers are little-endian (the
layout is the Go structs' memory image on amd64/arm64).

The file is an array of pages of ``page_size`` bytes (4096 here), numbered from 0 (the
``pgid``).  Every page starts with a 16-byte header::

    id uint64 | flags uint16 | count uint16 | overflow uint32

``id`` is the page's own number; ``flags`` its kind (exactly one of the flags below);
``count`` the elements it holds; ``overflow`` how many following pages continue it (a
page bigger than ``page_size``, e.g. a leaf holding a large value).

* Pages 0 and 1 are *meta* pages; the header is followed by::

      magic uint32 (0xED0CDAED) | version uint32 (2) | page_size uint32 | flags uint32 |
      root bucket: root pgid uint64, sequence uint64 | freelist pgid uint64 |
      pgid uint64 (high-water mark: pages in the file) | txid uint64 | checksum uint64

  ``checksum`` is FNV-1a 64 of the meta bytes before it.  A reader takes the valid meta
  with the highest txid; meta page N must hold a txid with ``txid % 2 == N``.
* A *leaf* page holds ``count`` 16-byte elements, then the keys and values::

      flags uint32 | pos uint32 | ksize uint32 | vsize uint32

  ``pos`` counts from the element's own first byte to its key; the value follows the
  key.  ``flags`` 1 marks a nested bucket: the value is a bucket header (root pgid
  uint64, sequence uint64), and when root is 0 the bucket is *inline*: a leaf page image
  (header included) follows the bucket header in the value.
* A *branch* page holds ``count`` 16-byte elements then the keys::

      pos uint32 | ksize uint32 | pgid uint64

  each naming a child page and that child's first key, in key order.
* The *freelist* page lists free page ids as uint64s, sorted; when ``count`` is 0xFFFF
  the real count is the first uint64.
* The root bucket (named in the meta) is a tree whose leaf elements are the top-level
  buckets.  Keys in every tree are ordered bytewise.
"""

import struct

MAGIC = 0xED0CDAED
VERSION = 2
PAGE_SIZE = 4096

BRANCH_PAGE = 0x01
LEAF_PAGE = 0x02
META_PAGE = 0x04
FREELIST_PAGE = 0x10

BUCKET_LEAF_FLAG = 0x01

NO_FREELIST = 0xFFFFFFFFFFFFFFFF

PAGE_HEADER = struct.Struct("<QHHI")            # id, flags, count, overflow
LEAF_ELEMENT = struct.Struct("<IIII")           # flags, pos, ksize, vsize
BRANCH_ELEMENT = struct.Struct("<IIQ")          # pos, ksize, pgid
BUCKET_HEADER = struct.Struct("<QQ")            # root pgid, sequence
# magic, version, page_size, flags, root (pgid, sequence), freelist, pgid, txid
META_BODY = struct.Struct("<IIIIQQQQQ")
CHECKSUM = struct.Struct("<Q")
PGID = struct.Struct("<Q")

#: Where a meta page's body starts (after the page header).
META_OFFSET = PAGE_HEADER.size


def fnv1a64(data):
    """FNV-1a, 64 bits (Go's hash/fnv New64a): bbolt's meta checksum."""
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def meta_page(page_id, page_size, root, freelist, high_water, txid):
    """The bytes of meta page ``page_id`` (0 or 1), ``page_size`` long."""
    body = META_BODY.pack(MAGIC, VERSION, page_size, 0, root, 0, freelist, high_water,
                          txid)
    data = (PAGE_HEADER.pack(page_id, META_PAGE, 0, 0) + body
            + CHECKSUM.pack(fnv1a64(body)))
    return data + b"\0" * (page_size - len(data))


class BoltFormatError(ValueError):
    """The file is not a bbolt database this code can read."""
