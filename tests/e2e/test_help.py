"""``twistd etcd-adapter --help`` documents every option, whoever adds it."""

import os
import re
import subprocess
import sys

from twisted.python import reflect

from support import servers
from etcdadapter import tap


def help_blocks():
    """{option name: its help text} from the real ``twistd etcd-adapter --help``."""
    env = dict(os.environ, PYTHONPATH=servers.REPO_ROOT)
    result = subprocess.run(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
         "etcd-adapter", "--help"],
        capture_output=True, text=True, timeout=60, env=env, cwd=servers.REPO_ROOT)
    assert result.returncode == 0, result.stderr
    blocks, name = {}, None
    for line in result.stdout.splitlines():
        m = re.match(r"  (?:-\w, |    )--([\w-]+)=?\s*(.*)", line)
        if m:
            name = m.group(1)
            blocks[name] = m.group(2)
        elif line.startswith("      ") and name:
            blocks[name] += " " + line.strip()
        else:
            name = None
    return blocks, result.stdout


def _squeeze(text):
    # twisted.python.usage wraps lines at spaces and after hyphens.
    return re.sub(r"\s+", "", text)


def test_every_option_is_documented():
    blocks, text = help_blocks()
    options = tap.Options()
    names = [p[0] for p in options.optParameters] + [f[0] for f in options.optFlags]
    # opt_* methods (e.g. --listen), without their one-letter aliases (-l)
    handlers = [n for n in options.docs
                if n not in names + ["help", "version"] and len(n) > 1]
    assert "listen" in handlers
    for name in names + handlers:
        doc = options.docs[name]
        assert doc and len(doc) >= 20, "--%s has no real help text: %r" % (name, doc)
        assert name in blocks, "--%s missing from --help:\n%s" % (name, text)
        assert _squeeze(doc) in _squeeze(blocks[name]), (name, doc, blocks[name])
    # Parameters with a default show it.
    for p in options.optParameters:
        if p[2] is not None and p[2] != "":
            assert "[default: %s]" % (p[2],) in " ".join(blocks[p[0]].split()), p[0]
    # Every class in the hierarchy was looked at (options added by a subclass too).
    flags = []
    reflect.accumulateClassList(tap.Options, "optFlags", flags)
    assert {f[0] for f in flags} <= set(blocks)
    assert "ETCD_ADAPTER_<OPTION>" in text and "--config-file" in text


def test_help_and_errors_point_to_readme_sections_that_exist():
    """What --help and the one-line errors send the operator to ("README: SECTION",
    'README, "SECTION"') is a heading of README.md.  The store URL options and the
    policy file format are among them (issue 16: they were pointed at in source files
    only)."""
    readme = open(os.path.join(servers.REPO_ROOT, "README.md")).read()
    headings = {_squeeze(h) for h in re.findall(r"^#+ (.+)$", readme, re.M)}
    _blocks, text = help_blocks()
    in_help = re.findall(r'README,"([^"]+)"', _squeeze(text))
    assert {"StoreURLoptions", "Client-certificatepolicy"} <= set(in_help), in_help
    in_code = []
    package = os.path.join(servers.REPO_ROOT, "etcdadapter")
    for folder, _dirs, files in os.walk(package):
        for name in files:
            if name.endswith(".py"):
                with open(os.path.join(folder, name)) as f:
                    in_code += re.findall(r"\(README: ([^)]+)\)", f.read())
    assert "Quick start per store" in in_code, in_code
    for section in in_help + [_squeeze(s) for s in in_code]:
        assert section in headings, section
