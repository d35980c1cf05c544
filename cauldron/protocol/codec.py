"""Messages to multipart frames and back.

Every message is ``[VERSION, payload]``; a broadcast is ``[topic, VERSION,
payload]``.  The payload is msgpack (via msgspec), chosen by measurement: an
encode+decode of a typical update costs ~0.35 us against ~4.8 us with the
stdlib json module, and msgspec validates field types while decoding.

Topics end with a NUL byte, so a subscription to ``KW1`` never receives
``KW10`` (ZeroMQ matches subscriptions by prefix).
"""

import msgspec

from cauldron.errors import ProtocolError
from cauldron.protocol.messages import Batch, Heartbeat, Message, Update, Updates

__all__ = [
    "VERSION",
    "MAX_MESSAGE_SIZE",
    "HEARTBEAT_TOPIC",
    "UPDATE_TOPIC_PREFIX",
    "encode",
    "decode",
    "encodePayload",
    "decodeBatched",
    "encodeBroadcast",
    "decodeBroadcast",
    "topicFor",
    "keywordOfTopic",
]

#: the protocol version, the first frame of every message.  CLD2 added Batch,
#: Updates and Update.welcome: a CLD1 peer would misread them, so it is told
#: plainly ("unsupported protocol version") instead.
VERSION = b"CLD2"
MAX_MESSAGE_SIZE = 1024 * 1024
UPDATE_TOPIC_PREFIX = b"K"
HEARTBEAT_TOPIC = b"H\x00"

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Message)


def topicFor(keyword):
    """The broadcast topic of a keyword (upper-cased, NUL-terminated)."""
    return UPDATE_TOPIC_PREFIX + keyword.upper().encode("utf-8", "surrogatepass") + b"\x00"


def keywordOfTopic(topic):
    """The keyword name a broadcast topic is for, or None if it is not one."""
    if len(topic) > 2 and topic[:1] == UPDATE_TOPIC_PREFIX and topic[-1:] == b"\x00":
        try:
            return topic[1:-1].decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            return None
    return None


def encode(message):
    """Frames for one message: ``[VERSION, payload]``."""
    return [VERSION, _encoder.encode(message)]


def decode(frames):
    """The message in ``[VERSION, payload]``; anything else is a ProtocolError."""
    if len(frames) != 2:
        raise ProtocolError(f"expected 2 frames, got {len(frames)}")
    version, payload = frames
    return _decodePayload(version, payload)


def encodePayload(message):
    """One message's payload alone, as a :class:`Batch` carries it."""
    return _encoder.encode(message)


def decodeBatched(payload):
    """The message of one payload of a :class:`Batch`; a Batch in a Batch is a ProtocolError."""
    message = _decodePayload(VERSION, payload)
    if isinstance(message, Batch):
        raise ProtocolError("a Batch inside a Batch")
    return message


def encodeBroadcast(message):
    """Frames for an :class:`Update`, :class:`Updates` or :class:`Heartbeat` (broadcast socket)."""
    if isinstance(message, (Update, Updates)):
        topic = topicFor(message.keyword)
    elif isinstance(message, Heartbeat):
        topic = HEARTBEAT_TOPIC
    else:
        raise TypeError(f"not a broadcast message: {message!r}")
    return [topic, VERSION, _encoder.encode(message)]


def decodeBroadcast(frames):
    """The Update(s) or Heartbeat in ``[topic, VERSION, payload]``, checked against its topic."""
    if len(frames) != 3:
        raise ProtocolError(f"expected 3 frames, got {len(frames)}")
    topic, version, payload = frames
    message = _decodePayload(version, payload)
    if isinstance(message, (Update, Updates)):
        if topic != topicFor(message.keyword):
            raise ProtocolError("update topic does not match its keyword")
    elif isinstance(message, Heartbeat):
        if topic != HEARTBEAT_TOPIC:
            raise ProtocolError("heartbeat on a wrong topic")
    else:
        raise ProtocolError(f"{type(message).__name__} is not a broadcast")
    return message


def _decodePayload(version, payload):
    if version != VERSION:
        raise ProtocolError(f"unsupported protocol version {bytes(version)[:16]!r}")
    if len(payload) > MAX_MESSAGE_SIZE:
        raise ProtocolError(f"message of {len(payload)} bytes exceeds {MAX_MESSAGE_SIZE}")
    try:
        return _decoder.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise ProtocolError(f"undecodable message: {e}") from None
    except (ValueError, TypeError, RecursionError) as e:
        raise ProtocolError(f"invalid message: {e}") from None
