"""Run a ktl test module in a child pytest process, with one proxy test per test.

ktl runs Twisted's global reactor in a crochet thread, and a reactor runs
once per process, while the trial-based test modules spin that same
reactor themselves.  So a ktl test module runs itself again in a child
pytest (with ``CAULDRON_KTL_TESTS=child``); in the parent each of its tests
is a proxy reporting the child's outcome for it.  A module does::

    CHILD = ktlchild.CHILD
    ...tests...
    if not CHILD:
        ktlChild = ktlchild.childFixture(__file__)
        ktlchild.proxyAll(globals())
"""

import os
import subprocess
import sys
import xml.etree.ElementTree as ElementTree

import pytest

CHILD = os.environ.get("CAULDRON_KTL_TESTS") == "child"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: the most a child pytest may take
CHILD_TIMEOUT = 300


def runChild(modulePath, xmlPath):
    """``(outcomes, output)``: each test's problem (None if it passed), and pytest's output."""
    env = dict(os.environ, CAULDRON_KTL_TESTS="child")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
               "-o", "addopts=", "--junitxml", str(xmlPath), os.path.abspath(modulePath)]
    try:
        run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=CHILD_TIMEOUT)
        output = run.stdout + run.stderr
    except subprocess.TimeoutExpired as e:
        return {}, f"child pytest timed out:\n{e.stdout}{e.stderr}"
    outcomes = {}
    if os.path.exists(xmlPath):
        for case in ElementTree.parse(xmlPath).iter("testcase"):
            problem = None
            for tag in ("failure", "error", "skipped"):
                element = case.find(tag)
                if element is not None:
                    problem = (tag, (element.get("message") or "") + "\n" + (element.text or ""))
            outcomes[case.get("name")] = problem
    return outcomes, output


def childFixture(modulePath):
    """The module-scoped fixture ``ktlChild``: the child's outcomes, run once."""

    @pytest.fixture(scope="module")
    def ktlChild(tmp_path_factory):
        return runChild(modulePath, tmp_path_factory.mktemp("ktl") / "child.xml")

    return ktlChild


def _proxy(name):
    def proxy(ktlChild):
        outcomes, output = ktlChild
        # A parametrized test ran as name[...] once per parameter.
        mine = {case: problem for case, problem in outcomes.items()
                if case == name or case.startswith(name + "[")}
        if not mine:
            pytest.fail(f"{name} did not run in the child pytest:\n{output[-4000:]}")
        problems = [(case, problem) for case, problem in mine.items() if problem is not None]
        if problems:
            text = "\n".join(f"{case} ({kind}):\n{detail}" for case, (kind, detail) in problems)
            pytest.fail(f"in the child pytest: {text}", pytrace=False)

    proxy.__name__ = name
    return proxy


def proxyAll(namespace):
    """Replace every ``test_*`` function of a module's namespace by its proxy."""
    for name, test in list(namespace.items()):
        if name.startswith("test_") and callable(test):
            namespace[name] = _proxy(name)
