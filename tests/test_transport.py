"""Tests for cauldron.transport: safe socket options, identity routing, bounded reads."""

import os
import shutil
import socket
import stat
import tempfile

import zmq
from helpers import HOST, eventually
from twisted.internet import defer
from twisted.internet import reactor as globalReactor
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial import unittest

from cauldron.transport import AddressInUse, Transport, bindAddress, portOf
from cauldron.transport import context as transportContext
from cauldron.transport.publisher import MAX_SUBSCRIPTION_BYTES, SUBSCRIPTION_HIGH_WATER_MARK
from cauldron.transport.sockets import (
    CONNECT_TIMEOUT_MS,
    HIGH_WATER_MARK,
    LINGER_MS,
    MAX_FRAMES,
    MAX_MESSAGE_BYTES,
    READ_BATCH,
    TCP_KEEPALIVE_IDLE_S,
    TCP_KEEPALIVE_INTERVAL_S,
    TCP_KEEPALIVE_PROBES,
    TCP_MAXRT_MS,
)


class AddressTests(unittest.TestCase):
    """Pure helpers building and parsing addresses."""

    def test_bindAddressTcp(self):
        """A tcp address names the port, and port 0 asks for an ephemeral one."""
        self.assertEqual(bindAddress("tcp", "127.0.0.1", 6511), "tcp://127.0.0.1:6511")
        self.assertEqual(bindAddress("tcp", "127.0.0.1", 0), "tcp://127.0.0.1:*")

    def test_bindAddressIpc(self):
        """An ipc address puts the port in the path; port 0 is libzmq's ipc wildcard."""
        self.assertEqual(bindAddress("ipc", "/tmp/cld", 6511), "ipc:///tmp/cld-6511")
        self.assertEqual(bindAddress("ipc", "/tmp/cld", 0), "ipc://*")  # libzmq picks a path

    def test_portOf(self):
        """portOf reads the port of a tcp address and gives 0 for other transports."""
        self.assertEqual(portOf("tcp://127.0.0.1:6511"), 6511)
        self.assertEqual(portOf("tcp://[::1]:40000"), 40000)
        self.assertEqual(portOf("ipc:///tmp/cld-6511"), 0)


class TransportTests(unittest.TestCase):
    """Real sockets on the global reactor."""

    def setUp(self):
        self.transport = Transport(globalReactor)
        self.addCleanup(self.transport.shutdown)

    def test_socketOptions(self):
        """Every socket gets high-water marks, a maximum message size, a linger, and
        the options that drop connections to cut-off peers, and no ZMTP heartbeats.

        A publisher takes only small subscriptions, one at a time; a
        subscriber queues all its subscriptions (they are few, and one lost
        at a reconnection would be lost for good).
        """
        sockets = {
            "router": self.transport.router(lambda identity, frames: None),
            "dealer": self.transport.dealer(lambda frames: None),
            "publisher": self.transport.publisher(),
            "subscriber": self.transport.subscriber(lambda frames: None),
        }
        expected = {
            "publisher": (HIGH_WATER_MARK, SUBSCRIPTION_HIGH_WATER_MARK, MAX_SUBSCRIPTION_BYTES),
            "subscriber": (0, HIGH_WATER_MARK, MAX_MESSAGE_BYTES),
        }
        for kind, connection in sockets.items():
            socket = connection.socket
            sendMark, receiveMark, largest = expected.get(
                kind, (HIGH_WATER_MARK, HIGH_WATER_MARK, MAX_MESSAGE_BYTES))
            self.assertEqual(socket.get(zmq.SNDHWM), sendMark, kind)
            self.assertEqual(socket.get(zmq.RCVHWM), receiveMark, kind)
            self.assertEqual(socket.get(zmq.MAXMSGSIZE), largest, kind)
            self.assertEqual(socket.get(zmq.LINGER), LINGER_MS, kind)
            self.assertEqual(socket.get(zmq.HEARTBEAT_IVL), 0, kind)  # see test_resets
            self.assertEqual(socket.get(zmq.TCP_KEEPALIVE), 1, kind)
            self.assertEqual(socket.get(zmq.TCP_KEEPALIVE_IDLE), TCP_KEEPALIVE_IDLE_S, kind)
            self.assertEqual(socket.get(zmq.TCP_KEEPALIVE_INTVL), TCP_KEEPALIVE_INTERVAL_S, kind)
            self.assertEqual(socket.get(zmq.TCP_KEEPALIVE_CNT), TCP_KEEPALIVE_PROBES, kind)
            self.assertEqual(socket.get(zmq.TCP_MAXRT), TCP_MAXRT_MS, kind)
            self.assertEqual(socket.get(zmq.CONNECT_TIMEOUT), CONNECT_TIMEOUT_MS, kind)
        self.assertEqual(sockets["router"].socket.get(zmq.TYPE), zmq.ROUTER)
        self.assertEqual(sockets["dealer"].socket.get(zmq.TYPE), zmq.DEALER)
        self.assertEqual(sockets["publisher"].socket.get(zmq.TYPE), zmq.XPUB)
        self.assertEqual(sockets["subscriber"].socket.get(zmq.TYPE), zmq.SUB)

    def test_plainModeIsPlain(self):
        """Without a Curve (the default) no socket speaks CURVE and no ZAP handler runs."""
        self.assertFalse(self.transport.secure)
        self.assertIsNone(self.transport.authenticator)
        self.assertIsNone(self.transport.refusals)
        router = self.transport.router(lambda identity, frames: None)
        publisher = self.transport.publisher()
        for connection in (router, publisher):
            connection.bind(bindAddress("tcp", HOST, 0))
        sockets = [router, publisher, self.transport.dealer(lambda frames: None),
                   self.transport.subscriber(lambda frames: None)]
        for connection in sockets:
            self.assertEqual(connection.socket.get(zmq.MECHANISM), zmq.NULL)
            self.assertEqual(connection.socket.get(zmq.ZAP_DOMAIN), b"")
            self.assertFalse(connection.secure)

    def test_bindReturnsResolvedAddress(self):
        """Binding port 0 returns the address actually bound, with a real port."""
        router = self.transport.router(lambda identity, frames: None)
        address = router.bind(bindAddress("tcp", HOST, 0))
        self.assertTrue(address.startswith(f"tcp://{HOST}:"))
        self.assertGreater(portOf(address), 0)

    def test_addressInUse(self):
        """Binding an address another socket holds raises AddressInUse naming it."""
        first = self.transport.router(lambda identity, frames: None)
        address = first.bind(bindAddress("tcp", HOST, 0))
        second = self.transport.router(lambda identity, frames: None)
        error = self.assertRaises(AddressInUse, second.bind, address)
        self.assertEqual(error.address, address)
        self.assertIn(address, str(error))

    @defer.inlineCallbacks
    def test_routerRepliesByIdentity(self):
        """Two DEALERs using the same request id each get their own reply from a ROUTER."""
        def echo(identity, frames):
            router.sendTo(identity, frames)

        router = self.transport.router(echo)
        address = router.bind(bindAddress("tcp", HOST, 0))
        got = {"A": [], "B": []}
        dealers = {}
        for name in got:
            dealers[name] = self.transport.dealer(got[name].append)
            dealers[name].connect(address)
        for name, dealer in dealers.items():
            dealer.send([b"1", name.encode()])
        yield eventually(lambda: all(got.values()))
        self.assertEqual(got["A"], [[b"1", b"A"]])
        self.assertEqual(got["B"], [[b"1", b"B"]])

    def routerAndDealer(self, onMessage):
        """A ROUTER on TCP handing its messages to ``onMessage``, and a DEALER connected to it."""
        router = self.transport.router(onMessage)
        address = router.bind(bindAddress("tcp", HOST, 0))
        dealer = self.transport.dealer(lambda frames: None)
        dealer.connect(address)
        return router, dealer

    @defer.inlineCallbacks
    def test_peerTellsItsAddress(self):
        """A ROUTER's peer is its identity, and tells its numeric address (and no user id)."""
        peers = []
        router, dealer = self.routerAndDealer(lambda peer, frames: peers.append(peer))
        dealer.send([b"hello"])
        yield eventually(lambda: peers)
        peer = peers[0]
        self.assertIsInstance(peer, bytes)
        self.assertEqual((peer.address, peer.userId), (HOST, ""))
        self.assertTrue(router.sendTo(peer, [b"back"]))

    @defer.inlineCallbacks
    def test_claimedIdentityCannotTakeOverReplies(self):
        """A second peer claiming a connected peer's routing identity gets nothing of it."""
        seen = []
        router = self.transport.router(lambda peer, frames: seen.append((bytes(peer), frames)))
        address = router.bind(bindAddress("tcp", HOST, 0))
        context = zmq.Context()
        self.addCleanup(context.term)

        def dealer():
            socket = context.socket(zmq.DEALER)
            self.addCleanup(socket.close, 0)
            socket.set(zmq.ROUTING_ID, b"same")
            return socket

        victim = dealer()
        victim.connect(address)
        victim.send(b"victim")
        yield eventually(lambda: seen)
        thief = dealer()
        handshakes = thief.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
        self.addCleanup(handshakes.close, 0)
        thief.connect(address)
        yield eventually(lambda: handshakes.poll(0))
        thief.send(b"thief")
        self.assertTrue(router.sendTo(b"same", [b"reply"]))
        yield eventually(lambda: victim.poll(0) or thief.poll(0))
        self.assertEqual(victim.recv(zmq.NOBLOCK), b"reply")
        self.assertEqual(thief.poll(0), 0)
        self.assertEqual(seen, [(b"same", [b"victim"])])

    def test_sendToDepartedPeer(self):
        """A reply to an identity that never connected is dropped, not raised."""
        router = self.transport.router(lambda identity, frames: None)
        router.bind(bindAddress("tcp", HOST, 0))
        self.assertFalse(router.sendTo(b"\x00nobody", [b"x"]))

    @defer.inlineCallbacks
    def test_boundedReadBatch(self):
        """After a burst of over READ_BATCH messages, the reactor runs before all are handled."""
        total = 3 * READ_BATCH
        handled = []
        seenByTimer = []

        def onMessage(identity, frames):
            if not handled:
                # Scheduled while the first batch is being handled: it must
                # run before the rest of the burst is.
                globalReactor.callLater(0, lambda: seenByTimer.append(len(handled)))
            handled.append(frames)

        router = self.transport.router(onMessage)
        address = router.bind("inproc://cauldron-test-batch")
        dealer = self.transport.dealer(lambda frames: None)
        dealer.connect(address)
        # inproc delivers at send time: the whole burst is queued before the
        # reactor gets control again.
        for i in range(total):
            dealer.send([str(i).encode()])
        yield eventually(lambda: len(handled) == total and seenByTimer)
        self.assertLess(seenByTimer[0], total)
        self.assertLessEqual(seenByTimer[0], READ_BATCH)
        self.assertEqual([f[0] for f in handled], [str(i).encode() for i in range(total)])

    @defer.inlineCallbacks
    def test_batchEndFollowsTheMessagesOfOneRead(self):
        """A ROUTER's onBatchEnd runs once the messages of one read are handled."""
        seen, sockets = [], {}
        router = sockets["router"] = self.transport.router(
            lambda peer, frames: seen.append((frames[0], sockets["router"].reading)),
            lambda: seen.append(("end", sockets["router"].reading)) if sockets else None)
        address = router.bind("inproc://cauldron-test-batch-end")
        dealer = self.transport.dealer(lambda frames: None)
        dealer.connect(address)
        for name in (b"a", b"b", b"c"):  # inproc: all queued before the reactor runs
            dealer.send([name])
        yield eventually(lambda: (b"c", True) in seen and seen[-1] == ("end", False))
        while seen[0][0] == "end":  # reads that found nothing end batches too
            seen.pop(0)
        self.assertEqual(seen, [(b"a", True), (b"b", True), (b"c", True), ("end", False)])

    @defer.inlineCallbacks
    def test_messageOfTooManyFramesIsDropped(self):
        """A message of more frames than a socket takes is dropped whole and counted."""
        got = []
        router, dealer = self.routerAndDealer(lambda peer, frames: got.append(frames))
        # The ROUTER adds a frame of its own: the peer's identity.
        dealer.send([b"a"] * (MAX_FRAMES - 1))
        dealer.send([b"b"] * MAX_FRAMES)
        dealer.send([b"c"])
        yield eventually(lambda: len(got) == 2)
        self.assertEqual(got, [[b"a"] * (MAX_FRAMES - 1), [b"c"]])
        self.assertEqual(router.malformed, 1)

    def test_readingNothingIsQuiet(self):
        """A read that finds no message (a wake-up for other news, the safety poll) is no error."""
        got, problems = [], []

        def observe(event):
            if event["log_level"] in (LogLevel.warn, LogLevel.error, LogLevel.critical):
                problems.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        dealer = self.transport.dealer(got.append)
        dealer.doRead()
        dealer.readWaiting()
        self.assertEqual((got, problems), ([], []))

    @defer.inlineCallbacks
    def test_subscriberTopics(self):
        """A subscriber gets only the topics it subscribed to, until it unsubscribes."""
        publisher = self.transport.publisher()
        address = publisher.bind(bindAddress("tcp", HOST, 0))
        got = []
        subscriber = self.transport.subscriber(got.append)
        subscriber.subscribe(b"A")
        subscriber.connect(address)

        def publish():
            publisher.send([b"B", b"no"])
            publisher.send([b"A", b"yes"])

        # PUB drops messages until the subscription has arrived: publish until one lands.
        yield eventually(lambda: publish() or got)
        self.assertTrue(all(frames == [b"A", b"yes"] for frames in got))

    def test_closeOneSocket(self):
        """Closing one socket stops reading it and leaves the others open."""
        router = self.transport.router(lambda identity, frames: None)
        dealer = self.transport.dealer(lambda frames: None)
        self.transport.close(router, discard=True)
        self.assertTrue(router.closed)
        self.assertNotIn(router, globalReactor.getReaders())
        self.assertIn(dealer, globalReactor.getReaders())
        self.transport.close(router)  # twice is harmless

    def test_shutdownTwice(self):
        """Transport.shutdown closes every socket and is safe to call again."""
        connections = [
            self.transport.router(lambda identity, frames: None),
            self.transport.dealer(lambda frames: None),
        ]
        self.transport.shutdown()
        self.transport.shutdown()
        for connection in connections:
            self.assertTrue(connection.closed)
            self.assertNotIn(connection, globalReactor.getReaders())


def threadCount():
    """Threads of this process, native ones (libzmq's I/O threads) included."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    raise AssertionError("no Threads line in /proc/self/status")


class IpcFileTests(unittest.TestCase):
    """ipc files: their folder made private, a listened name refused, removed on close."""

    def setUp(self):
        self.folder = tempfile.mkdtemp(prefix="cauldron-test-")
        self.addCleanup(shutil.rmtree, self.folder, True)
        self.transport = Transport(globalReactor)
        self.addCleanup(self.transport.shutdown)

    def test_folderMadeAndFileRemovedOnClose(self):
        folder = os.path.join(self.folder, "made", "here")
        path = os.path.join(folder, "h-6511")
        router = self.transport.router(lambda identity, frames: None)
        self.assertEqual(router.bind("ipc://" + path), "ipc://" + path)
        self.assertEqual(stat.S_IMODE(os.stat(folder).st_mode), 0o700)
        self.assertTrue(os.path.exists(path))
        self.transport.close(router)
        self.assertFalse(os.path.exists(path))

    def test_fileRemovedOnShutdown(self):
        path = os.path.join(self.folder, "h-6512")
        self.transport.publisher().bind("ipc://" + path)
        self.transport.shutdown()
        self.assertEqual(os.listdir(self.folder), [])

    def test_listenedNameIsInUse(self):
        """libzmq would take over a listened ipc name; we refuse it as AddressInUse."""
        address = "ipc://" + os.path.join(self.folder, "h-6513")
        self.transport.router(lambda identity, frames: None).bind(address)
        other = Transport(globalReactor)
        self.addCleanup(other.shutdown)
        second = other.router(lambda identity, frames: None)
        self.assertRaises(AddressInUse, second.bind, address)
        other.shutdown()
        self.assertTrue(os.path.exists(address[len("ipc://"):]))  # still the first one's

    def test_staleFileIsReused(self):
        """A file left by a killed process (nobody listening) is taken over."""
        path = os.path.join(self.folder, "h-6514")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
            stale.bind(path)
        router = self.transport.router(lambda identity, frames: None)
        router.bind("ipc://" + path)
        self.transport.close(router)
        self.assertFalse(os.path.exists(path))

    @defer.inlineCallbacks
    def test_ipcPeerHasNoAddress(self):
        """An ipc peer's address is "" (libzmq gives "localhost:UID:GID:PID", no IP)."""
        peers = []
        router = self.transport.router(lambda peer, frames: peers.append(peer))
        address = router.bind("ipc://" + os.path.join(self.folder, "h-6516"))
        dealer = self.transport.dealer(lambda frames: None)
        dealer.connect(address)
        dealer.send([b"hello"])
        yield eventually(lambda: peers)
        self.assertEqual(peers[0].address, "")

    def test_nameTakenOverIsNotRemoved(self):
        """A file that is no longer the one this socket bound is left alone."""
        path = os.path.join(self.folder, "h-6515")
        router = self.transport.router(lambda identity, frames: None)
        router.bind("ipc://" + path)
        os.unlink(path)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as newcomer:
            newcomer.bind(path)
            self.transport.close(router)
            self.assertTrue(os.path.exists(path))


class SharedContextTests(unittest.TestCase):
    """Client Transports on one reactor share one ZeroMQ context (one I/O thread)."""

    @defer.inlineCallbacks
    def test_manyClientsOneContext(self):
        server = Transport(globalReactor)
        self.addCleanup(server.shutdown)
        replies = []
        echo = server.router(lambda peer, frames: echo.sendTo(peer, frames))
        address = echo.bind(bindAddress("tcp", HOST, 0))
        before = threadCount()
        clients = [Transport(globalReactor, shared=True) for _ in range(50)]
        for client in clients:
            self.addCleanup(client.shutdown)
            dealer = client.dealer(replies.append)
            dealer.connect(address)
            dealer.send([b"ping"])
        yield eventually(lambda: len(replies) == 50)
        self.assertLessEqual(threadCount() - before, 2)  # one context: its I/O and reaper threads
        self.assertEqual(len({id(client._factory) for client in clients}), 1)

    @defer.inlineCallbacks
    def test_oneClientStoppingLeavesTheOthersWorking(self):
        server = Transport(globalReactor)
        self.addCleanup(server.shutdown)
        echo = server.router(lambda peer, frames: echo.sendTo(peer, frames))
        address = echo.bind(bindAddress("tcp", HOST, 0))
        first, second = Transport(globalReactor, shared=True), Transport(globalReactor, shared=True)
        self.addCleanup(second.shutdown)
        first.dealer(lambda frames: None).connect(address)
        first.shutdown()
        self.assertTrue(first.closed)
        replies = []
        dealer = second.dealer(replies.append)
        dealer.connect(address)
        dealer.send([b"still there?"])
        yield eventually(lambda: replies == [[b"still there?"]])
        second.shutdown()
        self.assertNotIn(globalReactor, transportContext._sharedFactories)

    def test_serversAndSecureTransportsKeepTheirOwnContext(self):
        own, shared = Transport(globalReactor), Transport(globalReactor, shared=True)
        self.addCleanup(own.shutdown)
        self.addCleanup(shared.shutdown)
        self.assertIsNot(own._factory, shared._factory)
