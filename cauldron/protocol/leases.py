"""The router's lease table: which dispatcher owns which ports and keywords.

Pure state, no I/O and no clock: every method takes ``now`` (seconds, from the
caller's monotonic clock), so the router drives it and tests replay it.

A service may span several dispatchers, as in KTL: each dispatcher of a
service has a *dispatcher name* (the service name by default, so a service
served by one dispatcher names nothing more) and owns a set of keyword
names.  A lease is keyed by ``(service, dispatcher)``: each dispatcher holds
its own port pair, renews it, and loses it on expiry, as if it were a
service of its own.

Leases are soft state (defect 9, R5): a dispatcher renews its lease with each
heartbeat, and a lease not renewed for ``ttl`` seconds expires and frees its
ports and keywords.  Expiry is lazy: every method first calls
:meth:`LeaseTable.expire`, so no method ever sees an expired lease.

One owner per dispatcher name (R6): while a live lease is held by one
dispatcher process (its ``instance``), another process asking for the same
service and dispatcher name gets :class:`~cauldron.errors.LeaseConflict`
until the lease expires or is released.  One owner per keyword: a keyword
claimed by a live dispatcher of a service is refused to every other
dispatcher of that service, with a LeaseConflict naming the keyword and its
owner.  The proof of holding a lease is its ``secret``, drawn at random when
the lease is granted and handed only to its holder: renewing, releasing,
moving or re-leasing it takes the secret, never just the instance (which
clients see, as the owner to ask for).  A restarted router is repopulated by
:meth:`LeaseTable.register` (R3): dispatchers re-announce the ports they
already have bound and the keywords they serve.
"""

import dataclasses
import hmac
import itertools
import math
import secrets
from collections.abc import Iterable

from cauldron.errors import ConfigError, LeaseConflict, LeaseError

__all__ = ["Lease", "LeaseTable", "MAX_KEYWORDS"]

_MAX_PORT = 65535
#: the most keyword names one dispatcher may claim
MAX_KEYWORDS = 65536


@dataclasses.dataclass(frozen=True, slots=True)
class Lease:
    """One dispatcher's hold on a (dispatch, broadcast) port pair and its keywords.

    Immutable: renewing replaces the entry, so a caller's copy never changes
    under it.
    """

    service: str
    host: str
    instance: str
    dispatchPort: int
    broadcastPort: int
    granted: float
    renewed: float
    ttl: float
    #: how the dispatcher's addresses are reached (``tcp`` or ``ipc``)
    protocol: str = "tcp"
    #: the holder's proof, shown to nobody else
    secret: str = dataclasses.field(default="", repr=False)
    #: the name of the holder's key in secure mode ("" in plain mode)
    key: str = ""
    #: the dispatcher's name within its service ("" when built: the service name)
    dispatcher: str = ""
    #: the (upper-case) names of the keywords the dispatcher owns
    keywords: frozenset[str] = dataclasses.field(default=frozenset(), repr=False)

    def __post_init__(self):
        if not self.dispatcher:
            object.__setattr__(self, "dispatcher", self.service)

    @property
    def ports(self) -> tuple[int, int]:
        """The pair as ``(dispatchPort, broadcastPort)``."""
        return (self.dispatchPort, self.broadcastPort)

    @property
    def label(self) -> str:
        """``service/dispatcher`` for log lines, or just the service when they are named alike."""
        if self.dispatcher == self.service:
            return self.service
        return f"{self.service}/{self.dispatcher}"

    @property
    def expires(self) -> float:
        """The instant the lease dies unless renewed before it."""
        return self.renewed + self.ttl

    def age(self, now: float) -> float:
        """Seconds since the last renewal (what ``cauldron services`` shows)."""
        return now - self.renewed

    def expiresIn(self, now: float) -> float:
        """Seconds left before expiry, for messages telling a rival when to retry."""
        return self.expires - now

    def isLive(self, now: float) -> bool:
        """Whether the lease still holds at ``now`` (it dies at exactly ``expires``)."""
        return now < self.expires


#: what a lease is stored under: ``(service, dispatcher)``, both lower-case
_Ident = tuple[str, str]


def _serviceName(service: str) -> str:
    """Service names are case-insensitive; store them one way."""
    if not isinstance(service, str) or not service:
        raise LeaseError(f"a service name must be a non-empty string, not {service!r}")
    return service.lower()


def _ident(service: str, dispatcher: str | None) -> _Ident:
    """``(service, dispatcher)`` lower-case; no dispatcher name means the service's."""
    name = _serviceName(service)
    if dispatcher is None or dispatcher == "":
        return (name, name)
    if not isinstance(dispatcher, str):
        raise LeaseError(f"a dispatcher name must be a string, not {dispatcher!r}")
    return (name, dispatcher.lower())


def _identOf(lease: Lease) -> _Ident:
    return (lease.service, lease.dispatcher)


def _named(ident: _Ident) -> str:
    """How messages name a lease's holder: the service, plus the dispatcher if it differs."""
    service, dispatcher = ident
    if dispatcher == service:
        return f"service {service!r}"
    return f"dispatcher {dispatcher!r} of service {service!r}"


def _isPort(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= _MAX_PORT


def _avoidSet(avoid: Iterable[int]) -> frozenset[int]:
    """The ports a dispatcher found taken on its host; reject anything else early."""
    try:
        ports = frozenset(avoid)
    except TypeError:
        message = f"ports to avoid must be a collection of port numbers, not {avoid!r}"
        raise LeaseError(message) from None
    bad = sorted((p for p in ports if not _isPort(p)), key=repr)
    if bad:
        raise LeaseError(f"ports to avoid must be port numbers, not {bad[0]!r}")
    return ports


def _keywordSet(keywords: Iterable[str]) -> frozenset[str]:
    """The keyword names a dispatcher claims, upper-case; reject anything else early."""
    if isinstance(keywords, (str, bytes)):
        raise LeaseError(f"keywords must be a collection of keyword names, not {keywords!r}")
    try:
        names = list(itertools.islice(keywords, MAX_KEYWORDS + 1))
    except TypeError:
        raise LeaseError(
            f"keywords must be a collection of keyword names, not {keywords!r}"
        ) from None
    if len(names) > MAX_KEYWORDS:
        raise LeaseError(f"a dispatcher may claim at most {MAX_KEYWORDS} keywords")
    for name in names:
        if not isinstance(name, str) or not name:
            raise LeaseError(f"a keyword name must be a non-empty string, not {name!r}")
    return frozenset(name.upper() for name in names)


def _isHolder(lease: Lease, instance: str, secret: str) -> bool:
    """Whether a request proves it comes from the lease's holder."""
    return (lease.instance == instance and isinstance(secret, str) and bool(secret)
            and hmac.compare_digest(lease.secret, secret))


def _holder(lease: Lease, now: float) -> dict:
    """What a rival needs to know about a lease's holder (see LeaseConflict)."""
    return {
        "service": lease.service,
        "dispatcher": lease.dispatcher,
        "host": lease.host,
        "instance": lease.instance,
        "dispatchPort": lease.dispatchPort,
        "broadcastPort": lease.broadcastPort,
        "protocol": lease.protocol,
        "age": round(lease.age(now), 3),
        "expiresIn": round(lease.expiresIn(now), 3),
        "ttl": lease.ttl,
    }


def _seconds(value: float) -> str:
    """Round up to a tenth, so a live lease never reads as expiring in 0.0 s."""
    return f"{math.ceil(value * 10) / 10:.1f}"


class LeaseTable:
    """Port pairs leased from ``[firstPort, lastPort)`` to dispatchers, with a TTL.

    Pairs are ``(p, p + 1)`` for ``p`` in ``range(firstPort, lastPort - 1, 2)``:
    6600..6700 gives 50 pairs, the last being (6698, 6699), as the original
    router did.  A dispatcher's last in-range pair is remembered (up to
    ``remember`` (service, dispatcher) names, least recently used forgotten
    first) so that a restarted dispatcher gets its old ports back when they
    are free.  A host holds at most ``maxPerHost`` leases (one per dispatcher).
    """

    def __init__(self, firstPort: int, lastPort: int, ttl: float, *, remember: int = 1024,
                 maxPerHost: int = 64, newSecret=lambda: secrets.token_hex(16)):
        lastOk = _isPort(lastPort) or lastPort == _MAX_PORT + 1  # the range is half-open
        if not (_isPort(firstPort) and lastOk):
            raise ConfigError(
                f"first-port and last-port must be port numbers, not {firstPort!r} and {lastPort!r}"
            )
        if lastPort - firstPort < 2:
            raise ConfigError(
                f"first-port {firstPort} and last-port {lastPort} leave no port pair: "
                f"need first-port + 2 <= last-port <= {_MAX_PORT + 1}"
            )
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not 0 < ttl < math.inf:
            raise ConfigError(f"the lease ttl must be a positive number of seconds, not {ttl!r}")
        if isinstance(remember, bool) or not isinstance(remember, int) or remember < 0:
            raise ConfigError(f"remember must be a non-negative integer, not {remember!r}")
        self.firstPort = firstPort
        self.lastPort = lastPort
        self.ttl = ttl
        self._remember = remember
        self._maxPerHost = maxPerHost
        self._newSecret = newSecret
        self._leases: dict[_Ident, Lease] = {}
        # Ports belong to a host: two hosts may use the same port numbers.
        self._owners: dict[tuple[str, int], _Ident] = {}
        # (service, KEYWORD) -> the lease owning it; every entry is a live lease's.
        self._keywordOwners: dict[tuple[str, str], _Ident] = {}
        # Insertion order is recency order: the first key is forgotten first.
        self._previous: dict[_Ident, tuple[int, int]] = {}

    def __repr__(self) -> str:
        return (
            f"<LeaseTable [{self.firstPort}, {self.lastPort}) ttl={self.ttl}"
            f" leases={len(self._leases)}>"
        )

    def __len__(self) -> int:
        """Leases held as of the last call (expiry is lazy: call expire(now) first)."""
        return len(self._leases)

    @property
    def pairs(self) -> range:
        """The dispatch port of every pair the table hands out, lowest first."""
        return range(self.firstPort, self.lastPort - 1, 2)

    def isPair(self, dispatchPort: int, broadcastPort: int) -> bool:
        """Whether the ports are one of the table's own pairs (not an explicit registration)."""
        return dispatchPort in self.pairs and broadcastPort == dispatchPort + 1

    # -- queries ----------------------------------------------------------

    def expire(self, now: float) -> list[Lease]:
        """Drop leases not renewed in time (``now >= renewed + ttl``); return them, sorted.

        Sorted by (service, dispatcher), as :meth:`leases` is.
        """
        gone = [lease for lease in self._leases.values() if not lease.isLive(now)]
        for lease in gone:
            self._drop(lease)
        return sorted(gone, key=_identOf)

    def dispatchers(self, service: str, now: float) -> list[Lease]:
        """The live leases of a service's dispatchers, sorted by dispatcher name."""
        self.expire(now)
        name = _serviceName(service)
        return sorted((lease for lease in self._leases.values() if lease.service == name),
                      key=_identOf)

    def owner(self, service: str, keyword: str, now: float) -> Lease | None:
        """The live lease of the dispatcher owning ``keyword`` of ``service``, or None."""
        self.expire(now)
        name = _serviceName(service)
        if not isinstance(keyword, str) or not keyword:
            raise LeaseError(f"a keyword name must be a non-empty string, not {keyword!r}")
        ident = self._keywordOwners.get((name, keyword.upper()))
        return None if ident is None else self._leases[ident]

    def locate(self, service: str, now: float, *, dispatcher: str | None = None) -> Lease | None:
        """One lease of a service, or None; a lookup never renews.

        With ``dispatcher``, that dispatcher's lease.  Without, the lease of
        the dispatcher named after the service if it is live, else the first
        live one by name (see :meth:`dispatchers` for all of them).
        """
        self.expire(now)
        if dispatcher is not None:
            return self._leases.get(_ident(service, dispatcher))
        ident = _ident(service, None)
        lease = self._leases.get(ident)
        if lease is not None:
            return lease
        others = self.dispatchers(service, now)
        return others[0] if others else None

    def leases(self, now: float) -> list[Lease]:
        """Every live lease, sorted by (service, dispatcher)."""
        self.expire(now)
        return sorted(self._leases.values(), key=_identOf)

    # -- changes ----------------------------------------------------------

    def lease(
        self,
        service: str,
        host: str,
        instance: str,
        now: float,
        avoid: Iterable[int] = (),
        ttl: float | None = None,
        protocol: str = "tcp",
        secret: str = "",
        key: str = "",
        *,
        dispatcher: str | None = None,
        keywords: Iterable[str] = (),
    ) -> Lease:
        """Grant a dispatcher a port pair, or give its live lease back to its holder.

        ``dispatcher`` names the dispatcher within the service (None: the
        service name); ``keywords`` are the names it owns, refused with a
        LeaseConflict if another live dispatcher of the service owns one of
        them.  The holder asking again replaces its keywords with these (a
        conflict refuses the change and leaves its lease as it was).
        ``avoid`` lists ports the dispatcher found taken on its host; it asks
        again with the accumulated list, so a held pair touching it is moved.
        ``ttl`` overrides the table's lease lifetime for this lease (a
        dispatcher with slow heartbeats needs longer).  The holder of a live
        lease proves it with the lease's ``secret``.  ``key`` names the
        requester's key in secure mode, kept with the lease.
        """
        self.expire(now)
        ident = _ident(service, dispatcher)
        avoided = _avoidSet(avoid)
        claimed = _keywordSet(keywords)
        lifetime = self._ttl(ttl)
        held = self._leases.get(ident)
        if held is not None and not _isHolder(held, instance, secret):
            raise self._conflict(held, now)
        self._checkKeywords(ident, claimed, now)
        if held is not None and avoided.isdisjoint(held.ports) and held.host == host:
            return self._store(dataclasses.replace(
                held, renewed=now, ttl=lifetime, protocol=protocol, keywords=claimed))
        self._checkRoom(host, ident)
        pair = self._choose(ident, host, avoided)
        if pair is None:
            raise LeaseError(self._exhausted(host, avoided))
        return self._store(Lease(
            ident[0], host, instance, pair[0], pair[1], now, now, lifetime, protocol,
            held.secret if held is not None else self._newSecret(),
            held.key if held is not None else key,
            ident[1], claimed,
        ))

    def register(
        self,
        service: str,
        host: str,
        instance: str,
        dispatchPort: int,
        broadcastPort: int,
        now: float,
        ttl: float | None = None,
        protocol: str = "tcp",
        takeover: bool = False,
        secret: str = "",
        key: str = "",
        *,
        dispatcher: str | None = None,
        keywords: Iterable[str] = (),
    ) -> Lease:
        """Record ports a dispatcher already has bound (after a router restart, or fixed ports).

        The holder (proved by the ``secret``) registering other ports moves
        its lease: the process that bound the sockets knows best where it
        listens; registering other ``keywords`` replaces its keywords.  A
        dispatcher name nobody holds gets a new lease and secret.  With
        ``takeover``, a new instance replaces the holder of the lease if the
        holder is on the same host with the same ports and protocol: the new
        instance has just bound those ports, so the holder no longer listens
        there (it crashed and was restarted at once), and in secure mode it
        has the holder's ``key``.  Keywords another live dispatcher of the
        service owns are refused (LeaseConflict), as by :meth:`lease`.  A
        refused request changes nothing.
        """
        self.expire(now)
        ident = _ident(service, dispatcher)
        if not (_isPort(dispatchPort) and _isPort(broadcastPort)) or dispatchPort == broadcastPort:
            raise LeaseError(
                f"{_named(ident)} registered ports {dispatchPort!r}/{broadcastPort!r}: "
                f"need two distinct port numbers"
            )
        claimed = _keywordSet(keywords)
        lifetime = self._ttl(ttl)
        held = self._leases.get(ident)
        if held is not None and not _isHolder(held, instance, secret):
            replaceable = takeover and held.host == host and held.protocol == protocol \
                and held.ports == (dispatchPort, broadcastPort) and held.key == key
            if not replaceable:
                raise self._conflict(held, now)
            held = None  # replaced below, once nothing else refuses the request
        self._checkKeywords(ident, claimed, now)
        for port in (dispatchPort, broadcastPort):
            owner = self._owners.get((host, port))
            if owner is not None and owner != ident:
                other = self._leases[owner]
                raise LeaseConflict(
                    f"{_named(ident)} cannot register ports {dispatchPort}/{broadcastPort}: "
                    f"port {port} is held by {_named(owner)} on host {other.host!r} "
                    f"(ports {other.dispatchPort}/{other.broadcastPort}), "
                    f"expiring in {_seconds(other.expiresIn(now))} s",
                    detail=_holder(other, now),
                )
        if held is not None and held.ports == (dispatchPort, broadcastPort) and held.host == host:
            return self._store(dataclasses.replace(
                held, renewed=now, ttl=lifetime, protocol=protocol, keywords=claimed))
        self._checkRoom(host, ident)
        return self._store(Lease(
            ident[0], host, instance, dispatchPort, broadcastPort, now, now, lifetime, protocol,
            held.secret if held is not None else self._newSecret(),
            held.key if held is not None else key,
            ident[1], claimed,
        ))

    def renew(self, service: str, instance: str, now: float, secret: str = "", *,
              dispatcher: str | None = None) -> Lease:
        """Keep a lease alive (a heartbeat); failing tells the dispatcher to register again.

        Anyone but the holder (wrong secret) gets LeaseConflict naming the holder.
        """
        self.expire(now)
        ident = _ident(service, dispatcher)
        held = self._leases.get(ident)
        if held is None:
            raise LeaseError(f"{_named(ident)} holds no live lease: register again")
        if not _isHolder(held, instance, secret):
            raise self._conflict(held, now)
        return self._store(dataclasses.replace(held, renewed=now))

    def release(self, service: str, instance: str, now: float, secret: str = "", *,
                dispatcher: str | None = None) -> bool:
        """Drop the holder's lease so its ports and keywords are free at once.

        False if the caller held no such lease.
        """
        self.expire(now)
        held = self._leases.get(_ident(service, dispatcher))
        if held is None or not _isHolder(held, instance, secret):
            return False
        self._drop(held)
        return True

    # -- internals --------------------------------------------------------

    def _ttl(self, ttl: float | None) -> float:
        if ttl is None:
            return self.ttl
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not 0 < ttl < math.inf:
            raise LeaseError(f"a lease ttl must be a positive number of seconds, not {ttl!r}")
        return max(float(ttl), self.ttl)

    def _checkRoom(self, host: str, ident: _Ident) -> None:
        """A host holds at most ``maxPerHost`` leases: one host cannot fill the table.

        The lease ``ident`` itself (being moved or taken over) is not counted.
        """
        held = sum(1 for other, lease in self._leases.items()
                   if lease.host == host and other != ident)
        if held >= self._maxPerHost:
            raise LeaseError(f"host {host!r} already holds {held} leases, the most one host may")

    def _checkKeywords(self, ident: _Ident, claimed: frozenset[str], now: float) -> None:
        """Refuse keywords another live dispatcher of the service owns, naming one and its owner."""
        service = ident[0]
        owners = self._keywordOwners
        clashes = [name for name in claimed if owners.get((service, name), ident) != ident]
        if not clashes:
            return
        keyword = min(clashes)
        other = self._leases[owners[(service, keyword)]]
        more = len(clashes) - 1
        detail = _holder(other, now)
        detail["keyword"] = keyword
        raise LeaseConflict(
            f"keyword {service.upper()}.{keyword}"
            f"{f' (and {more} more)' if more else ''} is served by dispatcher "
            f"{other.dispatcher!r} of service {service!r} on host {other.host!r}, "
            f"ports {other.dispatchPort}/{other.broadcastPort}, "
            f"which renewed its lease {_seconds(other.age(now))} s ago "
            f"(it expires in {_seconds(other.expiresIn(now))} s unless renewed)",
            detail=detail,
        )

    def _isFree(self, host: str, pair: tuple[int, int], avoided: frozenset[int],
                ident: _Ident) -> bool:
        return all(port not in avoided and self._owners.get((host, port), ident) == ident
                   for port in pair)

    def _choose(self, ident: _Ident, host: str,
                avoided: frozenset[int]) -> tuple[int, int] | None:
        """The dispatcher's previous pair if free, else the lowest free pair, else None.

        Ports the lease ``ident`` holds itself count as free.
        """
        previous = self._previous.get(ident)
        if previous is not None and self._isFree(host, previous, avoided, ident):
            return previous
        for port in self.pairs:
            if self._isFree(host, (port, port + 1), avoided, ident):
                return (port, port + 1)
        return None

    def _store(self, lease: Lease) -> Lease:
        ident = _identOf(lease)
        old = self._leases.get(ident)
        if old is not None and (old.ports != lease.ports or old.host != lease.host):
            self._dropPorts(old)
        if old is not None and old.keywords is not lease.keywords \
                and old.keywords != lease.keywords:
            self._dropKeywords(old)
            old = None
        self._leases[ident] = lease
        for port in lease.ports:
            self._owners[(lease.host, port)] = ident
        if old is None:  # a new lease, or new keywords: index them
            for name in lease.keywords:
                self._keywordOwners[(lease.service, name)] = ident
        if self.isPair(*lease.ports):
            self._previous.pop(ident, None)
            self._previous[ident] = lease.ports
            while len(self._previous) > self._remember:
                del self._previous[next(iter(self._previous))]
        return lease

    def _drop(self, lease: Lease) -> None:
        del self._leases[_identOf(lease)]
        self._dropPorts(lease)
        self._dropKeywords(lease)

    def _dropPorts(self, lease: Lease) -> None:
        ident = _identOf(lease)
        for port in lease.ports:
            if self._owners.get((lease.host, port)) == ident:
                del self._owners[(lease.host, port)]

    def _dropKeywords(self, lease: Lease) -> None:
        ident = _identOf(lease)
        for name in lease.keywords:
            if self._keywordOwners.get((lease.service, name)) == ident:
                del self._keywordOwners[(lease.service, name)]

    def _conflict(self, held: Lease, now: float) -> LeaseConflict:
        return LeaseConflict(
            f"{_named(_identOf(held))} is held by another dispatcher "
            f"(instance {held.instance!r}) "
            f"on host {held.host!r}, ports {held.dispatchPort}/{held.broadcastPort}, "
            f"which renewed its lease {_seconds(held.age(now))} s ago "
            f"(it expires in {_seconds(held.expiresIn(now))} s unless renewed)",
            detail=_holder(held, now),
        )

    def _exhausted(self, host: str, avoided: frozenset[int]) -> str:
        count = sum(1 for lease in self._leases.values() if lease.host == host)
        holders = "1 dispatcher holds a lease" if count == 1 \
            else f"{count} dispatchers hold leases"
        message = (
            f"no free port pair in [{self.firstPort}, {self.lastPort}) on host {host!r}: {holders}"
        )
        skipped = sum(1 for port in avoided if self.firstPort <= port < self.lastPort)
        if skipped:
            message += f", {skipped} port{'' if skipped == 1 else 's'} in use on the host avoided"
        return message
