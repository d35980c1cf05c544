"""The installed package, as a user gets it from ``pip install .``.

These run the installed console scripts and twistd from an empty folder with
no PYTHONPATH, so they see the installed copy, never the checkout: a file
missing from the distribution (a plugin, a subpackage) fails here.
"""

import os
import shutil
import subprocess
import sys
from importlib import metadata

import pytest

SCRIPTS = ("cauldron", "Cauldron-router-zmq")


def installed(tmp_path, *argv):
    """Run ``argv`` from an empty folder with the environment of an installed package."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)


def scriptPath(name):
    """The console script next to this interpreter (the venv's bin folder)."""
    path = os.path.join(os.path.dirname(sys.executable), name)
    return path if os.path.exists(path) else shutil.which(name)


def test_consoleScriptsDeclared():
    """The distribution declares both console scripts, pointing at the CLI."""
    scripts = {ep.name: ep.value for ep in metadata.entry_points(group="console_scripts")
               if ep.dist is not None and ep.dist.name == "cauldron"}
    assert scripts == {"cauldron": "cauldron.cli:main",
                       "Cauldron-router-zmq": "cauldron.cli:routerMain"}


@pytest.mark.parametrize("name", SCRIPTS)
def test_consoleScriptsRun(tmp_path, name):
    """Each installed script runs and answers --help."""
    path = scriptPath(name)
    assert path, "%s is not installed next to %s" % (name, sys.executable)
    result = installed(tmp_path, path, "--help")
    assert result.returncode == 0, result
    assert "usage" in result.stdout.lower(), result.stdout


def test_twistdListsPlugins(tmp_path):
    """twistd, importing the installed package only, lists both plugins."""
    result = installed(tmp_path, sys.executable, "-c",
                       "from twisted.scripts.twistd import run; run()", "--help")
    assert result.returncode == 0, result
    for plugin in ("cauldron-router", "cauldron-dispatcher"):
        assert plugin in result.stdout, result.stdout


def test_installedPackageIsComplete(tmp_path):
    """Every subpackage and module of the checkout is importable from the installation."""
    code = ("import cauldron, cauldron.transport, cauldron.protocol.leases, cauldron.ktl, "
            "cauldron.demo, cauldron.tap, cauldron.keywordfile; print(cauldron.__file__)")
    result = installed(tmp_path, sys.executable, "-c", code)
    assert result.returncode == 0, result
    assert "site-packages" in result.stdout, result.stdout
