import sys

from etcdadapter.snapshot.restore import main

sys.exit(main())
