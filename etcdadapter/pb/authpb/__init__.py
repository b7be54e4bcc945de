"""Generated from proto/authpb by proto/generate.py; do not edit."""
