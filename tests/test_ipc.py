"""``protocol = ipc`` across processes started from different working directories.

ZeroMQ names an ipc socket by a file path.  cauldron puts every such file in
one absolute folder (``[zmq] ipc-dir``), so a router, a dispatcher and a
``cauldron show`` started from three different folders find each other, and
the files are gone once the processes stop cleanly.
"""

import os
import re
import signal
import stat
import time

from processes import DEADLINE, TWISTD, Process, cauldron

FOREGROUND = [*TWISTD, "-n", "--pidfile="]
LISTENING = re.compile(r"router listening at (?P<address>ipc://[^\s,]+)")
READY = re.compile(
    r"cauldron-dispatcher: serving 'demo': dispatch (?P<dispatch>ipc://[^\s,]+), "
    r"broadcast (?P<broadcast>ipc://[^\s,]+)"
)
CONFIG = """\
[zmq]
protocol = ipc
host = 127.0.0.1
ipc-dir = sockets
[zmq-router]
protocol = ipc
host = 127.0.0.1
port = 27555
first-port = 6600
last-port = 6640
allow-spawn = no
"""


def folders(tmp_path, *names):
    made = []
    for name in names:
        folder = tmp_path / name
        folder.mkdir()
        made.append(str(folder))
    return made


def stop(process):
    """SIGTERM: a clean stop (twistd passes the signal on as its exit status)."""
    process.signal(signal.SIGTERM)
    return process.wait() in (0, -signal.SIGTERM)


def test_ipcFromThreeFolders(tmp_path):
    """Router, dispatcher and CLI in three folders meet in ipc-dir, which is left empty."""
    routerDir, dispatcherDir, clientDir, configDir = folders(
        tmp_path, "router", "dispatcher", "client", "conf")
    config = os.path.join(configDir, "cauldron.ini")
    with open(config, "w") as f:
        f.write(CONFIG)
    keywords = os.path.join(configDir, "demo.toml")
    with open(keywords, "w") as f:
        f.write('[TEMP]\ntype = "double"\ninitial = 21.5\n')
    sockets = os.path.join(configDir, "sockets")  # ipc-dir is relative to the config file

    router = Process([*FOREGROUND, "cauldron-router", "-c", config], cwd=routerDir)
    dispatcher = None
    try:
        listening = router.waitForLine(LISTENING)
        assert listening.group("address") == "ipc://%s/127.0.0.1-27555" % sockets
        assert stat.S_IMODE(os.stat(sockets).st_mode) == 0o700
        dispatcher = Process(
            [*FOREGROUND, "cauldron-dispatcher", "-c", config, "-s", "demo", "-k", keywords,
             "--heartbeat", "0.2"],
            cwd=dispatcherDir,
        )
        ready = dispatcher.waitForLine(READY)
        assert ready.group("dispatch").startswith("ipc://%s/127.0.0.1-66" % sockets)

        end = time.monotonic() + DEADLINE
        while True:
            result = cauldron("show", "-c", config, "-s", "demo", "TEMP", "--timeout", "2",
                              cwd=clientDir)
            if result.returncode == 0 or time.monotonic() > end:
                break
        assert (result.returncode, result.stdout, result.stderr) == (0, "TEMP = 21.5\n", ""), \
            (result, router.text(), dispatcher.text())
        assert len(os.listdir(sockets)) == 3, os.listdir(sockets)  # router, dispatch, broadcast

        assert stop(dispatcher), dispatcher.text()
        assert stop(router), router.text()
        assert os.listdir(sockets) == []
        for folder in (routerDir, dispatcherDir, clientDir):
            assert os.listdir(folder) == [], folder  # no socket (nor pid) file left behind
    finally:
        router.kill()
        if dispatcher is not None:
            dispatcher.kill()
