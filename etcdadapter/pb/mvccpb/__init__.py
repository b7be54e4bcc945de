"""Generated from proto/mvccpb by proto/generate.py; do not edit."""
