"""The router's lease table: which dispatcher owns which service and ports.

Pure state, no I/O and no clock: every method takes ``now`` (seconds, from the
caller's monotonic clock), so the router drives it and tests replay it.

Leases are soft state (defect 9, R5): a dispatcher renews its lease with each
heartbeat, and a lease not renewed for ``ttl`` seconds expires and frees its
ports.  Expiry is lazy: every method first calls :meth:`LeaseTable.expire`, so
no method ever sees an expired lease.

One owner per service at any instant (R6): while a live lease is held by one
dispatcher process (its ``instance``), another process asking for the same
service gets :class:`~cauldron.errors.LeaseConflict` until the lease expires or
is released.  The proof of holding a lease is its ``secret``, drawn at random
when the lease is granted and handed only to its holder: renewing,
releasing, moving or re-leasing it takes the secret, never just the instance
(which clients see, as the owner to ask for).  A restarted router is
repopulated by :meth:`LeaseTable.register` (R3): dispatchers re-announce the
ports they already have bound.
"""

import dataclasses
import hmac
import math
import secrets
from collections.abc import Iterable

from cauldron.errors import ConfigError, LeaseConflict, LeaseError

__all__ = ["Lease", "LeaseTable"]

_MAX_PORT = 65535


@dataclasses.dataclass(frozen=True, slots=True)
class Lease:
    """One service's hold on a (dispatch, broadcast) port pair.

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

    @property
    def ports(self) -> tuple[int, int]:
        """The pair as ``(dispatchPort, broadcastPort)``."""
        return (self.dispatchPort, self.broadcastPort)

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


def _serviceName(service: str) -> str:
    """Service names are case-insensitive; store them one way."""
    if not isinstance(service, str) or not service:
        raise LeaseError(f"a service name must be a non-empty string, not {service!r}")
    return service.lower()


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


def _isHolder(lease: Lease, instance: str, secret: str) -> bool:
    """Whether a request proves it comes from the lease's holder."""
    return (lease.instance == instance and isinstance(secret, str) and bool(secret)
            and hmac.compare_digest(lease.secret, secret))


def _holder(lease: Lease, now: float) -> dict:
    """What a rival needs to know about a lease's holder (see LeaseConflict)."""
    return {
        "service": lease.service,
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
    """Port pairs leased from ``[firstPort, lastPort)`` to services, with a TTL.

    Pairs are ``(p, p + 1)`` for ``p`` in ``range(firstPort, lastPort - 1, 2)``:
    6600..6700 gives 50 pairs, the last being (6698, 6699), as the original
    router did.  A service's last in-range pair is remembered (up to
    ``remember`` service names, least recently used forgotten first) so that a
    restarted dispatcher gets its old ports back when they are free.
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
        self._leases: dict[str, Lease] = {}
        # Ports belong to a host: two hosts may use the same port numbers.
        self._owners: dict[tuple[str, int], str] = {}
        # Insertion order is recency order: the first key is forgotten first.
        self._previous: dict[str, tuple[int, int]] = {}

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
        """Drop leases not renewed in time (``now >= renewed + ttl``); return them by service."""
        gone = [lease for lease in self._leases.values() if not lease.isLive(now)]
        for lease in gone:
            self._drop(lease)
        return sorted(gone, key=lambda lease: lease.service)

    def locate(self, service: str, now: float) -> Lease | None:
        """Where a service lives, or None; a lookup never renews."""
        self.expire(now)
        return self._leases.get(_serviceName(service))

    def leases(self, now: float) -> list[Lease]:
        """Every live lease, sorted by service."""
        self.expire(now)
        return sorted(self._leases.values(), key=lambda lease: lease.service)

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
    ) -> Lease:
        """Grant the service a port pair, or give its live lease back to its holder.

        ``avoid`` lists ports the dispatcher found taken on its host; it asks
        again with the accumulated list, so a held pair touching it is moved.
        ``ttl`` overrides the table's lease lifetime for this lease (a
        dispatcher with slow heartbeats needs longer).  The holder of a live
        lease proves it with the lease's ``secret``.  ``key`` names the
        requester's key in secure mode, kept with the lease.
        """
        self.expire(now)
        name = _serviceName(service)
        avoided = _avoidSet(avoid)
        held = self._leases.get(name)
        if held is not None:
            if not _isHolder(held, instance, secret):
                raise self._conflict(held, now)
            if avoided.isdisjoint(held.ports) and held.host == host:
                return self._store(dataclasses.replace(
                    held, renewed=now, ttl=self._ttl(ttl), protocol=protocol))
        if held is not None:
            self._drop(held)
        else:
            self._checkRoom(host)
        pair = self._choose(name, host, avoided)
        if pair is None:
            if held is not None:
                self._store(held)  # a failed request changes nothing
            raise LeaseError(self._exhausted(host, avoided))
        return self._store(Lease(
            name, host, instance, pair[0], pair[1], now, now, self._ttl(ttl), protocol,
            held.secret if held is not None else self._newSecret(),
            held.key if held is not None else key,
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
    ) -> Lease:
        """Record ports a dispatcher already has bound (after a router restart, or fixed ports).

        The holder (proved by the ``secret``) registering other ports moves
        its lease: the process that bound the sockets knows best where it
        listens.  A service nobody holds gets a new lease and secret.  With
        ``takeover``, a new instance replaces the holder of the service's
        lease if the holder is on the same host with the same ports and
        protocol: the new instance has just bound those ports, so the holder
        no longer listens there (it crashed and was restarted at once), and
        in secure mode it has the holder's ``key``.
        """
        self.expire(now)
        name = _serviceName(service)
        if not (_isPort(dispatchPort) and _isPort(broadcastPort)) or dispatchPort == broadcastPort:
            raise LeaseError(
                f"service {name!r} registered ports {dispatchPort!r}/{broadcastPort!r}: "
                f"need two distinct port numbers"
            )
        held = self._leases.get(name)
        if held is not None and not _isHolder(held, instance, secret):
            replaceable = takeover and held.host == host and held.protocol == protocol \
                and held.ports == (dispatchPort, broadcastPort) and held.key == key
            if not replaceable:
                raise self._conflict(held, now)
            self._drop(held)
            held = None
        for port in (dispatchPort, broadcastPort):
            owner = self._owners.get((host, port))
            if owner is not None and owner != name:
                other = self._leases[owner]
                raise LeaseConflict(
                    f"service {name!r} cannot register ports {dispatchPort}/{broadcastPort}: "
                    f"port {port} is held by service {other.service!r} on host {other.host!r} "
                    f"(ports {other.dispatchPort}/{other.broadcastPort}), "
                    f"expiring in {_seconds(other.expiresIn(now))} s",
                    detail=_holder(other, now),
                )
        if held is not None and held.ports == (dispatchPort, broadcastPort) and held.host == host:
            return self._store(dataclasses.replace(
                held, renewed=now, ttl=self._ttl(ttl), protocol=protocol))
        if held is not None:
            self._drop(held)
        else:
            self._checkRoom(host)
        lease = Lease(name, host, instance, dispatchPort, broadcastPort, now, now,
                      self._ttl(ttl), protocol,
                      held.secret if held is not None else self._newSecret(),
                      held.key if held is not None else key)
        return self._store(lease)

    def renew(self, service: str, instance: str, now: float, secret: str = "") -> Lease:
        """Keep a lease alive (a heartbeat); failing tells the dispatcher to register again.

        Anyone but the holder (wrong secret) gets LeaseConflict naming the holder.
        """
        self.expire(now)
        name = _serviceName(service)
        held = self._leases.get(name)
        if held is None:
            raise LeaseError(f"service {name!r} holds no live lease: register again")
        if not _isHolder(held, instance, secret):
            raise self._conflict(held, now)
        return self._store(dataclasses.replace(held, renewed=now))

    def release(self, service: str, instance: str, now: float, secret: str = "") -> bool:
        """Drop the holder's lease so its ports are free at once; False if it held none."""
        self.expire(now)
        held = self._leases.get(_serviceName(service))
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

    def _checkRoom(self, host: str) -> None:
        """A host holds at most ``maxPerHost`` leases: one host cannot fill the table."""
        held = sum(1 for lease in self._leases.values() if lease.host == host)
        if held >= self._maxPerHost:
            raise LeaseError(f"host {host!r} already holds {held} leases, the most one host may")

    def _isFree(self, host: str, pair: tuple[int, int], avoided: frozenset[int]) -> bool:
        return all(port not in avoided and (host, port) not in self._owners for port in pair)

    def _choose(self, name: str, host: str, avoided: frozenset[int]) -> tuple[int, int] | None:
        """The service's previous pair if free, else the lowest free pair, else None."""
        previous = self._previous.get(name)
        if previous is not None and self._isFree(host, previous, avoided):
            return previous
        for port in self.pairs:
            if self._isFree(host, (port, port + 1), avoided):
                return (port, port + 1)
        return None

    def _store(self, lease: Lease) -> Lease:
        old = self._leases.get(lease.service)
        if old is not None and (old.ports != lease.ports or old.host != lease.host):
            self._drop(old)
        self._leases[lease.service] = lease
        for port in lease.ports:
            self._owners[(lease.host, port)] = lease.service
        if self.isPair(*lease.ports):
            self._previous.pop(lease.service, None)
            self._previous[lease.service] = lease.ports
            while len(self._previous) > self._remember:
                del self._previous[next(iter(self._previous))]
        return lease

    def _drop(self, lease: Lease) -> None:
        del self._leases[lease.service]
        for port in lease.ports:
            if self._owners.get((lease.host, port)) == lease.service:
                del self._owners[(lease.host, port)]

    def _conflict(self, held: Lease, now: float) -> LeaseConflict:
        return LeaseConflict(
            f"service {held.service!r} is held by another dispatcher (instance {held.instance!r}) "
            f"on host {held.host!r}, ports {held.dispatchPort}/{held.broadcastPort}, "
            f"which renewed its lease {_seconds(held.age(now))} s ago "
            f"(it expires in {_seconds(held.expiresIn(now))} s unless renewed)",
            detail=_holder(held, now),
        )

    def _exhausted(self, host: str, avoided: frozenset[int]) -> str:
        count = sum(1 for lease in self._leases.values() if lease.host == host)
        holders = "1 service holds a lease" if count == 1 else f"{count} services hold leases"
        message = (
            f"no free port pair in [{self.firstPort}, {self.lastPort}) on host {host!r}: {holders}"
        )
        skipped = sum(1 for port in avoided if self.firstPort <= port < self.lastPort)
        if skipped:
            message += f", {skipped} port{'' if skipped == 1 else 's'} in use on the host avoided"
        return message
