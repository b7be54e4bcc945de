"""The options are declared once (etcdadapter/options.py): the README's option table,
the command line, the environment, the config file and the service settings all follow
that declaration."""

import os
import re

import pytest

from support import servers
from etcdadapter import flag_aliases, listen_urls, options, tap
from etcdadapter.server import AdapterConfig

UNSET = (None, "", False)


def readme_rows():
    """[(option names, default cell)] of the README's "## Options" table."""
    with open(os.path.join(servers.REPO_ROOT, "README.md")) as f:
        text = f.read()
    section = text.split("\n## Options\n", 1)[1].split("\n## ", 1)[0]
    table = section.split("| option | default | meaning |\n|---|---|---|\n", 1)[1]
    rows = []
    for line in table.splitlines():
        if not line.startswith("|"):
            break
        names_cell, default_cell = line.split(" | ")[:2]
        rows.append((re.findall(r"`--([\w-]+)", names_cell), default_cell))
    return rows


def readme_defaults():
    """{option name: its default as the README shows it}."""
    out = {}
    for names, cell in readme_rows():
        defaults = cell.split(", ")
        if len(defaults) == 1:
            defaults = defaults * len(names)
        assert len(defaults) == len(names), (names, cell)
        out.update(zip(names, defaults))
    return out


def suggested_row(option):
    default = "none" if option.default in UNSET else "`%s`" % (option.default,)
    return "| `--%s` | %s | %s |" % (option.name, default, option.help)


def test_readme_table_lists_every_declared_option_and_nothing_else():
    shown = readme_defaults()
    missing = [suggested_row(o) for o in options.OPTIONS if o.name not in shown]
    assert not missing, "README's option table lacks:\n" + "\n".join(missing)
    assert set(shown) <= set(options.BY_NAME), set(shown) - set(options.BY_NAME)


@pytest.mark.parametrize("option", options.OPTIONS, ids=lambda o: o.name)
def test_readme_default_is_the_declared_one(option):
    cell = readme_defaults()[option.name]
    m = re.fullmatch(r"`([^`]+)`", cell)
    if m is None:               # prose: "none", "off", "the listening addresses"
        assert option.default in UNSET, (option.name, cell, option.default)
        return
    text = m.group(1)
    if option.kind == options.LIST:
        assert [listen_urls.endpoint(text)] == option.initial
    elif option.coerce is not None:
        assert option.coerce(text) == option.initial, (option.name, text)
    else:
        assert text == option.default


def test_readme_names_the_etcd_spellings():
    with open(os.path.join(servers.REPO_ROOT, "README.md")) as f:
        text = f.read()
    for alias, _option, _split, _doc in flag_aliases.ALIASES:
        assert "`--%s`" % alias in text


def test_service_settings_are_the_declared_options():
    config = AdapterConfig()
    assert vars(config) == {o.attribute: o.initial for o in options.SETTINGS}
    assert "log_level" not in vars(config) and "config_file" not in vars(config)
    with pytest.raises(TypeError) as info:
        AdapterConfig(max_txn_opps=1)
    assert "max_txn_opps" in str(info.value)


def test_command_line_gives_the_declared_defaults(monkeypatch):
    for name in list(os.environ):
        if name.startswith(options.ENV_PREFIX):
            monkeypatch.delenv(name)
    parsed = tap.Options()
    parsed.parseOptions([])
    assert vars(parsed.config()) == vars(AdapterConfig())


def test_every_declared_option_is_a_flag_a_variable_and_a_file_key(monkeypatch, tmp_path):
    """Each kind of option, set through each channel, reaches the service settings."""
    for name in list(os.environ):
        if name.startswith(options.ENV_PREFIX):
            monkeypatch.delenv(name)
    samples = {"max-txn-ops": ("64", 64), "drain-timeout": ("2.5", 2.5),
               "name": ("n1", "n1"), "advertise-client-urls": ("http://a:1", ["http://a:1"]),
               "listen": ("127.0.0.1:1", ["tcp:1:interface=127.0.0.1"])}
    for name, (text, value) in samples.items():
        attribute = options.BY_NAME[name].attribute
        parsed = tap.Options()
        parsed.parseOptions(["--" + name, text])
        assert getattr(parsed.config(), attribute) == value, name
        monkeypatch.setenv(options.BY_NAME[name].env, text)
        parsed = tap.Options()
        parsed.parseOptions([])
        assert getattr(parsed.config(), attribute) == value, name
        monkeypatch.delenv(options.BY_NAME[name].env)
        path = tmp_path / (name + ".yaml")
        path.write_text("%s: %s\n" % (name, text))
        parsed = tap.Options()
        parsed.parseOptions(["--config-file", str(path)])
        assert getattr(parsed.config(), attribute) == value, name
