"""Every message cauldron sends, as immutable typed values.

Three conversations use them:

* client -> dispatcher (dispatch socket): :class:`Read`, :class:`Write`,
  :class:`Describe`, :class:`ListKeywords`, :class:`Ping`; answered by
  :class:`Value`, :class:`Description`, :class:`KeywordList`, :class:`Pong`
  or :class:`Error` (a slow write is first acknowledged by :class:`Started`).
* dispatcher -> subscribers (broadcast socket): :class:`Update` for a
  value change, :class:`Updates` for several changes of one keyword made in
  one reactor turn, and :class:`Heartbeat` every interval.
* dispatcher or client -> router: :class:`Lease`, :class:`Register`,
  :class:`Renew`, :class:`Release`, :class:`Locate`, :class:`ListServices`,
  :class:`Ping`; answered by :class:`Leased`, :class:`Locations`,
  :class:`ServiceList`, :class:`Ok`, :class:`Pong` or :class:`Error`.

A service may span several dispatchers, each named within the service (its
*dispatcher name*, the service name by default: ``""`` on the wire means
that) and owning a set of keywords.  The router keeps one lease per
dispatcher; :class:`Locations` lists them.

Requests carry an ``id`` chosen by the sender; the reply carries it back so a
client can match replies to requests (the transport routes replies by socket
identity, never by this id).

Requests to a dispatcher also carry:

* ``deadline``: the instant, on the *dispatcher's* clock (seconds since the
  epoch), after which the dispatcher must not start the request, because its
  client has given up by then.  The client converts its own deadline with a
  clock offset it measures from heartbeats, so the rule holds whatever the
  two clocks say.  0 means none.
* ``owner``: the dispatcher run (its epoch) the router named when the client
  located the service; any other dispatcher refuses the request with
  ``NotOwner``.  Empty when the client found the dispatcher without a router.
"""

from typing import Any

import msgspec

__all__ = [
    "Read", "Write", "Describe", "ListKeywords", "Ping",
    "Value", "Description", "KeywordList", "Pong", "Error", "Ok", "Started", "Batch",
    "Update", "UpdateEntry", "Updates", "Heartbeat",
    "Lease", "Register", "Renew", "Release", "Locate", "ListServices",
    "Leased", "Locations", "DispatcherLocation", "ServiceEntry", "ServiceList",
    "Message", "REQUESTS", "checkValue",
]

_SCALARS = (str, int, float, bool)


def checkValue(value):
    """Reject values a keyword can never hold, so decoding fails early.

    A keyword value is None, a str/int/float/bool, or a flat list of
    int/float (the array types).
    """
    if value is None or isinstance(value, _SCALARS):
        return
    if isinstance(value, list) and all(
        isinstance(item, (int, float)) and not isinstance(item, bool) for item in value
    ):
        return
    raise ValueError(f"not a keyword value: {type(value).__name__}")


#: what a keyword's binary value may be (as :func:`checkValue` says), checked by msgspec
#: itself as it decodes: no Python call per value received
KeywordBinary = str | int | float | bool | list[int | float] | None


class _Message(msgspec.Struct, frozen=True, array_like=True, tag_field="op"):
    """Base: frozen, encoded as a compact array led by the message tag."""


# -- client -> dispatcher -------------------------------------------------


class Read(_Message, tag="read"):
    """Run the keyword's read path and answer its current value.

    ``service`` names the service the client means, so a dispatcher that
    took over the address of another service answers UnknownService instead
    of serving a request meant for someone else ("" skips the check).
    """

    id: int
    keyword: str
    service: str = ""
    deadline: float = 0.0
    owner: str = ""


class Write(_Message, tag="write"):
    """Write ``value`` (binary or ascii form) and answer once completed.

    ``origin`` is what the client says of itself (``host``, ``user``,
    ``pid``), for the dispatcher's record of who wrote what; it proves
    nothing (the key name, in secure mode, does).
    """

    id: int
    keyword: str
    value: Any
    service: str = ""
    deadline: float = 0.0
    owner: str = ""
    origin: dict[str, str | int] = {}

    def __post_init__(self):
        checkValue(self.value)


class Describe(_Message, tag="describe"):
    """Ask for keyword metadata and current values (all when ``keywords`` is None)."""

    id: int
    keywords: list[str] | None = None
    service: str = ""
    deadline: float = 0.0
    owner: str = ""


class ListKeywords(_Message, tag="list"):
    """Ask for the names of every keyword the service serves."""

    id: int
    service: str = ""
    deadline: float = 0.0
    owner: str = ""


class Ping(_Message, tag="ping"):
    """Is anyone there?  Answered by :class:`Pong` (dispatchers and the router)."""

    id: int


# -- dispatcher -> client -------------------------------------------------


class Value(_Message, tag="value"):
    """A keyword's value after a read or a completed write."""

    id: int
    keyword: str
    binary: KeywordBinary
    ascii: str
    sequence: int
    timestamp: float | None
    epoch: str


class Description(_Message, tag="description"):
    """Metadata of keywords: each entry is a keyword's ``describe()`` plus its value.

    ``heartbeat`` is the dispatcher's heartbeat interval, so a client judges
    its liveness right from the start; ``now`` is the dispatcher's clock when
    it answered, from which the client bounds the offset between the clocks.
    """

    id: int
    service: str
    epoch: str
    keywords: list[dict[str, Any]]
    heartbeat: float = 1.0
    now: float = 0.0


class KeywordList(_Message, tag="keywords"):
    """The names of every keyword a service serves."""

    id: int
    service: str
    names: list[str]


class Pong(_Message, tag="pong"):
    """Answer to :class:`Ping`: who answered, and since when (``epoch``)."""

    id: int
    service: str
    epoch: str


class Error(_Message, tag="error"):
    """A request failed: ``error`` names a :mod:`cauldron.errors` class.

    ``detail`` carries facts a program may act on (see
    :attr:`cauldron.errors.CauldronError.detail`).
    """

    id: int
    error: str
    message: str
    detail: dict[str, str | int | float | bool | None] = {}


class Ok(_Message, tag="ok"):
    """A request that needs no data back succeeded."""

    id: int


class Started(_Message, tag="started"):
    """A write is running its hooks (they did not finish at once).

    It will run to completion, and its reply follows.  Until a client has
    seen this, it knows that a write it gives up on was never started.
    """

    id: int


class Batch(_Message, tag="batch"):
    """Several requests to a dispatcher, or their replies, in one message.

    Each payload is one encoded message (never another Batch).  A client
    sends the requests it makes in one reactor turn while others are in
    flight as one Batch; the dispatcher answers in one Batch those it can
    answer at once, and the others on their own when they complete.  Every
    request keeps its own id, deadline and reply.
    """

    payloads: list[bytes]


# -- dispatcher -> subscribers --------------------------------------------


class Update(_Message, tag="update"):
    """A keyword's new value, numbered per keyword by ``sequence`` within ``epoch``.

    Also sent when a new subscription to the keyword arrives, with
    ``welcome`` set, so the subscriber learns both the current value and
    that it is subscribed (a keyword that never had a value has ``binary``
    None, ``sequence`` 0).  A welcome is the current value, not a change.
    """

    service: str
    keyword: str
    binary: Any
    ascii: str
    sequence: int
    timestamp: float | None
    epoch: str
    welcome: bool = False

    def __post_init__(self):
        checkValue(self.binary)


class UpdateEntry(msgspec.Struct, frozen=True, array_like=True):
    """One value of an :class:`Updates` batch."""

    binary: KeywordBinary
    ascii: str
    sequence: int
    timestamp: float | None


class Updates(_Message, tag="updates"):
    """Successive values of one keyword, oldest first, in one broadcast message.

    A burst of changes made in one reactor turn travels as a few of these
    rather than one message each, so the broadcast socket's high-water mark
    counts batches, and a burst is delivered whole.
    """

    service: str
    keyword: str
    epoch: str
    entries: list[UpdateEntry]


class Heartbeat(_Message, tag="heartbeat"):
    """The dispatcher is alive.

    ``sequences`` holds the latest sequence of every keyword that changed since
    the previous heartbeat, so a subscriber that lost the tail of a burst (PUB
    drops the newest messages at its high-water mark) notices and re-reads.
    ``count`` numbers the heartbeats of an epoch: a subscriber that sees one
    missing may have missed the ``sequences`` it carried, and re-reads.
    """

    service: str
    epoch: str
    timestamp: float
    interval: float
    sequences: dict[str, int] = {}
    count: int = 0


# -- dispatcher/client -> router ------------------------------------------


class Lease(_Message, tag="lease"):
    """Ask the router for a port pair; ``avoid`` lists ports found taken on ``host``.

    ``interval`` is the dispatcher's heartbeat interval: its lease lives for
    three of them (at least the router's own lease lifetime).  ``protocol``
    (``tcp`` or ``ipc``) is how clients reach the dispatcher's addresses.
    ``secret`` is the holder's proof when it asks again for a lease it holds
    (to move it off ports found taken); empty for a new lease.  ``dispatcher``
    names the dispatcher within the service ("" for the service name) and
    ``keywords`` lists the keywords it serves: one that another live
    dispatcher of the service holds is refused (LeaseConflict).
    """

    id: int
    service: str
    host: str
    instance: str
    avoid: list[int] = []
    interval: float = 1.0
    protocol: str = "tcp"
    secret: str = ""
    #: the dispatcher's name within the service ("": the service name)
    dispatcher: str = ""
    #: the names of the keywords the dispatcher serves (no other dispatcher may hold one)
    keywords: list[str] = []


class Register(_Message, tag="register"):
    """Claim a port pair already bound (after a router restart, or fixed ports).

    With ``takeover``, the dispatcher claims a service whose lease another
    instance holds on the same host and ports, having just proved those
    ports free (its predecessor crashed): it need not wait for the lease
    to expire.  ``dispatcher`` and ``keywords`` as for :class:`Lease`: the
    holder registering again with other keywords replaces its keywords.
    """

    id: int
    service: str
    host: str
    instance: str
    dispatchPort: int
    broadcastPort: int
    interval: float = 1.0
    protocol: str = "tcp"
    takeover: bool = False
    secret: str = ""
    dispatcher: str = ""
    keywords: list[str] = []


class Renew(_Message, tag="renew"):
    """The dispatcher's heartbeat to the router: keep my lease alive (``secret`` proves it)."""

    id: int
    service: str
    instance: str
    secret: str = ""
    dispatcher: str = ""


class Release(_Message, tag="release"):
    """A dispatcher stopping cleanly gives its ports back (``secret`` proves it holds them)."""

    id: int
    service: str
    instance: str
    secret: str = ""
    dispatcher: str = ""


class Locate(_Message, tag="locate"):
    """Where do the dispatchers of ``service`` live?  Answered by :class:`Locations`.

    With ``keyword``, only the dispatcher owning that keyword is named
    (UnknownKeyword if no live dispatcher of the service owns it).  A service
    with no live dispatcher is UnknownService.
    """

    id: int
    service: str
    keyword: str = ""


class ListServices(_Message, tag="services"):
    """Which services does the router know?"""

    id: int


# -- router -> dispatcher/client ------------------------------------------


class Leased(_Message, tag="leased"):
    """A granted or renewed lease; it lasts ``ttl`` seconds without renewal.

    ``secret`` proves holding it: the router gives it only to the holder,
    and asks for it to renew, release or move the lease.
    """

    id: int
    service: str
    host: str
    dispatchPort: int
    broadcastPort: int
    ttl: float
    secret: str = ""
    #: the dispatcher's name within the service
    dispatcher: str = ""


class DispatcherLocation(msgspec.Struct, frozen=True, array_like=True):
    """One dispatcher of :class:`Locations`: where it listens, which run of it holds
    its lease (``owner``), its key, and the keywords it owns."""

    dispatcher: str
    host: str
    dispatchAddress: str
    broadcastAddress: str
    owner: str
    #: the dispatcher's CURVE public key (Z85) in secure mode, else ""
    serverKey: str
    #: the (upper-case) names of the keywords it registered, sorted
    keywords: list[str]


class Locations(_Message, tag="locations"):
    """Where a service's dispatchers listen: one entry per live dispatcher, by name."""

    id: int
    service: str
    dispatchers: list[DispatcherLocation]


class ServiceEntry(msgspec.Struct, frozen=True, array_like=True):
    """One line of :class:`ServiceList`, one per dispatcher.

    ``age`` is seconds since the last renewal; ``keywords`` counts the
    keywords the dispatcher registered.
    """

    service: str
    host: str
    dispatchPort: int
    broadcastPort: int
    age: float
    dispatcher: str = ""
    keywords: int = 0


class ServiceList(_Message, tag="servicelist"):
    """Every live dispatcher the router knows, sorted by (service, dispatcher)."""

    id: int
    services: list[ServiceEntry]


Message = (
    Read
    | Write
    | Describe
    | ListKeywords
    | Ping
    | Value
    | Description
    | KeywordList
    | Pong
    | Error
    | Ok
    | Started
    | Batch
    | Update
    | Updates
    | Heartbeat
    | Lease
    | Register
    | Renew
    | Release
    | Locate
    | ListServices
    | Leased
    | Locations
    | ServiceList
)

#: Messages that expect a reply carrying the same ``id``.
REQUESTS = (
    Read, Write, Describe, ListKeywords, Ping,
    Lease, Register, Renew, Release, Locate, ListServices,
)
