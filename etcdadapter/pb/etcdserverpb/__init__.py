"""Generated from proto/etcdserverpb by proto/generate.py; do not edit."""
