"""Secure mode from the command line (issue 10), as docs/security.rst tells a user.

Keys come from ``cauldron keys generate``; public keys are copied into the
directories the configs name; a router and two dispatchers run as
``twistd -n`` processes, and clients are ``python -m cauldron`` commands,
each with its own key.  Every process a test starts is ended at cleanup.
"""

import os
import re
import shutil

import pytest
from processes import DEADLINE, Process, cauldron
from test_router_processes import FOREGROUND, LISTENING, READY, Setup

HEARTBEAT = "0.2"
AUDIT = re.compile(r"demo\.POS written by ops \(host=\S+ user=\S+ pid=\d+\): '0' -> '5'")


class SecureSite:
    """Key pairs made with the CLI, public keys distributed, one config per process."""

    def __init__(self, tmp_path):
        self.setup = Setup(tmp_path)
        self.tmp = tmp_path
        self.private = tmp_path / "private"
        self.clients = self.publicDirectory("clients")
        self.dispatchers = self.publicDirectory("dispatchers")
        self.generate("router")
        for name in ("demo", "tool"):
            self.generate(name, self.dispatchers)
        for name in ("ops", "guest"):
            self.generate(name, self.clients)
        self.generate("mallory")  # a key pair nobody allowed
        self.keywords = tmp_path / "demo.toml"
        self.keywords.write_text('writers = ["ops"]\n\n[POS]\ntype = "integer"\ninitial = 0\n')

    def publicDirectory(self, name):
        path = self.tmp / name
        path.mkdir(mode=0o755)
        return path

    def generate(self, name, publicInto=None):
        result = cauldron("keys", "generate", name, "--dir", str(self.private))
        assert result.returncode == 0 and result.stderr == "", result
        assert result.stdout.startswith(f"{name}  "), result.stdout
        if publicInto is not None:
            shutil.copy(self.private / f"{name}.key", publicInto / f"{name}.key")

    def config(self, key):
        """The config file of a process holding ``key`` (None: plain mode)."""
        text = open(self.setup.config).read()
        if key is not None:
            text += "\n".join([
                "[security]",
                "curve = yes",
                f"secret-key = private/{key}.key_secret",
                "router-key = private/router.key",
                "client-keys = clients",
                "dispatcher-keys = dispatchers",
            ]) + "\n"
        path = self.tmp / f"{key or 'plain'}.ini"
        path.write_text(text)
        return str(path)


@pytest.fixture
def site(tmp_path):
    return SecureSite(tmp_path)


@pytest.fixture
def started(site):
    processes = []

    def start(*argv):
        process = Process([*FOREGROUND, *argv], cwd=str(site.tmp))
        processes.append(process)
        return process

    yield start
    for process in processes:
        process.kill()


def run(site, key, *args, timeout="2"):
    command, *rest = args
    return cauldron(command, "-c", site.config(key), "--timeout", timeout, *rest)


def assertOneLine(result, line):
    assert (result.returncode, result.stdout, result.stderr) == (1, "", line + "\n"), result


def test_secureSiteFromTheCommandLine(site, started):
    """Router, two dispatchers and clients with generated keys; strangers get nowhere."""
    router = started("cauldron-router", "-c", site.config("router"))
    router.waitForLine(LISTENING)
    demo = started("cauldron-dispatcher", "-c", site.config("demo"), "-s", "demo",
                   "-k", str(site.keywords), "--heartbeat", HEARTBEAT)
    demo.waitForLine(READY)
    misc = started("cauldron-dispatcher", "-c", site.config("tool"), "-s", "misc",
                   "-k", str(site.setup.keywords(1.5)), "--heartbeat", HEARTBEAT)
    misc.waitForLine(READY)

    listed = run(site, "ops", "services")
    assert listed.returncode == 0, listed
    assert [line.split()[0] for line in listed.stdout.splitlines()] == ["demo", "misc"]
    assert run(site, "guest", "show", "-s", "misc", "TEMP").stdout == "TEMP = 1.5\n"

    assert run(site, "ops", "modify", "-s", "demo", "POS=5").stdout == "POS = 5\n"
    demo.waitForLine(AUDIT)
    assertOneLine(run(site, "guest", "modify", "-s", "demo", "POS=6"),
                  "cauldron: demo.POS: your key may not write it")
    assert run(site, "guest", "show", "-s", "demo", "POS").stdout == "POS = 5\n"

    # No key, or a key nobody allowed: no answer at all.
    for key in (None, "mallory"):
        assertOneLine(run(site, key, "show", "-s", "demo", "POS"),
                      f"cauldron: no router answers at {site.setup.address} "
                      "(locate 'demo': no reply within 1 s)")

    # Another dispatcher key cannot take the service 'demo' is bound to.
    intruder = started("cauldron-dispatcher", "-c", site.config("tool"), "-s", "demo",
                       "-k", str(site.keywords), "--heartbeat", HEARTBEAT)
    assert intruder.wait(DEADLINE) != 0
    assert "bound to the dispatcher key of its name: key 'tool' may not hold it" \
        in intruder.text(), intruder.text()
    assert run(site, "ops", "show", "-s", "demo", "POS").stdout == "POS = 5\n"
    # The router counted and logged both (a plain peer fails the handshake).
    assert re.search(r"secure mode: \d+ failed handshakes", router.text()), router.text()
    # Both counts may share one line, when they fall in the same period.
    refused = r"secure mode: (\d+ failed handshakes, )?\d+ refused keys \(latest: unknown key"
    assert re.search(refused, router.text()), router.text()


def test_keyProblemStopsTheRouterWithOneLine(site, started):
    secret = site.private / "router.key_secret"
    os.chmod(secret, 0o640)
    router = started("cauldron-router", "-c", site.config("router"))
    assert router.wait(DEADLINE) != 0
    assert (f"cauldron-router: cannot start: {secret}: readable by its group (mode 0640):"
            " chmod 600 it") in router.text(), router.text()
    result = run(site, "router", "services")
    assertOneLine(result, f"cauldron: {secret}: readable by its group (mode 0640): chmod 600 it")
