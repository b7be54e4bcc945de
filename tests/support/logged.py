"""An adapter run with ``twistd --logger etcdadapter.logs.json``, and its log read back as
events (one JSON object per line: every line must parse)."""

import json

from support import servers


class JsonLoggedAdapter(servers.AdapterServer):
    """twistd ... --logger etcdadapter.logs.json etcd-adapter ..."""

    def _command(self):
        cmd = servers.AdapterServer._command(self)
        i = cmd.index("etcd-adapter")
        return cmd[:i] + ["--logger", "etcdadapter.logs.json"] + cmd[i:]

    def events(self):
        """Every log line as a dict (AssertionError naming a line that is not JSON)."""
        out = []
        for n, line in enumerate(self.log_text().splitlines(), 1):
            try:
                event = json.loads(line)
            except ValueError:
                raise AssertionError("log line %d is not JSON: %r" % (n, line))
            assert isinstance(event, dict), line
            out.append(event)
        return out

    def named(self, name):
        """The events whose ``event`` field is ``name``."""
        return [e for e in self.events() if e.get("event") == name]
