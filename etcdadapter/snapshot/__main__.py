"""``python -m etcdadapter.snapshot restore FILE --to URL`` (the same as
``etcd-adapter snapshot restore``)."""

import sys

from etcdadapter.snapshot.restore import main

if __name__ == "__main__":     # importing the module (e.g. to list the package) runs nothing
    sys.exit(main())
