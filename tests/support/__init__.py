"""What the test modules share: servers and clients, stores, certificates, helpers.

tests/ is on sys.path (pytest puts the directory of tests/conftest.py there), so a test
module in any of tests/unit, stores, compat and e2e imports ``from support import servers``.
"""
