"""What `pip install .` ships: every package, the generated protobuf code and the Twisted
plugin (which lives in Twisted's own namespace package and is easy to lose)."""

import os
import subprocess
import sys
import zipfile

from support import servers


def test_wheel_contains_packages_and_twisted_plugin(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
         "-w", str(tmp_path), servers.REPO_ROOT],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    wheels = [f for f in os.listdir(tmp_path) if f.endswith(".whl")]
    assert len(wheels) == 1, wheels
    names = set(zipfile.ZipFile(os.path.join(tmp_path, wheels[0])).namelist())
    for required in ("twisted/plugins/etcdadapter_plugin.py",
                     "etcdadapter/tap.py",
                     "etcdadapter/server.py",
                     "etcdadapter/transport/h2_server.py",
                     "etcdadapter/services/kv.py",
                     "etcdadapter/store/memory.py",
                     "etcdadapter/gateway/router.py",
                     "etcdadapter/pb/etcdserverpb/rpc_pb2.py",
                     "etcdadapter/pb/mvccpb/kv_pb2.py",
                     "etcdadapter/pb/authpb/auth_pb2.py"):
        assert required in names, required
    # Twisted's plugin package must not be shadowed by an __init__.py of ours.
    assert "twisted/__init__.py" not in names
    assert "twisted/plugins/__init__.py" not in names
    assert not any(n.endswith("dropin.cache") for n in names)
    # `pip install .` puts the etcd-adapter command on PATH.
    wheel = zipfile.ZipFile(os.path.join(tmp_path, wheels[0]))
    entry_points = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    assert len(entry_points) == 1, names
    text = wheel.read(entry_points[0]).decode()
    assert "[console_scripts]\netcd-adapter = etcdadapter.cli:main" in text, text


def test_twistd_help_lists_the_plugin():
    env = dict(os.environ, PYTHONPATH=servers.REPO_ROOT)
    result = subprocess.run(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "--help"],
        capture_output=True, text=True, timeout=60, env=env, cwd=servers.REPO_ROOT)
    assert "etcd-adapter" in result.stdout
    result = subprocess.run(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
         "etcd-adapter", "--help"],
        capture_output=True, text=True, timeout=60, env=env, cwd=servers.REPO_ROOT)
    for option in ("--listen", "--store", "--max-request-bytes", "--max-concurrent-streams",
                   "--max-txn-ops", "--advertise-client-urls"):
        assert option in result.stdout, option
