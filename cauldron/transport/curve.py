"""Secure mode: CURVE key pairs from the configuration, and the ZAP handler admitting them.

A :class:`Curve` holds what one process needs (``[security]`` in the
configuration): its own key pair, the router's public key, and the public
keys of the clients and dispatchers allowed in, each known by its name (the
certificate file's stem).  Loading fails closed: any key file that is
missing, malformed, or open to others stops the process at start with a
:class:`~cauldron.errors.ConfigError` naming the file, never a fall-back to
plain text.

:class:`ZapHandler` answers libzmq's ZAP requests in the reactor, from a
ROUTER bound to ``inproc://zeromq.zap.01`` in the Transport's context: 200
with the key's name as User-Id for an allowed CURVE key, 400 for anything
else.  No thread, so closing the context never waits for one.

Key files are ZeroMQ certificates, as :func:`zmq.auth.create_certificates`
writes them (``NAME.key`` public, ``NAME.key_secret`` secret);
:func:`generateCertificate` and :func:`listCertificates` are behind
``cauldron keys``.
"""

import collections
import os
import re
import stat
import tempfile

import zmq
import zmq.auth
from zmq.utils import z85

from cauldron.errors import ConfigError
from cauldron.transport.publisher import _ProblemLog
from cauldron.transport.sockets import ZAP_DOMAIN, _Connection

__all__ = [
    "Curve",
    "Refusals",
    "ZapHandler",
    "ZAP_ENDPOINT",
    "generateCertificate",
    "isValidKey",
    "listCertificates",
    "readCertificate",
]

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
#: a certificate is a few hundred bytes; anything far larger is not one
MAX_CERTIFICATE_BYTES = 64 * 1024
#: names ``cauldron keys generate`` accepts (they become User-Ids and file names)
NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@+-]{0,127}")

_Z85_KEY_LENGTH = 40


# -- key files ------------------------------------------------------------------


def _problem(path, what):
    return ConfigError(f"{path}: {what}")


def _whom(mode):
    return "others" if mode & 0o007 else "its group"


def _checkDirectory(path, what="key directory"):
    """Refuse a directory others may write to: they could put their own keys there."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise _problem(path, f"no such {what}") from None
    except OSError as e:
        raise _problem(path, f"cannot read this {what}: {e.strerror}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise _problem(path, f"not a directory (expected a {what})")
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o022:
        raise _problem(path, f"{what} writable by {_whom(mode & 0o022)} (mode {mode:04o}):"
                             " chmod go-w it")


def _checkSecretMode(path, mode):
    if mode & 0o077:
        access = "readable" if mode & 0o044 else "writable" if mode & 0o022 else "usable"
        raise _problem(path, f"{access} by {_whom(mode & 0o077)} (mode {mode:04o}):"
                             " chmod 600 it")


def _checkPublicMode(path, mode):
    if mode & 0o022:
        raise _problem(path, f"writable by {_whom(mode & 0o022)} (mode {mode:04o}):"
                             " chmod go-w it")


def _readBytes(path, secret):
    """The file's bytes, its type and permissions checked on the file actually read."""
    try:
        # O_NONBLOCK: a FIFO planted there must not hang the process.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise _problem(path, "no such key file") from None
    except OSError as e:
        raise _problem(path, f"cannot read this key file: {e.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _problem(path, "not a regular file (expected a key file)")
        (_checkSecretMode if secret else _checkPublicMode)(path, stat.S_IMODE(info.st_mode))
        data = os.read(fd, MAX_CERTIFICATE_BYTES + 1)
    except OSError as e:
        raise _problem(path, f"cannot read this key file: {e.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_CERTIFICATE_BYTES:
        raise _problem(path, f"malformed certificate: over {MAX_CERTIFICATE_BYTES} bytes")
    return data


def isValidKey(key):
    """Whether ``key`` is a CURVE key in Z85 (40 characters encoding 32 bytes)."""
    try:
        return len(key) == _Z85_KEY_LENGTH and len(z85.decode(key)) == 32
    except Exception:  # z85 raises KeyError, ValueError, struct.error...
        return False


def _z85Key(path, field, text):
    """A Z85 key as ZeroMQ wants it (40 characters, 32 bytes); ConfigError otherwise."""
    if not isValidKey(text):
        raise _problem(path, f"malformed certificate: {field} is not a 40-character Z85 key")
    return text


def _fields(path, data):
    """The public-key and secret-key values of a ZPL certificate (as pyzmq reads them)."""
    fields = {}
    for line in data.splitlines():
        line = line.strip()
        if not line or line.startswith(b"#"):
            continue
        name, sep, value = line.partition(b"=")
        name = name.strip()
        if sep and name in (b"public-key", b"secret-key"):
            key = name.decode()
            if key in fields:
                raise _problem(path, f"malformed certificate: two {key} lines")
            fields[key] = value.strip(b" \t'\"")
    return fields


def readCertificate(path, secret=False):
    """``(publicKey, secretKey)`` (Z85 bytes) of a certificate file; fails closed.

    With ``secret``, the file must hold a secret key, be readable by its owner
    only, and its public key (if written) must be the secret key's.  Without,
    it must hold a public key and no secret key, and be writable by its owner
    only.  Anything else is a ConfigError naming the file and the problem.
    """
    fields = _fields(path, _readBytes(path, secret))
    if not secret:
        if "secret-key" in fields:
            raise _problem(path, "holds a secret key: a public certificate must not"
                                 " (give out NAME.key, never NAME.key_secret)")
        if "public-key" not in fields:
            raise _problem(path, "malformed certificate: no public-key")
        return _z85Key(path, "public-key", fields["public-key"]), None
    if "secret-key" not in fields:
        raise _problem(path, "malformed certificate: no secret-key (is this the public one?)")
    secretKey = _z85Key(path, "secret-key", fields["secret-key"])
    publicKey = zmq.curve_public(secretKey)
    written = fields.get("public-key")
    if written is not None and _z85Key(path, "public-key", written) != publicKey:
        raise _problem(path, "malformed certificate: public-key does not match secret-key")
    return publicKey, secretKey


def _nameOf(path):
    """A key's name: its file's name without the suffix."""
    base = os.path.basename(path)
    for suffix in (SECRET_SUFFIX, PUBLIC_SUFFIX):
        if base.endswith(suffix):
            return base[: -len(suffix)]
    return base


def _readDirectory(path):
    """``{name: (publicKey, file)}`` for every ``*.key`` in a key directory; fails closed."""
    _checkDirectory(path)
    try:
        entries = sorted(os.listdir(path))
    except OSError as e:
        raise _problem(path, f"cannot list this key directory: {e.strerror}") from None
    keys = {}
    for entry in entries:
        if entry.startswith(".") or not entry.endswith(PUBLIC_SUFFIX):
            continue
        file = os.path.join(path, entry)
        keys[_nameOf(file)] = (readCertificate(file)[0], file)
    return keys


def _readOptionalKey(path):
    """The public key of a certificate in a safe directory, or None if not configured."""
    if not path:
        return None
    _checkDirectory(os.path.dirname(path) or ".")
    return readCertificate(path)[0]


# -- the keys of a process ------------------------------------------------------


class Curve:
    """The CURVE keys of one process, read once at start (see :meth:`fromConfig`).

    :ivar name: this process's key name (its secret key file's stem)
    :ivar publicKey: this process's public key (Z85 bytes)
    :ivar secretKey: this process's secret key (Z85 bytes; never shown)
    :ivar allowed: ``{publicKey: name}`` of every client and dispatcher key
        allowed in (what the authenticator admits)
    """

    def __init__(self, name, publicKey, secretKey, routerKey=None,
                 clientKeys=None, dispatcherKeys=None, source="<curve>"):
        self.name = name
        self.publicKey = publicKey
        self.secretKey = secretKey
        self.source = source
        self._routerKey = routerKey
        clientKeys, dispatcherKeys = clientKeys or {}, dispatcherKeys or {}
        self._dispatchers = {n.lower(): key for n, (key, _) in dispatcherKeys.items()}
        self.allowed = _allowed(clientKeys, dispatcherKeys)
        self._byName = {name.lower(): key for key, name in self.allowed.items()}

    @classmethod
    def fromConfig(cls, config):
        """The keys ``[security]`` names, or None when ``curve = no``; ConfigError on a problem."""
        if not config.get("security", "curve"):
            return None
        secretPath = config.get("security", "secret-key")
        if not secretPath:
            raise ConfigError(f"{config.source}: [security] secret-key: required with curve = yes")
        _checkDirectory(os.path.dirname(secretPath) or ".", "directory of the secret key")
        publicKey, secretKey = readCertificate(secretPath, secret=True)
        return cls(
            _nameOf(secretPath), publicKey, secretKey,
            routerKey=_readOptionalKey(config.get("security", "router-key")),
            clientKeys=_readKeys(config, "client-keys"),
            dispatcherKeys=_readKeys(config, "dispatcher-keys"),
            source=config.source,
        )

    def routerKey(self):
        """The router's public key; ConfigError if ``router-key`` is not set."""
        if self._routerKey is None:
            raise ConfigError(f"{self.source}: [security] router-key: not set,"
                              " and secure mode needs the router's public key")
        return self._routerKey

    def dispatcherKey(self, service):
        """The public key of ``dispatcher-keys/SERVICE.key``, or None."""
        return self._dispatchers.get(service.lower())

    def publicKeyOf(self, name):
        """The public key (Z85 bytes) of the allowed key called ``name``, or None."""
        return self._byName.get(name.lower())

    def isDispatcher(self, name):
        """Whether ``name`` (a User-Id) is the name of a dispatcher key."""
        return name.lower() in self._dispatchers

    def __repr__(self):
        return f"<Curve {self.name!r} public {self.publicKey.decode()}>"


def _readKeys(config, key):
    path = config.get("security", key)
    return _readDirectory(path) if path else {}


def _allowed(clientKeys, dispatcherKeys):
    """``{publicKey: name}``; ConfigError naming both files on a name or key used twice."""
    allowed = {}
    files = {}  # lower-case name -> file
    for keys in (dispatcherKeys, clientKeys):
        for name, (key, file) in keys.items():
            other = files.get(name.lower())
            if other is not None:
                raise ConfigError(f"{other} and {file}: two keys named {name!r}"
                                  " (names must be unique over client-keys and dispatcher-keys)")
            if key in allowed:
                other = files[allowed[key].lower()]
                raise ConfigError(f"{other} and {file}: the same public key under two names")
            files[name.lower()] = file
            allowed[key] = name
    return allowed


# -- cauldron keys ---------------------------------------------------------------


def generateCertificate(directory, name):
    """Write ``DIR/NAME.key`` and ``DIR/NAME.key_secret`` (0600); their paths.

    Never overwrites; the directory is made 0700 if missing.  The secret is
    never readable by others, not even for a moment: pyzmq writes both files
    (with the umask's permissions) in a private scratch directory, and they
    are copied from there into files created with their final modes.
    """
    if not NAME_PATTERN.fullmatch(name):
        raise ConfigError(f"{name!r}: not a key name (letters, digits and _.@+-, at most 128,"
                          " not starting with a dot or dash)")
    directory = os.path.abspath(directory)
    _makeDirectory(directory)
    public = os.path.join(directory, name + PUBLIC_SUFFIX)
    secret = os.path.join(directory, name + SECRET_SUFFIX)
    for path in (public, secret):
        if os.path.lexists(path):
            raise _problem(path, "exists already; not overwritten")
    try:
        with tempfile.TemporaryDirectory(prefix=".cauldron-keys-", dir=directory) as scratch:
            madePublic, madeSecret = zmq.auth.create_certificates(scratch, name)
            _install(madeSecret, secret, 0o600)
            try:
                _install(madePublic, public, 0o644)
            except BaseException:
                os.unlink(secret)
                raise
    except OSError as e:
        raise _problem(directory, f"cannot write keys here: {e.strerror}") from None
    return public, secret


def _makeDirectory(directory):
    if not os.path.isdir(directory):
        try:
            os.makedirs(directory, mode=0o700)
            os.chmod(directory, 0o700)
        except OSError as e:
            raise _problem(directory, f"cannot create key directory: {e.strerror}") from None
    _checkDirectory(directory)


def _install(source, target, mode):
    """Copy ``source`` into a new file ``target`` created with ``mode`` (never replacing one)."""
    with open(source, "rb") as f:
        data = f.read()
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    except FileExistsError:
        raise _problem(target, "exists already; not overwritten") from None
    except OSError as e:
        raise _problem(target, f"cannot create: {e.strerror}") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def listCertificates(directory):
    """``[(name, publicKey, hasSecret)]`` sorted by name, read as a process would read them.

    So a listing that succeeds is a key directory a process accepts; any
    problem is a ConfigError naming the file.
    """
    publics = _readDirectory(directory)
    _allowed(publics, {})  # a name or a key twice fails here as it would at start
    secrets = {}
    for entry in sorted(os.listdir(directory)):
        if entry.endswith(SECRET_SUFFIX) and not entry.startswith("."):
            path = os.path.join(directory, entry)
            name = _nameOf(path)
            secrets[name] = readCertificate(path, secret=True)[0]
            if name in publics and publics[name][0] != secrets[name]:
                raise _problem(path, f"not the secret key of {name}{PUBLIC_SUFFIX}")
    return [
        (name, publics[name][0] if name in publics else secrets[name], name in secrets)
        for name in sorted(set(publics) | set(secrets))
    ]


# -- the authenticator -----------------------------------------------------------


class Refusals:
    """Peers a secure Transport turned away: counted for good, logged at most once a second."""

    def __init__(self, reactor):
        #: ``{kind: count}`` since the start
        self.counts = collections.Counter()
        self._log = _ProblemLog("secure mode", reactor)

    def __call__(self, kind, reason):
        self.counts[kind] += 1
        self._log(kind, reason)

    @property
    def total(self):
        return sum(self.counts.values())

    def stop(self):
        """Cancel the pending log line (the Transport is closing)."""
        self._log.stop()


class ZapHandler(_Connection):
    """The ZAP handler (RFC 27) of one ZeroMQ context, answered in the reactor.

    A dict lookup per handshake: 200 and the key's name as User-Id for an
    allowed CURVE key, 400 for any other key or mechanism.  While it is not
    bound (stopped, or never started), secure servers admit no one, as they
    enforce their ZAP domain.
    """

    socketType = zmq.ROUTER
    # [envelope, "", version, id, domain, address, identity, mechanism, credentials...]
    maxFrames = 16

    def __init__(self, factory, allowed, refusals):
        self._allowed = {z85.decode(key): name.encode("utf-8") for key, name in allowed.items()}
        self._onRefused = refusals
        #: handshakes admitted and refused so far
        self.admitted = 0
        self.refused = 0
        super().__init__(factory, self._request)
        self.bind(ZAP_ENDPOINT)

    def _request(self, frames):
        if len(frames) < 8 or frames[1] != b"" or frames[2] != b"1.0":
            return  # not from libzmq, which is the only peer of this inproc socket
        envelope, requestId, domain, address, mechanism = (
            frames[0], frames[3], frames[4], frames[5], frames[7])
        name, why = self._judge(domain, mechanism, frames[8:])
        if name is None:
            self.refused += 1
            self._onRefused("refused keys", f"{why} from {_text(address) or 'a local peer'}")
            reply = [b"400", b"not allowed", b""]
        else:
            self.admitted += 1
            reply = [b"200", b"OK", name]
        self.send([envelope, b"", b"1.0", requestId, *reply, b""])

    def _judge(self, domain, mechanism, credentials):
        """``(name, None)`` for an allowed key, ``(None, why)`` otherwise."""
        if mechanism != b"CURVE":
            return None, f"mechanism {_text(mechanism)}"
        if domain != ZAP_DOMAIN:
            return None, f"domain {_text(domain)!r}"
        if len(credentials) != 1 or len(credentials[0]) != 32:
            return None, "malformed CURVE credentials"
        name = self._allowed.get(credentials[0])
        if name is None:
            return None, f"unknown key {z85.encode(credentials[0]).decode()}"
        return name, None

    def stop(self):
        """Unbind: from now on, secure servers of this context admit no one."""
        self.shutdown()


def _text(data):
    return data[:64].decode("utf-8", "replace")
