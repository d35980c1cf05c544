"""The core layer must import without twisted or zmq (see DESIGN.md, layers)."""

import subprocess
import sys

CODE = (
    "import cauldron.config, cauldron.keywords, cauldron.protocol, sys; "
    "print(sorted(m for m in sys.modules if m.split('.')[0] in ('twisted','zmq','txzmq')))"
)


def test_coreImportsNoTwistedNorZmq():
    result = subprocess.run(
        [sys.executable, "-c", CODE], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
