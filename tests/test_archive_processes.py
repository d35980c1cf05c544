"""The archiver and ``cauldron history`` as a user runs them (issue 14).

``cauldron demo`` serves changing keywords; ``twistd -n cauldron-archiver``
stores them into SQLite, or into a throwaway PostgreSQL server; ``cauldron
history`` prints them back.  Waits read output or poll until a deadline.
"""

import csv
import io
import json
import re
import signal
import sys

import pytest
from pgserver import postgresServer, postgresUrl, privatePostgresServer  # noqa: F401
from processes import DEADLINE, TWISTD, Process, cauldron, environment
from test_router_processes import Setup, poll

LISTENING = re.compile(r"Stop with Ctrl-C")
STORING = re.compile(r"archiver storing into (?P<db>\S+)")
ROW = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} [+-]\d{4}  TEMP  (?P<value>\S+)$")


@pytest.fixture
def site(tmp_path):
    """A router config and the processes of one test (killed at the end)."""
    setup = Setup(tmp_path)
    setup.processes = []
    # Where the default archive goes: inside the test's folder, never ~/.local/state.
    setup.env = environment(XDG_STATE_HOME=str(tmp_path / "state"))
    yield setup
    for process in setup.processes:
        process.kill()


def start(site, argv):
    process = Process(argv, cwd=str(site.tmp), env=site.env)
    site.processes.append(process)
    return process


def history(site, db, *args):
    """``cauldron history``; ``db`` None: without --db (the default archive)."""
    where = [] if db is None else ["--db", db]
    return cauldron("history", "-c", site.config, *where, "-s", "demo", *args,
                    cwd=str(site.tmp), env=site.env)


def archiveTheDemo(site, db):
    """The demo and an archiver beside it; fires once TEMP has a few rows stored."""
    demo = start(site, [sys.executable, "-m", "cauldron", "demo", "-c", site.config])
    demo.waitForLine(LISTENING)
    where = [] if db is None else ["--db", db]
    archiver = start(site, [*TWISTD, "-n", "--pidfile=", "cauldron-archiver", "-c", site.config,
                            *where, "--keywords", "TEMP,MODE"])
    archiver.waitForLine(STORING)
    rows = poll(lambda: history(site, db, "TEMP").stdout.splitlines(),
                lambda lines: len(lines) >= 3, what="three TEMP rows archived")
    return demo, archiver, rows


@pytest.mark.parametrize("database", ["default", "sqlite", "postgresql"])
def test_archiveBesideTheDemo(site, database, request):
    """Started next to ``cauldron demo``: TEMP's history comes back, in every format.

    ``default``: no --db anywhere, no setup: the default SQLite file is made.
    """
    if database == "default":
        db = None
    elif database == "sqlite":
        db = "sqlite:///%s" % (site.tmp / "archive.sqlite",)
    else:
        db = request.getfixturevalue("postgresUrl")
    demo, archiver, rows = archiveTheDemo(site, db)
    for line in rows:
        assert ROW.match(line), rows
    assert len({ROW.match(line).group("value") for line in rows}) >= 2, rows  # it moves

    table = history(site, db, "TEMP", "--since", "1h")
    assert table.returncode == 0 and table.stderr == "", table
    found = csv.DictReader(io.StringIO(history(site, db, "TEMP", "--format", "csv").stdout))
    found = list(found)
    assert len(found) >= len(rows) and {r["keyword"] for r in found} == {"TEMP"}
    assert all(r["kind"] == "value" and r["service"] == "demo" for r in found)
    rows = json.loads(history(site, db, "TEMP", "--format", "json").stdout)
    assert isinstance(rows[0]["value"], float) and rows[0]["time"].startswith("20")
    assert [r["sequence"] for r in rows] == sorted(r["sequence"] for r in rows)

    # A value written now is in the history, and --at gives it.
    assert cauldron("modify", "-c", site.config, "-s", "demo", "MODE=ON",
                    env=site.env).returncode == 0
    poll(lambda: history(site, db, "MODE").stdout, lambda out: out.rstrip().endswith("ON"),
         what="MODE=ON archived")
    at = history(site, db, "MODE", "--at", "now")
    assert at.returncode == 0 and at.stdout.rstrip().endswith("MODE  ON"), at
    # Nothing from before the archiver started: one line naming what is missing.
    before = history(site, db, "MODE", "--at", "2000-01-01T00:00")
    assert before.returncode == 1 and before.stdout == "", before
    assert before.stderr.count("\n") == 1 and "MODE" in before.stderr, before

    archiver.signal(signal.SIGTERM)
    assert archiver.wait(DEADLINE) in (0, -signal.SIGTERM), archiver.text()
    assert "Traceback" not in archiver.text(), archiver.text()
    if db is None:
        made = site.tmp / "state" / "cauldron" / "archive.sqlite"
        assert made.is_file() and (made.parent.stat().st_mode & 0o777) == 0o700


def test_historyWithoutAnArchive(site):
    """Nothing archived yet: one line saying what to start, no empty file made."""
    result = history(site, None, "TEMP")
    assert result.returncode == 1 and result.stdout == "", result
    assert result.stderr.startswith("cauldron: no archive at sqlite:///"), result
    assert "start cauldron-archiver" in result.stderr and result.stderr.count("\n") == 1
    assert not (site.tmp / "state").exists()


def test_badInputIsOneLine(site):
    """A bad URL, duration or time: one line, no traceback, nothing started."""
    bad = cauldron("history", "-c", site.config, "--db", "mysql://x/y", "-s", "demo", "TEMP")
    assert bad.returncode == 1 and "mysql://x/y" in bad.stderr, bad
    assert bad.stderr.count("\n") == 1, bad
    since = cauldron("history", "-c", site.config, "-s", "demo", "TEMP", "--since", "soon")
    assert since.returncode == 2 and "'soon' is not a time" in since.stderr, since
    archiver = start(site, [*TWISTD, "-n", "--pidfile=", "cauldron-archiver", "-c", site.config,
                            "--db", "sqlite:///%s" % (site.tmp / "no" / "such" / "x.db"),
                            "--keep", "forever"])
    assert archiver.wait(DEADLINE) == 1
    assert archiver.text().startswith("twistd cauldron-archiver: "), archiver.text()
    assert archiver.text().count("\n") == 1, archiver.text()  # one line, no usage dump
    assert "forever" in archiver.text() or "no/such" in archiver.text(), archiver.text()
