"""Secure mode (issue 10): CURVE sockets admit only allowed keys, and key files fail closed.

Black-box on real sockets: a secure Transport serves a ROUTER (echoing, and
recording who spoke) and an XPUB on 127.0.0.1; peers are other secure
Transports (allowed or not) or raw pyzmq sockets (plain text, wrong server
key) or plain TCP sockets sending junk.  A refusal is shown by waiting for
the server to count it and for an allowed peer to get through afterwards,
never by sleeping; then nothing from the refused peer may have arrived.

Keys are real certificate files made by ``generateCertificate`` and read
back through ``Curve.fromConfig``, as a process reads them.
"""

import os
import random
import shutil
import socket as stdsocket
import stat
import tempfile

import pytest
import zmq
from helpers import HOST, eventually
from twisted.internet import defer, task
from twisted.internet import reactor as globalReactor
from twisted.trial import unittest

from cauldron.config import Config
from cauldron.errors import ConfigError
from cauldron.transport import Curve, Transport, bindAddress, portOf
from cauldron.transport.curve import (
    ZAP_ENDPOINT,
    generateCertificate,
    listCertificates,
    readCertificate,
)
from cauldron.transport.sockets import ZAP_DOMAIN

#: long enough for libzmq's handshake timeout, should the ZAP socket linger
REFUSAL_DEADLINE = 15.0


def securityConfig(secret, routerKey="", clients="", dispatchers="", curve="yes"):
    return Config.fromMapping({"security": {
        "curve": curve, "secret-key": secret, "router-key": routerKey,
        "client-keys": clients, "dispatcher-keys": dispatchers,
    }}, source="<test>")


class KeyStore:
    """Certificates in a private directory; public ones copied into key directories."""

    def __init__(self, root):
        self.root = root
        self.private = os.path.join(root, "private")
        self.clients = self.directory("clients")
        self.dispatchers = self.directory("dispatchers")

    def directory(self, name, mode=0o755):
        path = os.path.join(self.root, name)
        os.mkdir(path)
        os.chmod(path, mode)
        return path

    def make(self, name, into=None):
        """The secret key file of a new key pair, its public key copied ``into`` a directory."""
        public, secret = generateCertificate(self.private, name)
        if into is not None:
            shutil.copy(public, os.path.join(into, name + ".key"))
        return secret

    def public(self, name):
        return os.path.join(self.private, name + ".key")

    def curve(self, name, **keys):
        return Curve.fromConfig(securityConfig(os.path.join(self.private, name + ".key_secret"),
                                               **keys))


def rawContext(testCase):
    """A pyzmq context of the test's own, terminated (after its sockets) at cleanup."""
    context = zmq.Context()
    testCase.addCleanup(context.term)
    return context


def rawSocket(testCase, context, kind, **curve):
    socket = context.socket(kind)
    socket.linger = 0
    for option, value in curve.items():
        socket.set(getattr(zmq, option.upper()), value)
    testCase.addCleanup(socket.close, 0)
    return socket


class SecureTransportTests(unittest.TestCase):
    """A secure server Transport, and peers of every kind."""

    def setUp(self):
        root = tempfile.mkdtemp(prefix="cauldron-curve-")
        self.addCleanup(shutil.rmtree, root)
        self.keys = KeyStore(root)
        self.keys.make("server")
        self.keys.make("alice", into=self.keys.clients)
        self.keys.make("mallory")  # a valid key pair nobody allowed
        self.keys.make("demo", into=self.keys.dispatchers)
        self.serverCurve = self.keys.curve(
            "server", clients=self.keys.clients, dispatchers=self.keys.dispatchers)
        self.server = self.transport(self.serverCurve)
        self.received = []  # (userId, frames) of every message the ROUTER got
        self.router = self.server.router(self._echo)
        self.routerAddress = self.router.bind(bindAddress("tcp", HOST, 0))
        self.subscribed = []
        self.publisher = self.server.publisher(onSubscribe=self.subscribed.append)
        self.publisherAddress = self.publisher.bind(bindAddress("tcp", HOST, 0))

    def _echo(self, peer, frames):
        self.received.append((peer.userId, frames))
        self.router.sendTo(peer, frames)

    def transport(self, curve=None):
        transport = Transport(globalReactor, curve)
        self.addCleanup(transport.shutdown)
        return transport

    def client(self, name="alice"):
        """A secure Transport with ``name``'s key pair, knowing the server's public key."""
        return self.transport(self.keys.curve(name, routerKey=self.keys.public("server")))

    @property
    def serverKey(self):
        return self.serverCurve.publicKey

    @defer.inlineCallbacks
    def roundTrip(self, transport, serverKey=None, payload=b"ping"):
        """An allowed client's request and its echo: the server still serves."""
        replies = []
        dealer = transport.dealer(replies.append, serverKey=serverKey or self.serverKey)
        dealer.connect(self.routerAddress)
        dealer.send([payload])
        yield eventually(lambda: replies)
        self.assertEqual(replies, [[payload]])

    def fromOthers(self):
        return [(user, frames) for user, frames in self.received if user != "alice"]

    # -- (1) plain text

    @defer.inlineCallbacks
    def test_plainPeerGetsNothingThrough(self):
        """A plain-text DEALER fails its handshake (counted), reaches no one, asks ZAP nothing."""
        dealer = rawSocket(self, rawContext(self), zmq.DEALER)
        dealer.connect(self.routerAddress)
        for i in range(5):
            dealer.send(b"plain %d" % i)
        yield eventually(lambda: self.router.handshakeFailures >= 1)
        yield eventually(lambda: self.server.refusals.counts["failed handshakes"] >= 1)
        yield self.roundTrip(self.client())
        self.assertEqual(self.fromOthers(), [])
        self.assertEqual(self.server.authenticator.refused, 0)  # it never got that far
        self.assertFalse(dealer.poll(0))

    @defer.inlineCallbacks
    def test_plainSubscriberGetsNothing(self):
        """A NULL-mechanism SUB never subscribes and never hears a thing."""
        plain = rawSocket(self, rawContext(self), zmq.SUB)
        plain.subscribe(b"")
        plain.connect(self.publisherAddress)
        got = yield self.publishUntilHeard(self.subscriber("alice"), count=20)
        self.assertGreaterEqual(got, 20)
        self.assertFalse(plain.poll(0))
        self.assertEqual(self.subscribed, [b"K"])  # alice's only

    # -- (2) wrong server key

    @defer.inlineCallbacks
    def test_wrongServerKeyGetsNothingThrough(self):
        """A client expecting another server's key: the handshake fails, nothing arrives."""
        otherPublic, _ = zmq.curve_keypair()
        alice = self.keys.curve("alice")
        raw = rawSocket(self, rawContext(self), zmq.DEALER, curve_serverkey=otherPublic,
                        curve_publickey=alice.publicKey, curve_secretkey=alice.secretKey)
        raw.connect(self.routerAddress)
        raw.send(b"raw, wrong server key")
        replies = []
        dealer = self.client().dealer(replies.append, serverKey=otherPublic)
        dealer.connect(self.routerAddress)
        dealer.send([b"cauldron, wrong server key"])
        yield eventually(lambda: self.router.handshakeFailures >= 2)
        yield self.roundTrip(self.client())
        self.assertEqual(self.received, [("alice", [b"ping"])])
        self.assertEqual(replies, [])
        self.assertFalse(raw.poll(0))

    # -- (3) a key not allowed

    @defer.inlineCallbacks
    def test_keyNotAllowedGetsNothingThrough(self):
        """A valid key nobody allowed is refused by ZAP (counted); an allowed key still works."""
        replies = []
        dealer = self.client("mallory").dealer(replies.append, serverKey=self.serverKey)
        dealer.connect(self.routerAddress)
        dealer.send([b"let me in"])
        yield eventually(lambda: self.server.authenticator.refused >= 1)
        self.assertGreaterEqual(self.server.refusals.counts["refused keys"], 1)
        yield self.roundTrip(self.client())
        self.assertEqual(self.fromOthers(), [])
        self.assertEqual(replies, [])
        self.assertEqual(self.server.authenticator.admitted, 1)

    # -- (4) no authenticator

    @defer.inlineCallbacks
    def test_noAuthenticatorAdmitsNoOne(self):
        """With the ZAP handler stopped, even an allowed key gets nothing through (fail closed)."""
        self.server.authenticator.stop()
        replies = []
        dealer = self.client().dealer(replies.append, serverKey=self.serverKey)
        dealer.connect(self.routerAddress)
        dealer.send([b"anyone there?"])
        yield eventually(lambda: self.router.handshakeFailures >= 1, timeout=REFUSAL_DEADLINE)
        self.assertEqual(self.received, [])
        self.assertEqual(replies, [])

    # -- (5) junk before the handshake

    @defer.inlineCallbacks
    def test_junkFloodLeavesServerServing(self):
        """Raw bytes and random ZMTP greetings from many connections; allowed clients are served."""
        rng = random.Random(10)
        junk = []
        for address in (self.routerAddress, self.publisherAddress):
            for i in range(60):
                junk.append(self.sendJunk(address, _junk(rng, i % 3)))
            yield task.deferLater(globalReactor, 0, lambda: None)
        yield self.roundTrip(self.client())
        got = yield self.publishUntilHeard(self.subscriber("alice"), count=1)
        self.assertGreaterEqual(got, 1)
        self.assertEqual(self.fromOthers(), [])
        self.assertEqual(self.server.authenticator.admitted, 2)  # alice's two sockets only

    def sendJunk(self, address, data):
        connection = stdsocket.create_connection((HOST, portOf(address)), timeout=2)
        self.addCleanup(connection.close)
        try:
            connection.sendall(data)
        except OSError:
            pass  # libzmq may hang up at once: that is the point
        return connection

    # -- (6) who it was

    @defer.inlineCallbacks
    def test_peerUserIdIsKeyName(self):
        """A ROUTER message from an allowed client carries the name of its key."""
        yield self.roundTrip(self.client())
        self.assertEqual(self.received, [("alice", [b"ping"])])

    @defer.inlineCallbacks
    def test_dispatcherKeysAreAllowedToo(self):
        """Keys in dispatcher-keys are admitted, under their names."""
        yield self.roundTrip(self.transport(self.keys.curve("demo")), serverKey=self.serverKey)
        self.assertEqual(self.received, [("demo", [b"ping"])])

    # -- (7) the publisher

    @defer.inlineCallbacks
    def test_publisherDeliversOnlyToAllowedSubscribers(self):
        """An allowed SUB hears updates; a SUB with an unknown key hears nothing (refused)."""
        mallory = []
        stranger = self.client("mallory").subscriber(mallory.append, serverKey=self.serverKey)
        stranger.subscribe(b"K")
        stranger.connect(self.publisherAddress)
        yield eventually(lambda: self.server.authenticator.refused >= 1)
        got = yield self.publishUntilHeard(self.subscriber("alice"), count=20)
        self.assertGreaterEqual(got, 20)
        self.assertEqual(mallory, [])
        self.assertEqual(self.subscribed, [b"K"])

    def subscriber(self, name):
        heard = []
        sub = self.client(name).subscriber(heard.append, serverKey=self.serverKey)
        sub.subscribe(b"K")
        sub.connect(self.publisherAddress)
        return heard

    @defer.inlineCallbacks
    def publishUntilHeard(self, heard, count):
        """Publish every 10 ms until ``heard`` holds ``count`` messages; how many it holds."""
        def publish():
            self.publisher.send([b"K update"])

        loop = task.LoopingCall(publish)
        loop.clock = globalReactor
        loop.start(0.01)
        try:
            yield eventually(lambda: len(heard) >= count)
        finally:
            loop.stop()
        return len(heard)

    # -- options and fail-closed construction

    def test_serverAndClientOptions(self):
        """Servers are CURVE servers enforcing the ZAP domain; clients name their server."""
        self.assertEqual(self.router.socket.get(zmq.MECHANISM), zmq.CURVE)
        for server in (self.router, self.publisher):
            socket = server.socket
            self.assertEqual(socket.get(zmq.CURVE_SERVER), 1)
            self.assertEqual(socket.get(zmq.ZAP_DOMAIN), ZAP_DOMAIN)
            self.assertEqual(socket.get(zmq.ZAP_ENFORCE_DOMAIN), 1)
        dealer = self.client().dealer(lambda frames: None, serverKey=self.serverKey)
        dealer.connect(self.routerAddress)
        self.assertEqual(dealer.socket.get(zmq.MECHANISM), zmq.CURVE)
        self.assertEqual(dealer.socket.get(zmq.CURVE_SERVER), 0)

    def test_inprocHelpersArePlain(self):
        """The ZAP socket and the handshake monitor are inproc and never CURVE."""
        self.assertEqual(self.server.authenticator.socket.get(zmq.MECHANISM), zmq.NULL)
        self.assertEqual(self.router._monitor.socket.get(zmq.MECHANISM), zmq.NULL)
        self.assertEqual(self.server.authenticator.socket.get(zmq.LAST_ENDPOINT).decode(),
                         ZAP_ENDPOINT)

    def test_clientWithoutServerKeyRefused(self):
        """In secure mode a DEALER or SUB without (or with a bad) server key is not made."""
        transport = self.client()
        for make in (transport.dealer, transport.subscriber):
            self.assertRaises(ConfigError, make, lambda frames: None)
            self.assertRaises(ConfigError, make, lambda frames: None, serverKey=b"short")
        publisher = transport.publisher()
        self.assertRaises(ConfigError, publisher.connect, self.routerAddress)

    def test_plainTransportUnchanged(self):
        """Without a Curve: no authenticator, NULL sockets, and a server key is ignored."""
        plain = self.transport()
        self.assertIsNone(plain.authenticator)
        self.assertFalse(plain.secure)
        dealer = plain.dealer(lambda frames: None, serverKey=self.serverKey)
        router = plain.router(lambda peer, frames: None)
        router.bind(bindAddress("tcp", HOST, 0))
        for connection in (dealer, router):
            self.assertEqual(connection.socket.get(zmq.MECHANISM), zmq.NULL)
            self.assertFalse(connection.secure)
        self.assertIsNone(router._monitor)


def _junk(rng, kind):
    """Bytes a hostile peer might send first: noise, or a ZMTP greeting and noise."""
    if kind == 0:
        return rng.randbytes(rng.randint(1, 4096))
    mechanism = b"CURVE" if kind == 1 else rng.choice([b"NULL", b"PLAIN", rng.randbytes(20)])
    greeting = (b"\xff" + bytes(8) + b"\x7f" + bytes([3, rng.randint(0, 255)])
                + mechanism.ljust(20, b"\0")[:20] + bytes([rng.randint(0, 1)]) + bytes(31))
    command = b"\x04" + bytes([200]) + b"\x05HELLO" + rng.randbytes(194)
    return greeting + (command if kind == 1 else rng.randbytes(rng.randint(0, 1024)))


# -- key files (no sockets) --------------------------------------------------------------


@pytest.fixture
def keys(tmp_path):
    os.chmod(tmp_path, 0o700)
    store = KeyStore(str(tmp_path))
    store.make("server")
    store.make("alice", into=store.clients)
    store.make("demo", into=store.dispatchers)
    return store


def load(keys, secret="server", **overrides):
    settings = dict(secret=os.path.join(keys.private, secret + ".key_secret"),
                    routerKey=keys.public("server"), clients=keys.clients,
                    dispatchers=keys.dispatchers)
    settings.update(overrides)
    return Curve.fromConfig(securityConfig(**settings))


def problem(keys, **overrides):
    """The one-line message of the ConfigError loading raises."""
    with pytest.raises(ConfigError) as info:
        load(keys, **overrides)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_curveOffMeansNone(keys):
    assert Curve.fromConfig(securityConfig("", curve="no")) is None
    assert Curve.fromConfig(Config.fromMapping({})) is None


def test_loadsEverything(keys):
    curve = load(keys)
    assert curve.name == "server"
    assert (curve.publicKey, curve.secretKey) == readCertificate(
        os.path.join(keys.private, "server.key_secret"), secret=True)
    assert curve.routerKey() == readCertificate(keys.public("server"))[0]
    demo = readCertificate(keys.public("demo"))[0]
    alice = readCertificate(keys.public("alice"))[0]
    assert curve.dispatcherKey("demo") == curve.dispatcherKey("DEMO") == demo
    assert curve.dispatcherKey("alice") is None
    assert curve.allowed == {demo: "demo", alice: "alice"}
    assert curve.isDispatcher("demo") and not curve.isDispatcher("alice")
    assert curve.secretKey.decode() not in repr(curve)


def test_matchesPyzmq(keys):
    """Our reading of certificates agrees with zmq.auth's."""
    import zmq.auth

    path = os.path.join(keys.private, "server.key_secret")
    assert readCertificate(path, secret=True) == zmq.auth.load_certificate(path)
    assert readCertificate(keys.public("alice")) == zmq.auth.load_certificate(keys.public("alice"))


def test_routerKeyOnlyWhenConfigured(keys):
    curve = load(keys, routerKey="")
    with pytest.raises(ConfigError, match=r"\[security\] router-key"):
        curve.routerKey()


def test_keyDirectoriesOptional(keys):
    curve = load(keys, clients="", dispatchers="")
    assert curve.allowed == {}
    assert curve.dispatcherKey("demo") is None


def secretPath(keys, name="server"):
    return os.path.join(keys.private, name + ".key_secret")


@pytest.mark.parametrize("mode, words", [
    (0o644, "readable by others (mode 0644): chmod 600 it"),
    (0o640, "readable by its group (mode 0640): chmod 600 it"),
    (0o604, "readable by others (mode 0604)"),
    (0o620, "writable by its group (mode 0620)"),
])
def test_secretKeyOpenToOthers(keys, mode, words):
    os.chmod(secretPath(keys), mode)
    message = problem(keys)
    assert message.startswith(secretPath(keys) + ": ") and words in message


def test_secretKeyStricterIsFine(keys):
    os.chmod(secretPath(keys), 0o400)
    assert load(keys).name == "server"


def test_secretKeyMissing(keys):
    os.unlink(secretPath(keys))
    assert problem(keys) == f"{secretPath(keys)}: no such key file"


def test_secretKeyUnreadable(tmp_path):
    """A secret key the process may not read (as root: a forked child made 'nobody')."""
    if os.geteuid() != 0:
        keys = KeyStore(str(tmp_path))
        keys.make("server")
        os.chmod(secretPath(keys), 0o000)
        assert problem(keys) == f"{secretPath(keys)}: cannot read this key file: Permission denied"
        return
    root = tempfile.mkdtemp(prefix="cauldron-unreadable-")  # under /tmp, which nobody may search
    try:
        os.chmod(root, 0o755)
        keys = KeyStore(root)
        keys.make("server")
        os.chmod(keys.private, 0o755)
        os.chmod(secretPath(keys), 0o000)
        assert asNobody(lambda: readCertificate(secretPath(keys), secret=True)) == \
            f"{secretPath(keys)}: cannot read this key file: Permission denied"
    finally:
        shutil.rmtree(root)


def asNobody(attempt):
    """The ConfigError message of ``attempt()`` run in a forked child with uid/gid 65534."""
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no reactor, no pytest, only the attempt
        try:
            os.setgid(65534)
            os.setuid(65534)
            try:
                attempt()
                message = "no error"
            except ConfigError as e:
                message = str(e)
            os.write(writer, message.encode())
        finally:
            os._exit(0)
    os.close(writer)
    with os.fdopen(reader, "rb") as pipe:
        message = pipe.read().decode()
    os.waitpid(pid, 0)
    return message


def test_secretKeyNotAFile(keys):
    os.unlink(secretPath(keys))
    os.mkdir(secretPath(keys), 0o700)
    assert "not a regular file" in problem(keys)


def test_secretKeyFifoDoesNotHang(keys):
    os.unlink(secretPath(keys))
    os.mkfifo(secretPath(keys), 0o600)
    assert "not a regular file" in problem(keys)


def rewrite(path, text):
    mode = stat.S_IMODE(os.stat(path).st_mode)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)


@pytest.mark.parametrize("text, words", [
    ("garbage\n", "no secret-key"),
    ("curve\n    secret-key = \"tooshort\"\n", "secret-key is not a 40-character Z85 key"),
    ("curve\n    secret-key = \"%s\"\n" % ("#" * 40), "secret-key is not a 40-character Z85 key"),
    ("curve\n    public-key = \"%s\"\n" % zmq.curve_keypair()[0].decode(), "no secret-key"),
])
def test_secretKeyMalformed(keys, text, words):
    rewrite(secretPath(keys), text)
    message = problem(keys)
    assert message.startswith(secretPath(keys) + ": ") and words in message


def test_secretKeyWithAnotherPublicKey(keys):
    public, _ = zmq.curve_keypair()
    _, secret = zmq.curve_keypair()
    rewrite(secretPath(keys), f'curve\n public-key = "{public.decode()}"\n'
                              f' secret-key = "{secret.decode()}"\n')
    assert "public-key does not match secret-key" in problem(keys)


def test_secretKeyAloneIsEnough(keys):
    """A certificate with only the secret key is fine: the public key is derived."""
    public, secret = readCertificate(secretPath(keys), secret=True)
    rewrite(secretPath(keys), f'curve\n    secret-key = "{secret.decode()}"\n')
    assert load(keys).publicKey == public


@pytest.mark.parametrize("mode, whom", [(0o777, "others"), (0o770, "its group"),
                                        (0o1777, "others")])
def test_secretKeyDirectoryWritable(keys, mode, whom):
    os.chmod(keys.private, mode)
    message = problem(keys)
    assert message.startswith(keys.private + ": ")
    assert f"writable by {whom}" in message and "chmod go-w" in message


@pytest.mark.parametrize("which", ["clients", "dispatchers"])
@pytest.mark.parametrize("mode", [0o777, 0o775])
def test_keyDirectoryWritable(keys, which, mode):
    directory = getattr(keys, which)
    os.chmod(directory, mode)
    assert problem(keys).startswith(directory + ": key directory writable by ")


@pytest.mark.parametrize("which", ["clients", "dispatchers"])
def test_keyDirectoryMissing(keys, which):
    missing = os.path.join(keys.root, "nowhere")
    assert problem(keys, **{which: missing}) == f"{missing}: no such key directory"


@pytest.mark.parametrize("text, words", [
    ("not a certificate\n", "no public-key"),
    ('curve\n    public-key = "abc"\n', "public-key is not a 40-character Z85 key"),
    ("#" * 70000, "malformed certificate: over 65536 bytes"),
])
def test_publicKeyMalformedInDirectory(keys, text, words):
    bad = os.path.join(keys.clients, "bad.key")
    with open(bad, "w") as f:
        f.write(text)
    message = problem(keys)
    assert message.startswith(bad + ": ") and words in message


def test_publicKeyHoldingASecret(keys):
    leaked = os.path.join(keys.clients, "leaked.key")
    shutil.copy(secretPath(keys, "alice"), leaked)
    os.chmod(leaked, 0o644)
    assert problem(keys).startswith(leaked + ": holds a secret key")


def test_publicKeyWritableByOthers(keys):
    path = os.path.join(keys.clients, "alice.key")
    os.chmod(path, 0o666)
    assert problem(keys) == f"{path}: writable by others (mode 0666): chmod go-w it"


def test_otherFilesInKeyDirectoryIgnored(keys):
    for name in ("README", ".hidden.key", "notes.key.bak"):
        with open(os.path.join(keys.clients, name), "w") as f:
            f.write("not a key\n")
    assert len(load(keys).allowed) == 2


def test_routerKeyMissingOrMalformed(keys):
    missing = os.path.join(keys.private, "router.key")
    assert problem(keys, routerKey=missing) == f"{missing}: no such key file"
    with open(missing, "w") as f:
        f.write("nothing here\n")
    assert problem(keys, routerKey=missing).startswith(missing + ": malformed certificate")


def test_sameNameInBothDirectories(keys):
    shutil.copy(keys.public("alice"), os.path.join(keys.dispatchers, "Alice.key"))
    message = problem(keys)
    assert os.path.join(keys.dispatchers, "Alice.key") in message
    assert os.path.join(keys.clients, "alice.key") in message
    assert "two keys named" in message


def test_sameKeyUnderTwoNames(keys):
    shutil.copy(keys.public("alice"), os.path.join(keys.clients, "eve.key"))
    message = problem(keys)
    assert "alice.key" in message and "eve.key" in message
    assert "the same public key under two names" in message


def test_generateRefusesBadNamesAndOverwrites(keys):
    for name in ("", ".hidden", "-x", "a/b", "a b", "x" * 129):
        with pytest.raises(ConfigError, match="not a key name"):
            generateCertificate(keys.private, name)
    with pytest.raises(ConfigError, match="exists already"):
        generateCertificate(keys.private, "server")
    assert load(keys).name == "server"


def test_listCertificates(keys):
    listed = listCertificates(keys.private)
    assert [(name, hasSecret) for name, _, hasSecret in listed] == [
        ("alice", True), ("demo", True), ("server", True)]
    assert listCertificates(keys.clients) == [
        ("alice", readCertificate(keys.public("alice"))[0], False)]
