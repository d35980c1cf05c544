"""Throwaway PostgreSQL servers for tests, from the server binaries Debian's package installs.

A :class:`PostgresServer` runs ``initdb`` into a temporary directory and
starts ``postgres`` on it, listening on 127.0.0.1 at a free port and on a
unix socket in that directory, with a password-protected superuser (so the
URLs carry a password, as real ones do).  It can be stopped and started
again on the same data directory and port (a database outage), and
:meth:`PostgresServer.destroy` stops it and removes everything.  Nothing is
downloaded: without the binaries (``apt-get install postgresql``) or the
driver, tests skip with a one-line reason.

Run as root, the server runs as the ``postgres`` user the Debian package
makes (``nobody`` without it), since PostgreSQL refuses to run as root.  The
server dies with the process that started it (a parent-death signal), so a
killed test run leaves no server behind.

For pytest, import all three fixtures into the test module (each may
need the others)::

    from pgserver import postgresServer, postgresUrl, privatePostgresServer  # noqa: F401

* ``postgresServer``: the run's shared server (started once, stopped at
  exit); do not stop it;
* ``postgresUrl``: the URL of a fresh database on it, dropped after the test;
* ``privatePostgresServer``: a server of the test's own, which the test may
  :meth:`~PostgresServer.stop` and :meth:`~PostgresServer.start`; its
  :meth:`~PostgresServer.url` stays the same across restarts.

For trial TestCases: :func:`freshDatabase` and :func:`privateServer`, which
register their own cleanup.  Both skip (``unittest.SkipTest``) where no
server can be had.
"""

import atexit
import contextlib
import ctypes
import glob
import itertools
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest

import pytest

__all__ = [
    "PostgresServer",
    "ServerFailed",
    "unavailable",
    "sharedServer",
    "freshDatabase",
    "privateServer",
    "postgresServer",
    "postgresUrl",
    "privatePostgresServer",
    "MISSING_BINARIES",
]

MISSING_BINARIES = "PostgreSQL server binaries not found: apt-get install postgresql"
#: seconds a server may take to start or stop, or a command to run
DEADLINE = 60.0
#: settings for test servers: no fsync (a server that crashes or is stopped at once keeps
#: every committed transaction; only the machine crashing would lose some)
FAST_SETTINGS = {"fsync": "off", "full_page_writes": "off"}
_PR_SET_PDEATHSIG = 1
try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):
    _prctl = None


class ServerFailed(Exception):
    """A server could not be made, started or stopped (the message quotes its log)."""


def binaries():
    """The directory holding ``initdb`` and ``postgres`` (the newest version), or None."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda path: [int(n) for n in re.findall(r"\d+", path)], reverse=True,
    )
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(os.path.dirname(os.path.realpath(initdb)))
    for directory in candidates:
        if all(os.access(os.path.join(directory, name), os.X_OK)
               for name in ("initdb", "postgres")):
            return directory
    return None


def _runAs():
    """The ``pwd`` entry of the user to run servers as (None: ourselves, not root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            pass
    raise ServerFailed("running as root, and no 'postgres' user to run PostgreSQL as")


def unavailable():
    """Why no test server can be had here (one line), or None if one can."""
    if binaries() is None:
        return MISSING_BINARIES
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg not installed: pip install 'cauldron[postgres]'"
    try:
        _runAs()
    except ServerFailed as e:
        return str(e)
    return None


def _dieWithParent():
    """In the server process (a ``preexec_fn``): shut down at once if the test run dies.

    SIGQUIT is PostgreSQL's immediate shutdown.  Runs after the switch to the
    server's user, which would clear the setting.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGQUIT, 0, 0, 0)


def _freePort():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """One throwaway PostgreSQL server: its own data directory, port and socket.

    :param settings: server settings (``-c name=value``); by default
        :data:`FAST_SETTINGS` (no fsync: a test server keeps nothing).
    """

    user = "cauldron"
    password = "pw-for-tests"
    _names = itertools.count(1)

    def __init__(self, settings=None):
        self.bin = binaries()
        if self.bin is None:
            raise ServerFailed(MISSING_BINARIES)
        self.settings = dict(FAST_SETTINGS if settings is None else settings)
        self.root = None
        self.port = None
        self._process = None
        self._log = None

    # -- paths and URLs

    @property
    def data(self):
        return os.path.join(self.root, "data")

    @property
    def socketDirectory(self):
        return self.root

    @property
    def logPath(self):
        return os.path.join(self.root, "server.log")

    def url(self, database="postgres"):
        """A TCP URL with user and password for ``database``."""
        return "postgresql://%s:%s@127.0.0.1:%d/%s" % (self.user, self.password, self.port,
                                                      database)

    def socketUrl(self, database="postgres"):
        """A URL reaching ``database`` through the unix socket (libpq's ``?host=`` form)."""
        return "postgresql:///%s?host=%s&port=%d&user=%s" % (
            database, self.socketDirectory, self.port, self.user)

    @property
    def running(self):
        return self._process is not None and self._process.poll() is None

    # -- life

    def _command(self, argv, **kwargs):
        """Run a server binary as the server's user; its output, ServerFailed if it fails."""
        account = _runAs()
        if account is not None:
            kwargs.update(user=account.pw_uid, group=account.pw_gid, extra_groups=[])
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        return subprocess.Popen(
            [os.path.join(self.bin, argv[0]), *argv[1:]], cwd=self.root, env=env,
            stdin=subprocess.DEVNULL, **kwargs)

    def _initdb(self):
        self.root = tempfile.mkdtemp(prefix="cauldron-pg-")
        account = _runAs()
        if account is not None:
            os.chown(self.root, account.pw_uid, account.pw_gid)
        passwordFile = os.path.join(self.root, "password")
        with open(passwordFile, "w") as f:
            f.write(self.password + "\n")
        if account is not None:
            os.chown(passwordFile, account.pw_uid, account.pw_gid)
        process = self._command(
            ["initdb", "-D", self.data, "-U", self.user, "--pwfile", passwordFile,
             "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-locale",
             "--no-sync"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            output, _ = process.communicate(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
        os.unlink(passwordFile)
        if process.returncode != 0:
            raise ServerFailed("initdb failed: %s" % (output.strip()[-2000:],))

    def start(self):
        """Start the server (the first time: make its data directory and pick a port)."""
        if self.running:
            return self
        first = self.root is None
        if first:
            self._initdb()
        for attempt in range(5 if first else 1):
            if first:
                self.port = _freePort()
            try:
                self._startOnce()
                return self
            except ServerFailed as e:
                if "could not bind" not in str(e) and "already in use" not in str(e):
                    raise
                if attempt == 4 or not first:
                    raise
        return self

    def _startOnce(self):
        argv = ["postgres", "-D", self.data, "-p", str(self.port), "-h", "127.0.0.1",
                "-k", self.socketDirectory]
        for name, value in self.settings.items():
            argv += ["-c", "%s=%s" % (name, value)]
        self._log = open(self.logPath, "ab")
        self._process = self._command(argv, stdout=self._log, stderr=subprocess.STDOUT,
                                      preexec_fn=_dieWithParent)
        pidFile = os.path.join(self.data, "postmaster.pid")
        deadline = time.monotonic() + DEADLINE
        while True:
            # postmaster.pid's eighth line says "ready" once connections are accepted
            with contextlib.suppress(OSError):
                with open(pidFile) as f:
                    lines = f.read().splitlines()
                if len(lines) >= 8 and lines[0].strip() == str(self._process.pid) \
                        and lines[7].strip() == "ready":
                    return
            if self._process.poll() is not None:
                self._closeLog()
                self._process = None
                raise ServerFailed("postgres exited at start: %s" % (self._logTail(),))
            if time.monotonic() > deadline:
                self.stop("immediate")
                raise ServerFailed("postgres not ready within %d s: %s"
                                   % (DEADLINE, self._logTail()))
            time.sleep(0.01)  # polling a file, under a deadline

    def stop(self, mode="fast"):
        """Stop the server: ``fast`` (sessions ended, clean) or ``immediate`` (as if it crashed).

        The data directory stays; :meth:`start` serves it again on the same port.
        """
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGQUIT if mode == "immediate" else signal.SIGINT)
            try:
                process.wait(timeout=DEADLINE)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._closeLog()

    def destroy(self):
        """Stop the server at once and remove its directory."""
        self.stop("immediate")
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def _closeLog(self):
        if self._log is not None:
            self._log.close()
            self._log = None

    def _logTail(self):
        try:
            with open(self.logPath, errors="replace") as f:
                return " | ".join(f.read().strip().splitlines()[-5:])
        except OSError:
            return "(no log)"

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.destroy()

    # -- databases

    def _admin(self):
        import psycopg

        return psycopg.connect(host=self.socketDirectory, port=self.port, user=self.user,
                               dbname="postgres", autocommit=True, connect_timeout=10)

    def createDatabase(self, name=None):
        """Create a database (named uniquely unless ``name`` is given); its URL."""
        if name is None:
            name = "test_%d_%d" % (os.getpid(), next(self._names))
        with self._admin() as connection:
            connection.execute('CREATE DATABASE "%s"' % (name,))
        return self.url(name)

    def dropDatabase(self, name):
        """Drop a database, ending its sessions (nothing if the server is not running)."""
        if not self.running:
            return
        with self._admin() as connection:
            connection.execute('DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % (name,))


def databaseName(url):
    """The database a URL made by :meth:`PostgresServer.url` names."""
    return url.rsplit("/", 1)[1].split("?")[0]


# -- one server for the whole run ---------------------------------------------------

_shared = None


def sharedServer():
    """The run's shared server, started on first use and destroyed at exit.

    :raises unittest.SkipTest: where no server can be had (one-line reason).
    """
    global _shared
    if _shared is None:
        reason = unavailable()
        if reason:
            raise unittest.SkipTest(reason)
        server = PostgresServer()
        try:
            server.start()
        except BaseException:
            server.destroy()
            raise
        atexit.register(server.destroy)
        _shared = server
    elif not _shared.running:
        raise ServerFailed("the shared PostgreSQL server was stopped; "
                           "use a private server to stop one")
    return _shared


def freshDatabase(testCase):
    """For a trial TestCase: the URL of a new database on the shared server, dropped after."""
    server = sharedServer()
    url = server.createDatabase()
    testCase.addCleanup(server.dropDatabase, databaseName(url))
    return url


def privateServer(testCase, settings=None):
    """For a trial TestCase: a started server of its own (destroyed after), free to stop."""
    reason = unavailable()
    if reason:
        raise unittest.SkipTest(reason)
    server = PostgresServer(settings)
    testCase.addCleanup(server.destroy)
    server.start()
    return server


# -- pytest fixtures ---------------------------------------------------------------


@pytest.fixture(scope="session")
def postgresServer():
    """The run's shared PostgreSQL server (skips where none can be had); never stop it."""
    return sharedServer()


@pytest.fixture
def postgresUrl(postgresServer):
    """The URL of a fresh database on the shared server, dropped after the test."""
    url = postgresServer.createDatabase()
    yield url
    postgresServer.dropDatabase(databaseName(url))


@pytest.fixture
def privatePostgresServer():
    """A started server of the test's own, which it may stop and start; destroyed after."""
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.destroy()
