"""Properties and edge cases of the sans-I/O wire protocol (messages + codec)."""

import math
import subprocess
import sys
import types
import typing

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cauldron.errors import ProtocolError
from cauldron.protocol import codec
from cauldron.protocol import messages as M

MESSAGE_CLASSES = typing.get_args(M.Message)
BROADCASTS = (M.Update, M.Updates, M.Heartbeat)
TAGS = [msgspec.inspect.type_info(cls).tag for cls in MESSAGE_CLASSES]

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

FUZZ = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- strategies -------------------------------------------------------------

ints = st.integers(INT64_MIN, INT64_MAX)
# Floats of every kind, NaN and infinities included (compare with assertSame).
floats = st.floats(allow_nan=True, allow_infinity=True)
texts = st.text()  # any unicode, ':' and '\n' included

#: Values a keyword can hold: None, scalars, flat lists of numbers.
keywordValues = st.one_of(
    st.none(),
    texts,
    st.sampled_from(["ready: all good", "a: b: c", "line1\nline2\r\n", "", ":", "\n"]),
    ints,
    floats,
    st.booleans(),
    st.lists(ints, max_size=8),
    st.lists(floats, max_size=8),
)


def strategyForType(tp):
    """A strategy producing valid values of the (msgspec field) type ``tp``."""
    if tp is typing.Any:
        return keywordValues
    if tp is int:
        return ints
    if tp is float:
        return floats
    if tp is str:
        return texts
    if tp is bool:
        return st.booleans()
    if tp is bytes:
        return st.binary(max_size=64)
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return strategyForStruct(tp)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union or origin is types.UnionType:
        return st.one_of(*(st.none() if a is type(None) else strategyForType(a) for a in args))
    if origin is list:
        return st.lists(strategyForType(args[0]), max_size=5)
    if origin is dict:
        return st.dictionaries(strategyForType(args[0]), strategyForType(args[1]), max_size=5)
    raise NotImplementedError(f"no strategy for field type {tp!r}")


def strategyForStruct(cls):
    """Instances of ``cls``, fields with a default sometimes left to it."""
    required, optional = {}, {}
    for field in msgspec.structs.fields(cls):
        strategy = strategyForType(field.type)
        if field.required:
            required[field.name] = strategy
        else:
            optional[field.name] = strategy
    return st.fixed_dictionaries(required, optional=optional).map(lambda kw: cls(**kw))


STRATEGIES = {cls: strategyForStruct(cls) for cls in MESSAGE_CLASSES}
anyMessage = st.one_of(*STRATEGIES.values())
broadcastMessage = st.one_of(STRATEGIES[M.Update], STRATEGIES[M.Updates],
                             STRATEGIES[M.Heartbeat])


def assertSame(a, b):
    """Deep equality that also requires identical types and treats NaN == NaN."""
    assert type(a) is type(b), (a, b)
    if isinstance(a, msgspec.Struct):
        for field in msgspec.structs.fields(type(a)):
            assertSame(getattr(a, field.name), getattr(b, field.name))
    elif isinstance(a, float):
        if math.isnan(a):
            assert math.isnan(b)
        else:
            assert a == b and math.copysign(1, a) == math.copysign(1, b), (a, b)
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assertSame(x, y)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for key in a:
            assertSame(a[key], b[key])
    else:
        assert a == b


def hasNan(value):
    if isinstance(value, float):
        return math.isnan(value)
    if isinstance(value, msgspec.Struct):
        return any(hasNan(v) for v in msgspec.structs.astuple(value))
    if isinstance(value, list):
        return any(hasNan(v) for v in value)
    if isinstance(value, dict):
        return any(hasNan(v) for v in value.values())
    return False


def assertValidMessage(message, broadcast=False):
    """What a successful decode must return: a well-formed message."""
    allowed = BROADCASTS if broadcast else MESSAGE_CLASSES
    assert isinstance(message, allowed)
    for name in ("value", "binary"):
        if hasattr(message, name):
            M.checkValue(getattr(message, name))
    # Whatever was accepted encodes again and decodes to the same thing.
    assertSame(codec.decode(codec.encode(message)), message)


# -- 1. round trips -----------------------------------------------------------


@pytest.mark.parametrize("cls", MESSAGE_CLASSES, ids=lambda c: c.__name__)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_roundTrip(cls, data):
    message = data.draw(STRATEGIES[cls])
    frames = codec.encode(message)
    assert frames[0] == codec.VERSION
    assert all(isinstance(f, bytes) for f in frames)
    decoded = codec.decode(frames)
    assertSame(decoded, message)  # types survive: int/float/bool/list stay so
    assert codec.encode(decoded) == frames
    if not hasNan(message):
        assert decoded == message


@settings(max_examples=200, deadline=None)
@given(broadcastMessage)
def test_broadcastRoundTrip(message):
    frames = codec.encodeBroadcast(message)
    assert len(frames) == 3
    assert frames[1:] == codec.encode(message)
    decoded = codec.decodeBroadcast(frames)
    assertSame(decoded, message)
    if not hasNan(message):
        assert decoded == message


@settings(max_examples=200, deadline=None)
@given(keywordValues)
def test_keywordValueTypesSurvive(value):
    for message in (
        M.Write(id=1, keyword="KW", value=value),
        M.Value(1, "KW", value, "ascii", 3, None, "epoch"),
        M.Update("svc", "KW", value, "ascii", 3, 1.5, "epoch"),
    ):
        decoded = codec.decode(codec.encode(message))
        got = decoded.value if isinstance(decoded, M.Write) else decoded.binary
        assertSame(got, value)
        if isinstance(value, list):
            assert all(type(x) is type(y) for x, y in zip(got, value, strict=True))


@pytest.mark.parametrize(
    "value, kind",
    [
        (None, type(None)),
        (0, int),
        (INT64_MAX, int),
        (INT64_MIN, int),
        (1.0, float),
        (0.0, float),
        (-0.0, float),
        (math.inf, float),
        (-math.inf, float),
        (True, bool),
        (False, bool),
        ("1", str),
        ([1, 2, 3], list),
        ([1.0, 2.0], list),
        ([1, 2.5], list),
        ([], list),
    ],
)
def test_typeKept(value, kind):
    decoded = codec.decode(codec.encode(M.Write(id=7, keyword="KW", value=value)))
    assert type(decoded.value) is kind
    assertSame(decoded.value, value)


def test_nanRoundTrip():
    message = M.Update("svc", "KW", math.nan, "nan", 1, math.nan, "epoch")
    decoded = codec.decodeBroadcast(codec.encodeBroadcast(message))
    assert isinstance(decoded.binary, float) and math.isnan(decoded.binary)
    assert math.isnan(decoded.timestamp)
    assert codec.encodeBroadcast(decoded) == codec.encodeBroadcast(message)
    array = codec.decode(codec.encode(M.Write(1, "KW", [1.0, math.nan])))
    assert array.value[0] == 1.0 and math.isnan(array.value[1])


@pytest.mark.parametrize("value", ["ready: all good", "two\nlines\n", "cr\r\nlf", ":\n:\x00"])
def test_awkwardStrings(value):
    for message in (
        M.Write(1, value, value),
        M.Value(1, "KW", value, value, 1, 2.0, value),
        M.Error(1, "BadValue", value),
    ):
        assert codec.decode(codec.encode(message)) == message
    update = M.Update("svc", "KW", value, value, 1, 2.0, "e")
    assert codec.decodeBroadcast(codec.encodeBroadcast(update)) == update


def test_defaultsApplied():
    heartbeat = codec.decode([codec.VERSION, msgspec.msgpack.encode(["heartbeat", "s", "e", 1, 2])])
    assert heartbeat == M.Heartbeat("s", "e", 1.0, 2.0, {})
    assert type(heartbeat.timestamp) is float
    lease = codec.decode([codec.VERSION, msgspec.msgpack.encode(["lease", 1, "s", "h", "i"])])
    assert lease.avoid == []
    first, second = M.Heartbeat("s", "e", 1.0, 2.0), M.Heartbeat("t", "e", 1.0, 2.0)
    assert first.sequences is not second.sequences


# -- 2. fuzzing ---------------------------------------------------------------

randomFrame = st.one_of(
    st.binary(max_size=64),
    st.binary(max_size=60).map(lambda b: codec.VERSION + b),
    st.just(codec.VERSION),
    st.sampled_from([codec.HEARTBEAT_TOPIC, b"KKW\x00", b""]),
)


def decodeOrProtocolError(decoder, frames, broadcast=False):
    try:
        message = decoder(frames)
    except ProtocolError:
        return None
    assertValidMessage(message, broadcast)
    return message


@FUZZ
@given(st.lists(randomFrame, max_size=5))
def test_fuzzRandomFrames(frames):
    decodeOrProtocolError(codec.decode, frames)
    decodeOrProtocolError(codec.decodeBroadcast, frames, broadcast=True)


@FUZZ
@given(st.binary(max_size=64))
def test_fuzzPayloadWithRealVersion(payload):
    decodeOrProtocolError(codec.decode, [codec.VERSION, payload])
    for topic in (codec.HEARTBEAT_TOPIC, codec.topicFor("KW")):
        decodeOrProtocolError(codec.decodeBroadcast, [topic, codec.VERSION, payload], True)


# Structurally valid msgpack with a real (or bogus) tag and random field values:
# exercises the type validation rather than the msgpack parser.
msgpackValues = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(INT64_MIN, 2**64 - 1),
        floats,
        texts,
        st.binary(max_size=8),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=4), children, max_size=4)
    ),
    max_leaves=12,
)


@FUZZ
@given(st.one_of(st.sampled_from(TAGS), texts), st.lists(msgpackValues, max_size=9))
def test_fuzzStructuredPayload(tag, fields):
    payload = msgspec.msgpack.encode([tag, *fields])
    decodeOrProtocolError(codec.decode, [codec.VERSION, payload])
    if tag in ("update", "heartbeat") and fields:
        keyword = fields[1] if tag == "update" and len(fields) > 1 else ""
        topic = codec.topicFor(keyword) if isinstance(keyword, str) else codec.HEARTBEAT_TOPIC
        decodeOrProtocolError(codec.decodeBroadcast, [topic, codec.VERSION, payload], True)


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10_000), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 10_000)),
    st.tuples(st.just("extend"), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("insert"), st.integers(0, 10_000), st.binary(min_size=1, max_size=4)),
    st.tuples(st.just("delete"), st.integers(0, 10_000)),
)


def mutate(data, ops):
    data = bytearray(data)
    for op in ops:
        n = len(data)
        if op[0] == "flip" and n:
            data[op[1] % n] ^= op[2]
        elif op[0] == "truncate":
            del data[op[1] % (n + 1) :]
        elif op[0] == "extend":
            data += op[1]
        elif op[0] == "insert":
            i = op[1] % (n + 1)
            data[i:i] = op[2]
        elif op[0] == "delete" and n:
            del data[op[1] % n]
    return bytes(data)


@FUZZ
@given(anyMessage, st.lists(mutation, min_size=1, max_size=4), st.integers(0, 9))
def test_fuzzMutatedEncoding(message, ops, which):
    frames = codec.encode(message)
    # Mostly the payload; sometimes the version frame.
    index = 0 if which == 0 else 1
    frames[index] = mutate(frames[index], ops)
    decodeOrProtocolError(codec.decode, frames)


@FUZZ
@given(broadcastMessage, st.lists(mutation, min_size=1, max_size=4), st.integers(0, 9))
def test_fuzzMutatedBroadcast(message, ops, which):
    frames = codec.encodeBroadcast(message)
    index = 0 if which < 2 else (1 if which == 2 else 2)
    frames[index] = mutate(frames[index], ops)
    decodeOrProtocolError(codec.decodeBroadcast, frames, broadcast=True)


# -- 3. specific cases ----------------------------------------------------------

PING = codec.encode(M.Ping(1))
UPDATE = M.Update("svc", "KW1", 42, "42", 1, 1000.0, "epoch")


@pytest.mark.parametrize("frames", [[], [codec.VERSION], PING + [b""], [b""] * 5])
def test_wrongFrameCount(frames):
    with pytest.raises(ProtocolError, match="frames"):
        codec.decode(frames)


@pytest.mark.parametrize("count", [0, 1, 2, 4])
def test_wrongBroadcastFrameCount(count):
    frames = codec.encodeBroadcast(UPDATE)
    frames = (frames + [b""])[:count] if count < 4 else frames + [b""]
    with pytest.raises(ProtocolError, match="frames"):
        codec.decodeBroadcast(frames)


@pytest.mark.parametrize("version", [b"", b"CLD0", b"CLD1", b"CLD3", b"cld2", b"CLD2\x00",
                                     b"X" * 1000])
def test_wrongVersion(version):
    with pytest.raises(ProtocolError, match="version"):
        codec.decode([version, PING[1]])
    with pytest.raises(ProtocolError, match="version"):
        codec.decodeBroadcast([codec.topicFor("KW1"), version, codec.encode(UPDATE)[1]])


def test_oversizedPayload():
    with pytest.raises(ProtocolError, match="exceeds"):
        codec.decode([codec.VERSION, b"\x00" * (codec.MAX_MESSAGE_SIZE + 1)])
    big = M.Write(1, "KW", "x" * codec.MAX_MESSAGE_SIZE)
    with pytest.raises(ProtocolError, match="exceeds"):
        codec.decode(codec.encode(big))
    bigUpdate = M.Update("svc", "KW", "x" * codec.MAX_MESSAGE_SIZE, "", 1, 1.0, "e")
    with pytest.raises(ProtocolError, match="exceeds"):
        codec.decodeBroadcast(codec.encodeBroadcast(bigUpdate))


def test_payloadOfExactlyMaxSizeAccepted():
    overhead = len(codec.encode(M.Write(1, "KW", "x" * 70_000))[1]) - 70_000
    exact = M.Write(1, "KW", "x" * (codec.MAX_MESSAGE_SIZE - overhead))
    frames = codec.encode(exact)
    assert len(frames[1]) == codec.MAX_MESSAGE_SIZE
    assert codec.decode(frames) == exact


@pytest.mark.parametrize(
    "bad", [{"a": 1}, {}, [[1, 2]], [[]], [True, 1], ["a"], [None], b"raw", [1, {"a": 1}]]
)
def test_badKeywordValueOnTheWire(bad):
    for fields in (
        ["write", 1, "KW", bad],
        ["value", 1, "KW", bad, "a", 1, None, "e"],
        ["update", "svc", "KW", bad, "a", 1, 1.0, "e"],
    ):
        payload = msgspec.msgpack.encode(fields)
        with pytest.raises(ProtocolError):
            codec.decode([codec.VERSION, payload])
    with pytest.raises(ProtocolError):
        codec.decodeBroadcast([codec.topicFor("KW"), codec.VERSION, payload])
    # One bad value in a batch spoils the batch, whatever its neighbours.
    batch = msgspec.msgpack.encode(["updates", "svc", "KW", "e", [[1, "1", 1, 1.0],
                                                                 [bad, "a", 2, 1.0]]])
    with pytest.raises(ProtocolError):
        codec.decodeBroadcast([codec.topicFor("KW"), codec.VERSION, batch])


@pytest.mark.parametrize("bad", [{"a": 1}, [[1]], [True], ("t",), object()])
def test_badKeywordValueNotConstructible(bad):
    with pytest.raises(ValueError):
        M.Write(1, "KW", bad)
    with pytest.raises(ValueError):
        M.Update("svc", "KW", bad, "", 1, 1.0, "e")


def test_batchCarriesWholeMessages():
    """A Batch holds encoded messages; each decodes alone, and a Batch in a Batch is refused."""
    reads = [M.Read(i, "KW", "svc", 1.5, "owner") for i in range(3)]
    batch = M.Batch([codec.encodePayload(r) for r in reads])
    decoded = codec.decode(codec.encode(batch))
    assert [codec.decodeBatched(p) for p in decoded.payloads] == reads
    with pytest.raises(ProtocolError, match="Batch inside a Batch"):
        codec.decodeBatched(codec.encodePayload(batch))
    for junk in (b"", b"\xc1", msgspec.msgpack.encode(["nonsense"])):
        with pytest.raises(ProtocolError):
            codec.decodeBatched(junk)


def test_topics():
    assert not codec.topicFor("KW10").startswith(codec.topicFor("KW1"))
    assert not codec.topicFor("KW1").startswith(codec.topicFor("KW10"))
    assert codec.topicFor("kw1") == codec.topicFor("KW1")
    assert codec.topicFor("KW1").endswith(b"\x00")
    assert codec.topicFor("KW1").startswith(codec.UPDATE_TOPIC_PREFIX)
    assert not codec.topicFor("H").startswith(codec.HEARTBEAT_TOPIC)
    assert not codec.HEARTBEAT_TOPIC.startswith(codec.UPDATE_TOPIC_PREFIX)


keywordNames = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"))


@settings(max_examples=200, deadline=None)
@given(keywordNames, keywordNames)
def test_topicsNeverPrefixOfEachOther(a, b):
    ta, tb = codec.topicFor(a), codec.topicFor(b)
    if ta != tb:
        assert not tb.startswith(ta) and not ta.startswith(tb)
    assert not ta.startswith(codec.HEARTBEAT_TOPIC)


def test_broadcastTopicMismatch():
    payload = codec.encode(UPDATE)[1]
    wrong = (codec.topicFor("KW10"), codec.topicFor("KW"), b"KKW1", b"", codec.HEARTBEAT_TOPIC)
    for topic in wrong:
        with pytest.raises(ProtocolError, match="topic"):
            codec.decodeBroadcast([topic, codec.VERSION, payload])
    batch = codec.encode(M.Updates("svc", "KW1", "e", [M.UpdateEntry(1, "1", 1, 1.0)]))[1]
    for topic in wrong:
        with pytest.raises(ProtocolError, match="topic"):
            codec.decodeBroadcast([topic, codec.VERSION, batch])
    heartbeat = codec.encode(M.Heartbeat("svc", "e", 1.0, 2.0))[1]
    for topic in (codec.topicFor("KW1"), b"H", b"", b"H\x00\x00"):
        with pytest.raises(ProtocolError, match="topic"):
            codec.decodeBroadcast([topic, codec.VERSION, heartbeat])


@pytest.mark.parametrize(
    "message", [M.Ping(1), M.Ok(2), M.Write(3, "KW1", 1), M.Value(4, "KW1", 1, "1", 1, None, "e")]
)
def test_nonBroadcastOnBroadcastSocket(message):
    for topic in (codec.HEARTBEAT_TOPIC, codec.topicFor("KW1")):
        with pytest.raises(ProtocolError, match="not a broadcast"):
            codec.decodeBroadcast([topic, *codec.encode(message)])
    with pytest.raises(TypeError):
        codec.encodeBroadcast(message)


@pytest.mark.parametrize(
    "value",
    [None, "", "ready: all good", "a\nb", 0, -1, INT64_MAX, 2**64, 1.5, math.nan, math.inf,
     True, False, [], [1, 2], [1.0, 2.5], [1, 2.5], [math.nan]],
)
def test_checkValueAccepts(value):
    M.checkValue(value)


@pytest.mark.parametrize(
    "value",
    [{}, {"a": 1}, [[1]], [[]], [True], [False, 1], ["a"], [None], b"x", (1, 2), {1, 2}, object(),
     [1, [2]]],
)
def test_checkValueRejects(value):
    with pytest.raises(ValueError):
        M.checkValue(value)


def test_requestsCarryAnId():
    assert set(M.REQUESTS) <= set(MESSAGE_CLASSES)
    for cls in M.REQUESTS:
        names = [f.name for f in msgspec.structs.fields(cls)]
        assert names[0] == "id", cls
        assert msgspec.structs.fields(cls)[0].type is int


def test_repliesCarryAnId():
    for cls in (M.Value, M.Description, M.KeywordList, M.Pong, M.Error, M.Ok,
                M.Leased, M.Locations, M.ServiceList):
        assert msgspec.structs.fields(cls)[0].name == "id", cls


# -- several dispatchers per service (issue 13) ------------------------------


def fieldNames(cls):
    return [field.name for field in msgspec.structs.fields(cls)]


def test_dispatcherFieldsAppendedWithDefaults():
    """The new fields come last, with defaults: a message without them still decodes."""
    expected = {
        M.Lease: (["dispatcher", "keywords"], ("", [])),
        M.Register: (["dispatcher", "keywords"], ("", [])),
        M.Renew: (["dispatcher"], ("",)),
        M.Release: (["dispatcher"], ("",)),
        M.Leased: (["dispatcher"], ("",)),
        M.Locate: (["keyword"], ("",)),
        M.ServiceEntry: (["dispatcher", "keywords"], ("", 0)),
    }
    for cls, (names, defaults) in expected.items():
        assert fieldNames(cls)[-len(names):] == names, cls
        fields = msgspec.structs.fields(cls)[-len(names):]
        assert tuple(field.default_factory() if field.default is msgspec.NODEFAULT
                     else field.default for field in fields) == defaults, cls
    # As a sender that knows none of them encodes it (array_like: leading fields only).
    old = msgspec.msgpack.encode(["lease", 7, "demo", "h", "i1", [6600], 1.0, "tcp", "s"])
    lease = codec.decode([codec.VERSION, old])
    assert (lease.dispatcher, lease.keywords, lease.secret) == ("", [], "s")
    old = msgspec.msgpack.encode(["locate", 8, "demo"])
    assert codec.decode([codec.VERSION, old]) == M.Locate(8, "demo", "")


def test_locationsShape():
    """Locations lists DispatcherLocation entries with exactly the contract's fields."""
    assert fieldNames(M.DispatcherLocation) == [
        "dispatcher", "host", "dispatchAddress", "broadcastAddress", "owner", "serverKey",
        "keywords",
    ]
    assert fieldNames(M.Locations) == ["id", "service", "dispatchers"]
    entry = M.DispatcherLocation("motors", "h", "tcp://h:1", "tcp://h:2", "run", "",
                                 ["M1", "M2"])
    reply = M.Locations(3, "deimot", [entry])
    assert codec.decode(codec.encode(reply)) == reply
    assert msgspec.inspect.type_info(M.Locations).tag == "locations"
    assert not hasattr(M, "Location")
    assert "Location" not in M.__all__ and {"Locations", "DispatcherLocation"} <= set(M.__all__)


def test_oldLocationReplyIsRefused():
    """The single-dispatcher 'location' reply is gone: a peer sending one is told so."""
    payload = msgspec.msgpack.encode(["location", 1, "demo", "h", "tcp://h:1", "tcp://h:2"])
    with pytest.raises(ProtocolError):
        codec.decode([codec.VERSION, payload])


def test_keywordsMustBeStrings():
    """A lease's keyword list holds names only: anything else is refused on decode."""
    for keywords in ([1], [None], "TEMP", {"TEMP": 1}):
        payload = msgspec.msgpack.encode(
            ["register", 1, "demo", "h", "i", 6600, 6601, 1.0, "tcp", False, "", "d", keywords])
        with pytest.raises(ProtocolError):
            codec.decode([codec.VERSION, payload])


def test_tagsUnique():
    assert len(set(TAGS)) == len(TAGS) == len(MESSAGE_CLASSES)


def test_messagesFrozen():
    with pytest.raises(AttributeError):
        M.Ping(1).id = 2


# -- 4. purity ----------------------------------------------------------------


def test_codecImportIsPure():
    code = (
        "import sys\n"
        "import cauldron.protocol.codec\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('twisted', 'zmq'))\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "", result.stdout
