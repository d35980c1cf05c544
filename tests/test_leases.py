"""Tests for cauldron.protocol.leases: the router's pure lease table."""

import dataclasses

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from cauldron.errors import CauldronError, ConfigError, LeaseConflict, LeaseError
from cauldron.protocol.leases import Lease, LeaseTable

TTL = 3.0
#: every lease of these tests' tables has this secret, so the tests that are
#: not about secrets pass it as any holder would (those about them: below)
SECRET = "known"


def knownSecret():
    return SECRET


@pytest.fixture
def table():
    return LeaseTable(6600, 6700, TTL, newSecret=knownSecret)


def ports(lease):
    return (lease.dispatchPort, lease.broadcastPort)


def test_pairsCoverHalfOpenRange(table):
    """6600..6700 gives 50 pairs, the last being (6698, 6699), as the original router did."""
    assert len(table.pairs) == 50
    assert table.pairs[0] == 6600
    assert table.pairs[-1] == 6698
    assert table.isPair(6698, 6699)
    assert not table.isPair(6700, 6701)
    assert not table.isPair(6601, 6602)


@pytest.mark.parametrize(
    "args",
    [
        (6600, 6601, TTL),
        (6600, 6600, TTL),
        (0, 10, TTL),
        (6600, 70000, TTL),
        (6600, 6700, 0),
        (6600, 6700, -1.0),
        (6600, 6700, float("nan")),
        (True, 6700, TTL),
        ("6600", 6700, TTL),
    ],
)
def test_badConfigurationRejected(args):
    """A range without a single pair, or a non-positive ttl, fails at construction."""
    with pytest.raises(ConfigError):
        LeaseTable(*args)


def test_oddRangeDropsTrailingPort():
    """A last port that would be left unpaired is never leased."""
    table = LeaseTable(6600, 6605, TTL, newSecret=knownSecret)
    assert list(table.pairs) == [6600, 6602]
    top = LeaseTable(65534, 65536, TTL, newSecret=knownSecret)
    assert top.lease("top", "h", "i", now=0.0, secret=SECRET).ports == (65534, 65535)


def test_firstLeaseGetsFirstPair(table):
    """An empty table grants (firstPort, firstPort + 1)."""
    lease = table.lease("demo", "hostA", "i1", now=10.0, secret=SECRET)
    assert isinstance(lease, Lease)
    assert ports(lease) == (6600, 6601)
    assert (lease.service, lease.host, lease.instance) == ("demo", "hostA", "i1")
    assert lease.granted == lease.renewed == 10.0
    assert lease.expires == 13.0
    assert lease.age(11.5) == 1.5
    assert len(table) == 1


def test_distinctServicesGetDistinctPairs(table):
    """Each service gets the lowest free pair, never another service's ports."""
    got = [ports(table.lease(f"svc{i}", "h", f"i{i}", now=0.0, secret=SECRET)) for i in range(5)]
    assert got == [(6600, 6601), (6602, 6603), (6604, 6605), (6606, 6607), (6608, 6609)]


def test_serviceNamesAreCaseInsensitive(table):
    """DEMO and demo are one service, stored lower-case."""
    first = table.lease("DEMO", "h", "i1", now=0.0, secret=SECRET)
    assert first.service == "demo"
    assert table.lease("Demo", "h", "i1", now=1.0, secret=SECRET).ports == first.ports
    assert table.locate("dEmO", now=1.0).service == "demo"
    assert len(table) == 1


def test_sameInstanceIsIdempotent(table):
    """A retried lease from the same process returns its lease, renewed, keeping `granted`."""
    first = table.lease("demo", "h", "i1", now=0.0, secret=SECRET)
    again = table.lease("demo", "h", "i1", now=2.0, secret=SECRET)
    assert again.ports == first.ports
    assert again.granted == 0.0
    assert again.renewed == 2.0
    assert len(table) == 1


def test_otherInstanceConflictsWithMessage(table):
    """A second process for a live service is refused, told who holds it and for how long."""
    table.lease("demo", "hostA", "i1", now=0.0, secret=SECRET)
    with pytest.raises(LeaseConflict) as caught:
        table.lease("DEMO", "hostB", "i2", now=1.0, secret=SECRET)
    message = str(caught.value)
    assert "'demo'" in message
    assert "'hostA'" in message
    assert "6600/6601" in message
    assert "expires in 2.0 s" in message
    assert isinstance(caught.value, LeaseError)
    assert isinstance(caught.value, CauldronError)
    assert table.locate("demo", now=1.0).instance == "i1"


def test_otherInstanceTakesOverAfterExpiry(table):
    """Hand-over happens only once the old lease has expired: one owner at every instant."""
    table.lease("demo", "hostA", "i1", now=0.0, secret=SECRET)
    with pytest.raises(LeaseConflict):
        table.lease("demo", "hostB", "i2", now=2.999, secret=SECRET)
    lease = table.lease("demo", "hostB", "i2", now=3.0, secret=SECRET)
    assert (lease.host, lease.instance, lease.ports) == ("hostB", "i2", (6600, 6601))


def test_previousPairRegainedAfterExpiry(table):
    """A restarted dispatcher gets its old ports back after expiry, not the lowest pair."""
    table.lease("a", "h", "ia", now=0.0, secret=SECRET)
    table.lease("b", "h", "ib", now=0.0, secret=SECRET)
    table.lease("c", "h", "ic", now=0.0, secret=SECRET)
    table.renew("c", "ic", now=2.0, secret=SECRET)
    assert [lease.service for lease in table.expire(3.0)] == ["a", "b"]
    again = table.lease("b", "h", "ib2", now=4.0, secret=SECRET)
    assert again.ports == (6602, 6603)
    assert (again.instance, again.granted) == ("ib2", 4.0)


def test_previousPairPreferredOverLowest(table):
    """The previous pair wins even when a lower pair is free."""
    table.lease("a", "h", "ia", now=0.0, secret=SECRET)
    table.lease("b", "h", "ib", now=0.0, secret=SECRET)
    table.release("a", "ia", now=0.0, secret=SECRET)
    table.release("b", "ib", now=0.0, secret=SECRET)
    assert table.lease("b", "h", "ib2", now=1.0, secret=SECRET).ports == (6602, 6603)


def test_previousPairTakenFallsBackToLowest(table):
    """When another service holds the previous pair, the lowest free pair is granted."""
    table.lease("a", "h", "ia", now=0.0, secret=SECRET)
    table.lease("b", "h", "ib", now=0.0, secret=SECRET)
    table.release("a", "ia", now=0.0, secret=SECRET)
    table.release("b", "ib", now=0.0, secret=SECRET)
    table.lease("c", "h", "ic", now=0.0, secret=SECRET)  # lowest: a's old pair
    table.lease("d", "h", "id", now=0.0, secret=SECRET)  # next: b's old pair
    assert table.lease("b", "h", "ib2", now=0.0, secret=SECRET).ports == (6604, 6605)


def test_expiryAtExactlyTtl(table):
    """A lease is live strictly before renewed + ttl and gone at exactly that instant."""
    lease = table.lease("demo", "h", "i1", now=5.0, secret=SECRET)
    assert table.expire(7.999) == []
    assert table.locate("demo", now=7.999) == lease
    assert table.expire(8.0) == [lease]
    assert table.locate("demo", now=8.0) is None
    assert len(table) == 0


def test_expiryIsLazy(table):
    """Every method expires first, so a stale lease is never seen nor renewed."""
    table.lease("demo", "h", "i1", now=0.0, secret=SECRET)
    with pytest.raises(LeaseError):
        table.renew("demo", "i1", now=3.0, secret=SECRET)
    assert table.leases(3.0) == []
    assert len(table) == 0


def test_renewKeepsAlive(table):
    """Each renewal pushes expiry to renewed + ttl; a 2 s stall does not lose the lease (R5)."""
    table.lease("demo", "h", "i1", now=0.0, secret=SECRET)
    for now in (1.0, 2.0, 4.0, 6.9):
        lease = table.renew("DEMO", "i1", now=now, secret=SECRET)
        assert lease.renewed == now
        assert lease.granted == 0.0
    assert table.locate("demo", now=9.8) is not None
    assert table.locate("demo", now=9.9) is None


def test_renewUnknownOrOtherInstanceFails(table):
    """Renewing a lease one does not hold is a LeaseError, so the dispatcher re-registers."""
    with pytest.raises(LeaseError, match="'demo' holds no live lease"):
        table.renew("demo", "i1", now=0.0, secret=SECRET)
    table.lease("demo", "h", "i1", now=0.0, secret=SECRET)
    with pytest.raises(LeaseError, match="instance 'i1'"):
        table.renew("demo", "i2", now=1.0, secret=SECRET)
    assert table.locate("demo", now=1.0).renewed == 0.0


def test_releaseFreesPairAtOnce(table):
    """A released pair is free immediately, for any service."""
    table.lease("a", "h", "ia", now=0.0, secret=SECRET)
    assert table.release("A", "ia", now=1.0, secret=SECRET) is True
    assert len(table) == 0
    assert table.lease("b", "h", "ib", now=1.0, secret=SECRET).ports == (6600, 6601)


def test_releaseByOtherInstanceIgnored(table):
    """Only the holder can release; a stale process cannot drop its successor's lease."""
    table.lease("a", "h", "ia", now=0.0, secret=SECRET)
    assert table.release("a", "other", now=0.0, secret=SECRET) is False
    assert table.release("nope", "ia", now=0.0, secret=SECRET) is False
    assert table.locate("a", now=0.0).instance == "ia"


def test_avoidSkipsPortsTakenOnHost(table):
    """Ports the dispatcher found taken are skipped, pair-wise."""
    lease = table.lease("demo", "h", "i1", now=0.0, avoid=[6601, 6602], secret=SECRET)
    assert lease.ports == (6604, 6605)


def test_avoidSkipsPreviousPair(table):
    """The previous pair is not reused when one of its ports is avoided."""
    table.lease("a", "h", "ia", now=0.0, secret=SECRET)
    table.lease("b", "h", "ib", now=0.0, secret=SECRET)
    table.release("b", "ib", now=0.0, secret=SECRET)
    assert table.lease("b", "h", "ib2", now=0.0, avoid={6603}, secret=SECRET).ports == (6604, 6605)


def test_avoidMovesSameInstanceLease(table):
    """A holder reporting its own ports as taken is moved, not handed the same pair forever."""
    table.lease("demo", "h", "i1", now=0.0, secret=SECRET)
    moved = table.lease("demo", "h", "i1", now=1.0, avoid=[6600], secret=SECRET)
    assert moved.ports == (6602, 6603)
    assert moved.granted == 1.0
    assert table.lease("other", "h", "i2", now=1.0, secret=SECRET).ports == (6600, 6601)


def test_avoidRejectsGarbage(table):
    """Only port numbers may be avoided."""
    for avoid in (["x"], [0], [True], [70000], None):
        with pytest.raises(LeaseError):
            table.lease("demo", "h", "i1", now=0.0, avoid=avoid, secret=SECRET)
    assert len(table) == 0


def test_exhaustionMessageAndConsistency():
    """The 51st service gets a LeaseError naming the range; the table is unchanged (defect 9)."""
    table = LeaseTable(6600, 6700, TTL, newSecret=knownSecret)
    for i in range(50):
        table.lease(f"svc{i:02d}", "h", f"i{i}", now=0.0, secret=SECRET)
    before = table.leases(1.0)
    with pytest.raises(LeaseError) as caught:
        table.lease("late", "h", "ilate", now=1.0, secret=SECRET)
    assert not isinstance(caught.value, LeaseConflict)
    assert str(caught.value) == (
        "no free port pair in [6600, 6700) on host 'h': 50 dispatchers hold leases"
    )
    assert table.leases(1.0) == before
    assert len(table) == 50
    table.release("svc07", "i7", now=1.0, secret=SECRET)
    assert table.lease("late", "h", "ilate", now=1.0, secret=SECRET).ports == (6614, 6615)


def test_exhaustionByAvoidMentionsIt():
    """When avoided ports leave nothing, the message says so and a moved lease stays put."""
    table = LeaseTable(6600, 6604, TTL, newSecret=knownSecret)
    table.lease("a", "h", "ia", now=0.0, secret=SECRET)
    with pytest.raises(LeaseError) as caught:
        table.lease("a", "h", "ia", now=1.0, avoid=[6600, 6602], secret=SECRET)
    assert str(caught.value) == (
        "no free port pair in [6600, 6604) on host 'h': 1 dispatcher holds a lease,"
        " 2 ports in use on the host avoided"
    )
    assert table.locate("a", now=1.0).ports == (6600, 6601)
    assert table.locate("a", now=1.0).renewed == 0.0


def test_registerAfterRouterRestart():
    """A fresh router accepts the ports dispatchers already have bound, and grants around them."""
    table = LeaseTable(6600, 6700, TTL, newSecret=knownSecret)
    b = table.register("B", "h", "ib", 6602, 6603, now=100.0, secret=SECRET)
    assert (b.service, b.ports, b.granted, b.renewed) == ("b", (6602, 6603), 100.0, 100.0)
    assert table.register("b", "h", "ib", 6602, 6603, now=101.0, secret=SECRET).renewed == 101.0
    assert table.lease("a", "h", "ia", now=101.0, secret=SECRET).ports == (6600, 6601)
    assert table.lease("c", "h", "ic", now=101.0, secret=SECRET).ports == (6604, 6605)
    # The registered pair is remembered as b's previous pair.
    table.release("b", "ib", now=102.0, secret=SECRET)
    table.lease("d", "h", "id", now=102.0, secret=SECRET)  # lowest free: b's pair
    table.release("d", "id", now=102.0, secret=SECRET)
    assert table.lease("b", "hostB", "ib2", now=102.0, secret=SECRET).ports == (6602, 6603)


def test_registerOutsideRange(table):
    """Fixed ports outside the range are accepted but still block collisions."""
    fixed = table.register("fixed", "h", "if", 7000, 7005, now=0.0, secret=SECRET)
    assert fixed.ports == (7000, 7005)
    assert not table.isPair(*fixed.ports)
    with pytest.raises(LeaseConflict, match="port 7005 is held by service 'fixed'"):
        table.register("other", "h", "io", 7005, 7006, now=0.0, secret=SECRET)


def test_registerMisalignedBlocksNeighbours(table):
    """A registered (6601, 6602) blocks both pairs it touches."""
    table.register("odd", "h", "io", 6601, 6602, now=0.0, secret=SECRET)
    assert table.lease("a", "h", "ia", now=0.0, secret=SECRET).ports == (6604, 6605)


def test_registerCollision(table):
    """Ports held by another live service on the same host are refused, naming the holder."""
    table.lease("a", "hostA", "ia", now=0.0, secret=SECRET)
    with pytest.raises(LeaseConflict) as caught:
        table.register("b", "hostA", "ib", 6601, 6650, now=1.0, secret=SECRET)
    message = str(caught.value)
    assert "port 6601 is held by service 'a' on host 'hostA'" in message
    assert "expiring in 2.0 s" in message
    assert table.locate("b", now=1.0) is None
    # Once a's lease expires, b may register those ports.
    again = table.register("b", "hostA", "ib", 6601, 6650, now=3.0, secret=SECRET)
    assert again.ports == (6601, 6650)


def test_portsBelongToTheirHost(table):
    """Two hosts may use the same ports: a restarted router must not refuse either."""
    a = table.lease("a", "hostA", "ia", now=0.0, secret=SECRET)
    b = table.lease("b", "hostB", "ib", now=0.0, secret=SECRET)
    assert a.ports == b.ports == (6600, 6601)
    # After a router restart the live dispatcher of hostA registers its pair
    # although hostB's new one was granted the same numbers meanwhile.
    fresh = LeaseTable(6600, 6700, TTL, newSecret=knownSecret)
    fresh.lease("new", "hostB", "in", now=5.0, secret=SECRET)
    registered = fresh.register("a", "hostA", "ia", 6600, 6601, now=5.0, secret=SECRET)
    assert registered.ports == (6600, 6601)


def test_leaseTtlFollowsTheDispatcher(table):
    """A lease asked with a longer ttl (slow heartbeats) lives that long, renewals included."""
    slow = table.lease("slow", "h", "is", now=0.0, ttl=15.0, secret=SECRET)
    assert slow.ttl == 15.0
    assert table.locate("slow", now=14.0) is not None
    assert table.renew("slow", "is", now=14.0, secret=SECRET).ttl == 15.0
    assert table.locate("slow", now=28.0) is not None
    assert table.locate("slow", now=29.5) is None
    # A shorter ttl than the table's never shortens a lease.
    assert table.lease("quick", "h", "iq", now=0.0, ttl=0.5, secret=SECRET).ttl == TTL


def test_registerServiceHeldByOtherInstance(table):
    """A second process cannot register a live service, whatever ports it offers."""
    table.register("demo", "hostA", "i1", 6600, 6601, now=0.0, secret=SECRET)
    with pytest.raises(LeaseConflict, match="instance 'i1'"):
        table.register("demo", "hostB", "i2", 6610, 6611, now=1.0, secret=SECRET)
    assert table.locate("demo", now=1.0).instance == "i1"


def test_registerSameInstanceMoves(table):
    """The holder re-registering other ports moves its lease and frees the old ones."""
    table.lease("demo", "h", "i1", now=0.0, secret=SECRET)
    moved = table.register("demo", "h", "i1", 6610, 6611, now=1.0, secret=SECRET)
    assert moved.ports == (6610, 6611)
    assert len(table) == 1
    assert table.lease("x", "h", "ix", now=1.0, secret=SECRET).ports == (6600, 6601)


@pytest.mark.parametrize(
    "pair", [(6600, 6600), (0, 6601), (6600, 65536), (True, 6601), ("6600", 6601)]
)
def test_registerBadPorts(table, pair):
    """Nonsense port numbers are a LeaseError, not a corrupt table."""
    with pytest.raises(LeaseError):
        table.register("demo", "h", "i1", *pair, now=0.0, secret=SECRET)
    assert len(table) == 0


def test_leasesSortedAndLeaseImmutable(table):
    """leases() lists by service; a Lease cannot be changed behind the table's back."""
    for name in ("c", "a", "b"):
        table.lease(name, "h", name, now=0.0, secret=SECRET)
    listed = table.leases(0.0)
    assert [lease.service for lease in listed] == ["a", "b", "c"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        listed[0].renewed = 99.0


def test_badServiceName(table):
    """An empty or non-string service name is refused."""
    for name in ("", None, 5):
        with pytest.raises(LeaseError):
            table.lease(name, "h", "i", now=0.0, secret=SECRET)


def test_rememberIsBounded():
    """Remembered pairs are capped, so a stream of one-off names cannot grow the table forever."""
    table = LeaseTable(6600, 6610, TTL, remember=2, newSecret=knownSecret)
    for name in ("a", "b", "c"):
        table.lease(name, "h", name, now=0.0, secret=SECRET)
        table.release(name, name, now=0.0, secret=SECRET)
    table.lease("x", "h", "x", now=0.0, secret=SECRET)  # lowest free pair
    table.lease("y", "h", "y", now=0.0, secret=SECRET)
    # "a" was forgotten: it gets the lowest free pair rather than insisting on its old one.
    assert table.lease("a", "h", "a2", now=0.0, secret=SECRET).ports == (6604, 6605)
    table.release("x", "x", now=0.0, secret=SECRET)
    assert table.lease("b", "h", "b2", now=0.0, secret=SECRET).ports == (6600, 6601)


# -- the holder's secret and the per-host cap ------------------------------


def secretTable(**kwargs):
    """A table drawing real random secrets, as the router's does."""
    return LeaseTable(6600, 6700, TTL, **kwargs)


def test_secretsAreRandomAndHidden():
    """Each lease gets its own unguessable secret; it is never shown in a repr or a conflict."""
    table = secretTable()
    a = table.lease("a", "h", "ia", now=0.0)
    b = table.lease("b", "h", "ib", now=0.0)
    assert len(a.secret) == 32 and a.secret != b.secret
    assert a.secret not in repr(a)
    with pytest.raises(LeaseConflict) as caught:
        table.lease("a", "h2", "intruder", now=1.0)
    assert a.secret not in str(caught.value)
    assert a.secret not in repr(caught.value.detail)


def test_holderProvesItWithTheSecret():
    """Knowing the instance is not enough to renew, release, re-lease or move a lease."""
    table = secretTable()
    held = table.lease("demo", "h", "i1", now=0.0)
    nearMiss = held.secret[:-1] + ("1" if held.secret.endswith("0") else "0")
    for wrong in ("", "guess", nearMiss):
        with pytest.raises(LeaseConflict):
            table.renew("demo", "i1", now=1.0, secret=wrong)
        assert table.release("demo", "i1", now=1.0, secret=wrong) is False
        with pytest.raises(LeaseConflict):
            table.lease("demo", "h", "i1", now=1.0, secret=wrong)
        with pytest.raises(LeaseConflict):
            table.register("demo", "h", "i1", 6610, 6611, now=1.0, secret=wrong)
    assert table.locate("demo", now=1.0) == held
    assert table.renew("demo", "i1", now=2.0, secret=held.secret).renewed == 2.0
    moved = table.register("demo", "h", "i1", 6610, 6611, now=2.0, secret=held.secret)
    assert (moved.ports, moved.secret) == ((6610, 6611), held.secret)
    assert table.release("demo", "i1", now=2.0, secret=held.secret) is True


def test_takeoverGetsANewSecret():
    """A takeover (same host and ports) replaces the holder; the old secret is worthless."""
    table = secretTable()
    old = table.lease("demo", "h", "old", now=0.0)
    new = table.register("demo", "h", "new", *old.ports, now=1.0, takeover=True)
    assert new.secret != old.secret
    with pytest.raises(LeaseConflict):
        table.renew("demo", "old", now=1.5, secret=old.secret)
    with pytest.raises(LeaseConflict):
        table.register("demo", "h2", "other", *old.ports, now=1.5, takeover=True)


def test_leasesPerHostCapped():
    """One host cannot fill the table; other hosts still get leases."""
    table = secretTable(maxPerHost=3)
    for name in ("a", "b", "c"):
        table.lease(name, "greedy", name, now=0.0)
    with pytest.raises(LeaseError, match="'greedy' already holds 3 leases"):
        table.lease("d", "greedy", "d", now=0.0)
    with pytest.raises(LeaseError, match="already holds 3 leases"):
        table.register("d", "greedy", "d", 6690, 6691, now=0.0)
    assert table.lease("d", "modest", "d", now=0.0).ports == (6600, 6601)


# -- several dispatchers per service (issue 13) ----------------------------


def test_dispatchersOfOneServiceHoldTheirOwnLeases(table):
    """Two dispatchers of one service with disjoint keywords each get a pair of their own."""
    motors = table.lease("DEIMOT", "h", "i1", now=0.0, secret=SECRET, dispatcher="Motors",
                         keywords=["m1", "M2"])
    temps = table.lease("deimot", "h", "i2", now=0.0, secret=SECRET, dispatcher="temps",
                        keywords=["TEMP"])
    assert (motors.service, motors.dispatcher, motors.keywords) == (
        "deimot", "motors", frozenset({"M1", "M2"}))
    assert (temps.dispatcher, temps.keywords) == ("temps", frozenset({"TEMP"}))
    assert motors.ports == (6600, 6601) and temps.ports == (6602, 6603)
    assert motors.label == "deimot/motors"
    assert table.dispatchers("Deimot", now=1.0) == [motors, temps]
    assert [lease.dispatcher for lease in table.leases(1.0)] == ["motors", "temps"]
    assert len(table) == 2
    # Each renews and releases its own lease.
    assert table.renew("deimot", "i2", now=2.0, secret=SECRET, dispatcher="TEMPS").renewed == 2.0
    assert table.expire(3.0) == [motors]
    assert table.dispatchers("deimot", now=3.0) == [dataclasses.replace(temps, renewed=2.0)]
    assert table.release("deimot", "i2", now=3.0, secret=SECRET, dispatcher="temps") is True
    assert table.dispatchers("deimot", now=3.0) == []


def test_defaultDispatcherIsTheServiceName(table):
    """No dispatcher name means the service's own: today's single dispatcher, unchanged."""
    lease = table.lease("Demo", "h", "i1", now=0.0, secret=SECRET)
    assert (lease.dispatcher, lease.label) == ("demo", "demo")
    assert table.lease("demo", "h", "i1", now=1.0, secret=SECRET, dispatcher="DEMO") == \
        dataclasses.replace(lease, renewed=1.0)
    assert table.renew("demo", "i1", now=2.0, secret=SECRET, dispatcher="").renewed == 2.0
    with pytest.raises(LeaseConflict) as caught:
        table.lease("demo", "h2", "i2", now=2.0, secret=SECRET, dispatcher="demo")
    assert str(caught.value).startswith("service 'demo' is held by another dispatcher")
    assert caught.value.detail["dispatcher"] == "demo"
    assert "keyword" not in caught.value.detail


def test_keywordOfAnotherDispatcherRefused(table):
    """A keyword a live dispatcher of the service owns is refused, naming keyword and owner."""
    motors = table.lease("deimot", "hostA", "i1", now=0.0, secret=SECRET, dispatcher="motors",
                         keywords=["TEMP", "M1"])
    before = table.leases(0.3)
    with pytest.raises(LeaseConflict) as caught:
        table.lease("deimot", "hostB", "i2", now=0.3, secret=SECRET, dispatcher="extra",
                    keywords=["X", "temp"])
    assert str(caught.value) == (
        "keyword DEIMOT.TEMP is served by dispatcher 'motors' of service 'deimot' on host "
        "'hostA', ports 6600/6601, which renewed its lease 0.3 s ago (it expires in 2.7 s "
        "unless renewed)"
    )
    detail = caught.value.detail
    assert (detail["keyword"], detail["dispatcher"], detail["service"]) == (
        "TEMP", "motors", "deimot")
    assert (detail["host"], detail["dispatchPort"], detail["broadcastPort"]) == (
        "hostA", 6600, 6601)
    assert detail["expiresIn"] == 2.7 and detail["instance"] == "i1"
    assert motors.secret not in repr(detail)
    # By register too, and the message counts the other clashes.
    with pytest.raises(LeaseConflict, match=r"keyword DEIMOT\.M1 \(and 1 more\) is served by "
                                            r"dispatcher 'motors'"):
        table.register("deimot", "hostB", "i2", 6610, 6611, now=0.3, secret=SECRET,
                       dispatcher="extra", keywords=["temp", "m1"])
    assert table.leases(0.3) == before
    # Another service may have a keyword of the same name: names are per service.
    other = table.lease("other", "hostA", "i3", now=0.3, secret=SECRET, keywords=["TEMP"])
    assert table.owner("other", "temp", now=0.3) == other
    assert table.owner("deimot", "temp", now=0.3) == motors


def test_keywordFreedWhenItsOwnerExpiresOrReleases(table):
    """A refused keyword is granted once its owner's lease expired or was released."""
    table.lease("deimot", "h", "i1", now=0.0, secret=SECRET, dispatcher="a", keywords=["K1"])
    table.lease("deimot", "h", "i2", now=0.0, secret=SECRET, dispatcher="b", keywords=["K2"])
    with pytest.raises(LeaseConflict):
        table.lease("deimot", "h", "i3", now=2.9, secret=SECRET, dispatcher="c",
                    keywords=["K1"])
    taken = table.lease("deimot", "h", "i3", now=3.0, secret=SECRET, dispatcher="c",
                        keywords=["K1"])
    assert table.owner("deimot", "K1", now=3.0) == taken
    table.lease("deimot", "h", "i2", now=3.0, secret=SECRET, dispatcher="b", keywords=["K2"])
    with pytest.raises(LeaseConflict):
        table.register("deimot", "h", "i4", 6690, 6691, now=3.0, secret=SECRET,
                       dispatcher="d", keywords=["K2"])
    assert table.release("deimot", "i2", now=3.0, secret=SECRET, dispatcher="b") is True
    freed = table.register("deimot", "h", "i4", 6690, 6691, now=3.0, secret=SECRET,
                           dispatcher="d", keywords=["K2"])
    assert table.owner("deimot", "k2", now=3.0) == freed


def test_sameDispatcherNameFollowsTheOneOwnerRule(table):
    """Two processes with one dispatcher name: conflict, wait for expiry, or take over."""
    held = table.lease("deimot", "h", "i1", now=0.0, secret=SECRET, dispatcher="motors",
                       keywords=["M1"])
    with pytest.raises(LeaseConflict) as caught:
        table.lease("deimot", "h", "i2", now=1.0, secret=SECRET, dispatcher="MOTORS",
                    keywords=["M1"])
    assert str(caught.value).startswith(
        "dispatcher 'motors' of service 'deimot' is held by another dispatcher "
        "(instance 'i1') on host 'h', ports 6600/6601")
    assert caught.value.detail["dispatcher"] == "motors"
    assert "keyword" not in caught.value.detail
    with pytest.raises(LeaseConflict):
        table.renew("deimot", "i2", now=1.0, secret=SECRET, dispatcher="motors")
    assert table.release("deimot", "i2", now=1.0, secret=SECRET, dispatcher="motors") is False
    # A restarted instance on the same host and ports takes over at once, keywords included.
    new = table.register("deimot", "h", "i2", *held.ports, now=1.0, takeover=True,
                         secret=SECRET, dispatcher="motors", keywords=["M1", "M3"])
    assert (new.instance, new.keywords) == ("i2", frozenset({"M1", "M3"}))
    assert table.dispatchers("deimot", now=1.0) == [new]
    # Otherwise, after expiry.
    assert table.lease("deimot", "h2", "i3", now=4.0, secret=SECRET, dispatcher="motors",
                       keywords=["M1"]).instance == "i3"


def test_takeoverRefusedForAKeywordOfAnotherDispatcher(table):
    """A takeover of one's own name still may not take another dispatcher's keyword."""
    held = table.lease("deimot", "h", "i1", now=0.0, secret=SECRET, dispatcher="a",
                       keywords=["K1"])
    table.lease("deimot", "h", "i2", now=0.0, secret=SECRET, dispatcher="b", keywords=["K2"])
    before = table.leases(1.0)
    with pytest.raises(LeaseConflict, match="keyword DEIMOT.K2 is served by dispatcher 'b'"):
        table.register("deimot", "h", "i3", *held.ports, now=1.0, takeover=True, secret=SECRET,
                       dispatcher="a", keywords=["K1", "K2"])
    assert table.leases(1.0) == before


def test_stickyPortsPerDispatcher(table):
    """Each dispatcher of a service gets its own previous pair back, not its sibling's."""
    a = table.lease("deimot", "h", "ia", now=0.0, secret=SECRET, dispatcher="a")
    b = table.lease("deimot", "h", "ib", now=0.0, secret=SECRET, dispatcher="b")
    table.lease("other", "h", "io", now=0.0, secret=SECRET)
    table.release("deimot", "ia", now=0.0, secret=SECRET, dispatcher="a")
    table.release("deimot", "ib", now=0.0, secret=SECRET, dispatcher="b")
    # b comes back first: it gets its own pair, not the lowest free one (a's).
    assert table.lease("deimot", "h", "ib2", now=1.0, secret=SECRET,
                       dispatcher="b").ports == b.ports
    assert table.lease("deimot", "h", "ia2", now=1.0, secret=SECRET,
                       dispatcher="a").ports == a.ports


def test_holderChangesItsKeywords(table):
    """The holder may change its list; a conflicting change is refused and changes nothing."""
    table.lease("deimot", "h", "i1", now=0.0, secret=SECRET, dispatcher="a", keywords=["K1"])
    table.lease("deimot", "h", "i2", now=0.0, secret=SECRET, dispatcher="b", keywords=["K2"])
    changed = table.lease("deimot", "h", "i1", now=1.0, secret=SECRET, dispatcher="a",
                          keywords=["K3", "K4"])
    assert (changed.keywords, changed.ports, changed.renewed) == (
        frozenset({"K3", "K4"}), (6600, 6601), 1.0)
    assert table.owner("deimot", "K1", now=1.0) is None  # given up: free for anyone
    assert table.owner("deimot", "K4", now=1.0) == changed
    # Register, as a dispatcher announcing a keyword added while it runs.
    more = table.register("deimot", "h", "i1", 6600, 6601, now=1.5, secret=SECRET,
                          dispatcher="a", keywords=["K3", "K4", "K5"])
    assert (more.keywords, more.granted) == (frozenset({"K3", "K4", "K5"}), 0.0)
    before = table.leases(2.0)
    for attempt in (
        lambda: table.lease("deimot", "h", "i1", now=2.0, secret=SECRET, dispatcher="a",
                            keywords=["K3", "K2"]),
        lambda: table.register("deimot", "h", "i1", 6600, 6601, now=2.0, secret=SECRET,
                               dispatcher="a", keywords=["K2"]),
        lambda: table.lease("deimot", "h", "i1", now=2.0, secret=SECRET, dispatcher="a",
                            avoid=[6600], keywords=["K2"]),
    ):
        with pytest.raises(LeaseConflict, match="keyword DEIMOT.K2 is served by dispatcher 'b'"):
            attempt()
        assert table.leases(2.0) == before
    assert table.owner("deimot", "K5", now=2.0) == more
    # A renewal keeps the keywords.
    assert table.renew("deimot", "i1", now=2.5, secret=SECRET, dispatcher="a").keywords == \
        more.keywords


def test_ownerAndDispatchers(table):
    """owner() names the live dispatcher of a keyword, dispatchers() a service's, by name."""
    assert table.dispatchers("deimot", now=0.0) == []
    assert table.owner("deimot", "K1", now=0.0) is None
    z = table.lease("deimot", "h", "iz", now=0.0, secret=SECRET, dispatcher="z", keywords=["K1"])
    a = table.lease("deimot", "h", "ia", now=1.0, secret=SECRET, dispatcher="a", keywords=["K2"])
    d = table.lease("deimot", "h", "id", now=0.0, secret=SECRET, keywords=["K3"])
    assert table.dispatchers("DEIMOT", now=1.0) == [a, d, z]
    assert table.owner("Deimot", "k1", now=1.0) == z
    assert table.owner("deimot", "nope", now=1.0) is None
    assert table.owner("other", "K1", now=1.0) is None
    # locate() gives the dispatcher named after the service, else the first by name.
    assert table.locate("deimot", now=1.0) == d
    assert table.locate("deimot", now=1.0, dispatcher="Z") == z
    table.release("deimot", "id", now=1.0, secret=SECRET)
    assert table.locate("deimot", now=1.0) == a
    assert table.owner("deimot", "K1", now=3.0) is None  # z expired
    assert table.dispatchers("deimot", now=3.0) == [a]
    with pytest.raises(LeaseError):
        table.owner("deimot", "", now=3.0)


@pytest.mark.parametrize("keywords", [
    "TEMP", b"TEMP", [""], [None], [5], ["OK", 5], 7, None,
])
def test_badKeywordsRefused(table, keywords):
    """Keywords are a collection of non-empty names; anything else is a LeaseError."""
    with pytest.raises(LeaseError) as caught:
        table.lease("demo", "h", "i1", now=0.0, secret=SECRET, keywords=keywords)
    assert not isinstance(caught.value, LeaseConflict)
    with pytest.raises(LeaseError):
        table.register("demo", "h", "i1", 6600, 6601, now=0.0, secret=SECRET,
                       keywords=keywords)
    assert len(table) == 0


def test_keywordCountBounded(table):
    """A dispatcher may claim at most MAX_KEYWORDS keywords."""
    from cauldron.protocol.leases import MAX_KEYWORDS

    many = [f"K{i}" for i in range(MAX_KEYWORDS)]
    assert len(table.lease("big", "h", "i1", now=0.0, secret=SECRET,
                           keywords=many).keywords) == MAX_KEYWORDS
    with pytest.raises(LeaseError, match=f"at most {MAX_KEYWORDS} keywords"):
        table.lease("huge", "h", "i2", now=0.0, secret=SECRET, keywords=many + ["ONE_MORE"])
    assert [lease.service for lease in table.leases(0.0)] == ["big"]


def test_badDispatcherName(table):
    """A dispatcher name is a string."""
    for name in (5, b"x", ["x"]):
        with pytest.raises(LeaseError):
            table.lease("demo", "h", "i", now=0.0, secret=SECRET, dispatcher=name)
    assert len(table) == 0


def test_portConflictNamesTheDispatcher(table):
    """Ports held by a sibling dispatcher are refused, naming it; ports are per lease."""
    table.lease("deimot", "h", "i1", now=0.0, secret=SECRET, dispatcher="motors")
    with pytest.raises(LeaseConflict) as caught:
        table.register("deimot", "h", "i2", 6600, 6601, now=1.0, secret=SECRET,
                       dispatcher="temps")
    assert str(caught.value).startswith(
        "dispatcher 'temps' of service 'deimot' cannot register ports 6600/6601: "
        "port 6600 is held by dispatcher 'motors' of service 'deimot' on host 'h'")
    assert caught.value.detail["dispatcher"] == "motors"


def test_leasesPerHostCountDispatchers():
    """The per-host cap counts leases, so dispatchers of one service count one each."""
    table = secretTable(maxPerHost=2)
    table.lease("deimot", "greedy", "a", now=0.0, dispatcher="a")
    table.lease("deimot", "greedy", "b", now=0.0, dispatcher="b")
    with pytest.raises(LeaseError, match="'greedy' already holds 2 leases"):
        table.lease("deimot", "greedy", "c", now=0.0, dispatcher="c")


def test_renewUnknownDispatcherNamesIt(table):
    """A renewal of a lease the router forgot names the dispatcher, so it registers again."""
    with pytest.raises(LeaseError, match="dispatcher 'motors' of service 'deimot' holds no "
                                         "live lease"):
        table.renew("deimot", "i1", now=0.0, secret=SECRET, dispatcher="motors")


# -- model-based test -----------------------------------------------------

FIRST, LAST = 6600, 6610  # five pairs: exhaustion is reached often
SERVICES = ["a", "b", "A"]
DISPATCHERS = [None, "x", "X", "y"]  # None: the service's own name
KEYWORDS = ["K1", "k1", "K2", "K3"]
INSTANCES = ["i1", "i2"]
HOSTS = ["h1", "h2"]
ALIGNED = [(p, p + 1) for p in range(FIRST, LAST - 1, 2)]
EXPLICIT = ALIGNED + [(6601, 6602), (6609, 6610), (7000, 7001), (7000, 7002)]
PORTS = sorted({port for pair in EXPLICIT for port in pair})


@dataclasses.dataclass
class ModelLease:
    instance: str
    host: str
    ports: tuple
    renewed: float
    explicit: bool
    keywords: frozenset


def identOf(service, dispatcher):
    service = service.lower()
    return (service, (dispatcher or service).lower())


class LeaseMachine(RuleBasedStateMachine):
    """Random lease/register/renew/release/advance steps against an in-memory model.

    Leases are keyed by (service, dispatcher) and claim keywords: one owner
    per dispatcher name and one per keyword of a service, at every instant.
    """

    def __init__(self):
        super().__init__()
        self.table = LeaseTable(FIRST, LAST, TTL, newSecret=knownSecret)
        self.now = 0.0
        self.live = {}
        self.previous = {}

    # model helpers

    def modelExpire(self):
        for ident in [i for i, m in self.live.items() if self.now >= m.renewed + TTL]:
            del self.live[ident]

    def taken(self, host, besides=None):
        """Ports held on ``host`` by live leases other than ``besides``."""
        return {port for i, m in self.live.items() if m.host == host and i != besides
                for port in m.ports}

    def clashes(self, ident, keywords):
        """Whether another live dispatcher of the service owns one of ``keywords``."""
        return any(i[0] == ident[0] and i != ident and m.keywords & keywords
                   for i, m in self.live.items())

    def modelStore(self, ident, instance, host, pair, keywords, explicit=False):
        self.live[ident] = ModelLease(instance, host, pair, self.now, explicit, keywords)
        if pair in ALIGNED:
            self.previous[ident] = pair

    def assertUnchanged(self, before):
        assert self.table.leases(self.now) == before

    # rules

    @rule(dt=st.sampled_from([0.0, 0.5, 1.0, 2.0, TTL, TTL + 0.5]))
    def advance(self, dt):
        self.now += dt

    @rule(
        service=st.sampled_from(SERVICES),
        dispatcher=st.sampled_from(DISPATCHERS),
        host=st.sampled_from(HOSTS),
        instance=st.sampled_from(INSTANCES),
        avoid=st.frozensets(st.sampled_from(PORTS), max_size=3),
        keywords=st.frozensets(st.sampled_from(KEYWORDS), max_size=2),
    )
    def lease(self, service, dispatcher, host, instance, avoid, keywords):
        self.modelExpire()
        ident = identOf(service, dispatcher)
        claimed = frozenset(k.upper() for k in keywords)
        before = self.table.leases(self.now)
        held = self.live.get(ident)
        try:
            got = self.table.lease(service, host, instance, self.now, avoid=avoid, secret=SECRET,
                                   dispatcher=dispatcher, keywords=keywords)
        except LeaseConflict as e:
            if held is not None and held.instance != instance:
                assert "keyword" not in e.detail
            else:
                assert self.clashes(ident, claimed)
                assert e.detail["keyword"] in claimed
            self.assertUnchanged(before)
            return
        except LeaseError:
            blocked = self.taken(host, besides=ident) | avoid
            assert all(blocked & set(p) for p in ALIGNED), "LeaseError while a pair was free"
            self.assertUnchanged(before)
            return
        assert not self.clashes(ident, claimed)
        assert (got.service, got.dispatcher) == ident
        assert got.instance == instance and got.host == host and got.keywords == claimed
        if held is not None:
            assert held.instance == instance
            if not avoid & set(held.ports) and held.host == host:
                assert got.ports == held.ports
                self.modelStore(ident, instance, host, got.ports, claimed, held.explicit)
                return
        taken = self.taken(host, besides=ident)
        free = [p for p in ALIGNED if not (set(p) & (taken | avoid))]
        prev = self.previous.get(ident)
        if prev in free:
            assert got.ports == prev, "the previous pair was free but not reused"
        else:
            assert got.ports == free[0]
        self.modelStore(ident, instance, host, got.ports, claimed)

    @rule(
        service=st.sampled_from(SERVICES),
        dispatcher=st.sampled_from(DISPATCHERS),
        host=st.sampled_from(HOSTS),
        instance=st.sampled_from(INSTANCES),
        pair=st.sampled_from(EXPLICIT),
        keywords=st.frozensets(st.sampled_from(KEYWORDS), max_size=2),
    )
    def register(self, service, dispatcher, host, instance, pair, keywords):
        self.modelExpire()
        ident = identOf(service, dispatcher)
        claimed = frozenset(k.upper() for k in keywords)
        before = self.table.leases(self.now)
        held = self.live.get(ident)
        others = self.taken(host, besides=ident)
        refused = (held is not None and held.instance != instance) \
            or self.clashes(ident, claimed) or bool(others & set(pair))
        try:
            got = self.table.register(service, host, instance, pair[0], pair[1], self.now,
                                      secret=SECRET, dispatcher=dispatcher, keywords=keywords)
        except LeaseConflict:
            assert refused
            self.assertUnchanged(before)
            return
        assert not refused
        assert got.ports == pair and got.keywords == claimed
        self.modelStore(ident, instance, host, pair, claimed, explicit=True)

    @rule(service=st.sampled_from(SERVICES), dispatcher=st.sampled_from(DISPATCHERS),
          instance=st.sampled_from(INSTANCES))
    def renew(self, service, dispatcher, instance):
        self.modelExpire()
        ident = identOf(service, dispatcher)
        held = self.live.get(ident)
        try:
            got = self.table.renew(service, instance, self.now, secret=SECRET,
                                   dispatcher=dispatcher)
        except LeaseError:
            assert held is None or held.instance != instance
            return
        assert held is not None and held.instance == instance
        assert got.renewed == self.now and got.ports == held.ports
        assert got.keywords == held.keywords
        held.renewed = self.now

    @rule(service=st.sampled_from(SERVICES), dispatcher=st.sampled_from(DISPATCHERS),
          instance=st.sampled_from(INSTANCES))
    def release(self, service, dispatcher, instance):
        self.modelExpire()
        ident = identOf(service, dispatcher)
        held = self.live.get(ident)
        expected = held is not None and held.instance == instance
        assert self.table.release(service, instance, self.now, secret=SECRET,
                                  dispatcher=dispatcher) is expected
        if expected:
            del self.live[ident]

    # invariants

    @invariant()
    def matchesModel(self):
        self.modelExpire()
        listed = self.table.leases(self.now)
        actual = {(lease.service, lease.dispatcher):
                  (lease.instance, lease.host, lease.ports, lease.renewed, lease.keywords)
                  for lease in listed}
        expected = {ident: (m.instance, m.host, m.ports, m.renewed, m.keywords)
                    for ident, m in self.live.items()}
        assert actual == expected
        assert len(self.table) == len(listed)
        assert listed == sorted(listed, key=lambda lease: (lease.service, lease.dispatcher))

    @invariant()
    def noPortTwiceOneLeasePerDispatcher(self):
        listed = self.table.leases(self.now)
        held = [(lease.host, port) for lease in listed for port in lease.ports]
        assert len(held) == len(set(held))  # a port is held once per host
        names = [(lease.service, lease.dispatcher) for lease in listed]
        assert len(names) == len(set(names))
        assert all(lease.isLive(self.now) for lease in listed)

    @invariant()
    def oneOwnerPerKeyword(self):
        for service in {name.lower() for name in SERVICES}:
            leases = self.table.dispatchers(service, self.now)
            owned = [name for lease in leases for name in lease.keywords]
            assert len(owned) == len(set(owned))
            for name in {k.upper() for k in KEYWORDS}:
                owner = self.table.owner(service, name, self.now)
                owners = [lease for lease in leases if name in lease.keywords]
                assert owners == ([] if owner is None else [owner])

    @invariant()
    def pairsInRangeOrRegistered(self):
        for lease in self.table.leases(self.now):
            assert self.table.isPair(*lease.ports) \
                or self.live[(lease.service, lease.dispatcher)].explicit


LeaseMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
TestLeaseMachine = LeaseMachine.TestCase
