"""``cauldron keys generate`` and ``cauldron keys list``, run as a user would (subprocesses)."""

import os
import stat
import subprocess
import sys

import pytest
import zmq.auth
from processes import DEADLINE, cauldron, environment, resetSigint

from cauldron.config import Config
from cauldron.transport import Curve


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def fails(result, *fragments):
    """Exit 1, nothing on stdout, one ``cauldron: ...`` line on stderr holding the fragments."""
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("cauldron: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], result.stderr


def generate(name, directory, **kwargs):
    return cauldron("keys", "generate", name, "--dir", str(directory), **kwargs)


@pytest.fixture
def root(tmp_path):
    os.chmod(tmp_path, 0o700)
    return tmp_path


def test_generateWritesACertificatePair(root):
    directory = root / "keys" / "deep"
    result = generate("ops", directory)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    public, secret = directory / "ops.key", directory / "ops.key_secret"
    assert mode(directory) == 0o700
    assert mode(secret) == 0o600
    assert not mode(public) & 0o022
    publicKey, secretKey = zmq.auth.load_certificate(secret)
    assert zmq.auth.load_certificate(public) == (publicKey, None)
    assert zmq.curve_public(secretKey) == publicKey
    lines = result.stdout.splitlines()
    assert lines[0] == f"ops  {publicKey.decode()}"
    assert str(public) in lines[1] and str(secret) in lines[2]
    assert secretKey.decode() not in result.stdout
    assert sorted(os.listdir(directory)) == ["ops.key", "ops.key_secret"]  # no scratch left


def test_secretPrivateEvenWithUmaskZero(root):
    """The secret key is never created open to others, whatever the umask."""
    def preexec():
        resetSigint()
        os.umask(0)

    result = subprocess.run(
        [sys.executable, "-m", "cauldron", "keys", "generate", "ops", "--dir", str(root / "k")],
        env=environment(), stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=DEADLINE, preexec_fn=preexec,
    )
    assert result.returncode == 0, result.stderr
    assert mode(root / "k") == 0o700
    assert mode(root / "k" / "ops.key_secret") == 0o600


def test_generatedKeysServeSecureMode(root):
    """A generated pair is what [security] secret-key wants, and its .key what key dirs want."""
    assert generate("router", root / "private").returncode == 0
    assert generate("alice", root / "private").returncode == 0
    clients = root / "clients"
    clients.mkdir(mode=0o755)
    os.link(root / "private" / "alice.key", clients / "alice.key")
    curve = Curve.fromConfig(Config.fromMapping({"security": {
        "curve": "yes", "secret-key": str(root / "private" / "router.key_secret"),
        "client-keys": str(clients)}}))
    alicePublic, _ = zmq.auth.load_certificate(clients / "alice.key")
    assert curve.name == "router"
    assert curve.allowed == {alicePublic: "alice"}


def test_generateNeverOverwrites(root):
    assert generate("ops", root).returncode == 0
    before = {name: (root / name).read_bytes() for name in ("ops.key", "ops.key_secret")}
    fails(generate("ops", root), "ops.key", "exists already")
    (root / "ops.key").unlink()
    fails(generate("ops", root), "ops.key_secret", "exists already")
    assert not (root / "ops.key").exists()  # nothing half-written
    assert (root / "ops.key_secret").read_bytes() == before["ops.key_secret"]


@pytest.mark.parametrize("name", ["../escape", ".hidden", "a b", "-rf"])
def test_generateRefusesBadNames(root, name):
    fails(cauldron("keys", "generate", "--dir", str(root), "--", name), "not a key name")
    assert os.listdir(root) == []


def test_generateRefusesAWritableDirectory(root):
    shared = root / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    fails(generate("ops", shared), str(shared), "writable by others")
    assert os.listdir(shared) == []


def test_listSortedWithSecrets(root):
    for name in ("zed", "alice", "ops"):
        assert generate(name, root).returncode == 0
    (root / "zed.key_secret").unlink()
    (root / "README").write_text("not a key\n")
    result = cauldron("keys", "list", str(root))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["alice", "ops", "zed"]
    for line in lines:
        name, key, *rest = line.split()
        assert zmq.auth.load_certificate(root / f"{name}.key")[0].decode() == key
        assert rest == ([] if name == "zed" else ["secret"])


def test_listSecretOnly(root):
    assert generate("solo", root).returncode == 0
    (root / "solo.key").unlink()
    result = cauldron("keys", "list", str(root))
    public, _ = zmq.auth.load_certificate(root / "solo.key_secret")
    assert result.stdout.split() == ["solo", public.decode(), "secret"]


def test_listErrors(root):
    fails(cauldron("keys", "list", str(root / "missing")), "missing", "no such key directory")
    assert generate("ops", root).returncode == 0
    os.chmod(root / "ops.key_secret", 0o644)
    fails(cauldron("keys", "list", str(root)), "ops.key_secret", "readable by others",
          "chmod 600")
    os.chmod(root / "ops.key_secret", 0o600)
    (root / "bad.key").write_text("garbage\n")
    fails(cauldron("keys", "list", str(root)), "bad.key", "malformed certificate")


def test_keysUsage():
    result = cauldron("keys")
    assert result.returncode == 2
    assert "ACTION" in result.stderr
