"""Configuration: the seed's INI file, validated once at load.

Pure Python (no twisted, no zmq) so every layer can use it and tests need no
sockets.  A :class:`Config` is immutable: code that wants a different value
(tests picking ephemeral ports, say) asks for a new one with
:meth:`Config.replace` or :meth:`Config.fromMapping`.

The file is found, in order: the ``path`` argument, the ``CAULDRON_CONFIG``
environment variable, else built-in defaults only.  Anywhere a config is
accepted, an already-loaded :class:`Config` is accepted too.

``[security]`` switches secure mode on and names the key files; paths are
made absolute at load (relative to the file's directory), so a process that
changes directory later still finds them.  The keys themselves are read by
:mod:`cauldron.transport.curve`.
"""

import ast
import configparser
import difflib
import os
import stat
import types
import warnings

from cauldron.errors import ConfigError

__all__ = [
    "Config",
    "ConfigWarning",
    "DEFAULTS",
    "ENV_VAR",
    "load",
    "coerce",
    "checkIpcDir",
    "defaultIpcDir",
]

ENV_VAR = "CAULDRON_CONFIG"

#: Every known section and key with its default, as written in an INI file.
DEFAULTS = types.MappingProxyType(
    {
        "zmq": types.MappingProxyType(
            {
                "host": "localhost",
                "protocol": "tcp",
                "dispatch-port": "6511",
                "broadcast-port": "6512",
                "ipc-dir": "",
            }
        ),
        "zmq-router": types.MappingProxyType(
            {
                "enable": "yes",
                "host": "localhost",
                "protocol": "tcp",
                "port": "6510",
                "first-port": "6600",
                "last-port": "6700",
                "timeout": "1000",
                "verbose": "0",
                "process": "thread",
                "allow-spawn": "yes",
            }
        ),
        "security": types.MappingProxyType(
            {
                "curve": "no",
                "secret-key": "",
                "router-key": "",
                "client-keys": "",
                "dispatcher-keys": "",
            }
        ),
    }
)

#: ``[security]`` keys naming files or directories (relative to the config file)
PATH_KEYS = ("secret-key", "router-key", "client-keys", "dispatcher-keys")

_PROTOCOLS = ("tcp", "ipc")
_TRUE = ("yes", "true", "on", "1")
_FALSE = ("no", "false", "off", "0")


class ConfigWarning(UserWarning):
    """A configuration file holds something we ignore (an unknown key)."""


def _integer(text):
    if isinstance(text, bool):
        raise ValueError("not an integer")
    if isinstance(text, int):
        return text
    try:
        return int(str(text).strip(), 10)
    except ValueError:
        raise ValueError("not an integer") from None


def _port(text):
    value = _integer(text)
    if not 1 <= value <= 65535:
        raise ValueError("not a port number (1-65535)")
    return value


def _bindPort(text):
    # 0 asks for an ephemeral port chosen when the socket binds.
    value = _integer(text)
    if not 0 <= value <= 65535:
        raise ValueError("not a port number (0-65535, 0 = ephemeral)")
    return value


def _timeout(text):
    value = _integer(text)
    if value <= 0:
        raise ValueError("not a positive number of milliseconds")
    return value


def _verbose(text):
    value = _integer(text)
    if not 0 <= value <= 3:
        raise ValueError("not a verbosity from 0 to 3")
    return value


def _boolean(text):
    if isinstance(text, bool):
        return text
    word = str(text).strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError("not a boolean (yes/no, true/false, on/off, 1/0)")


def _protocol(text):
    word = str(text).strip().lower()
    if word not in _PROTOCOLS:
        raise ValueError("not a protocol (%s)" % "/".join(_PROTOCOLS))
    return word


def _text(text):
    word = str(text).strip()
    if not word:
        raise ValueError("empty")
    return word


def _path(text):
    # Empty: not set.  Made absolute by _resolvePaths once the base is known.
    if text is None:
        return ""
    return os.path.expanduser(str(text).strip())


_PARSERS = {
    "zmq": {
        "host": _text,
        "protocol": _protocol,
        "dispatch-port": _bindPort,
        "broadcast-port": _bindPort,
        "ipc-dir": _path,
    },
    "zmq-router": {
        "enable": _boolean,
        "host": _text,
        "protocol": _protocol,
        "port": _bindPort,
        "first-port": _port,
        "last-port": _port,
        "timeout": _timeout,
        "verbose": _verbose,
        "process": _text,
        "allow-spawn": _boolean,
    },
    "security": {
        "curve": _boolean,
        "secret-key": _path,
        "router-key": _path,
        "client-keys": _path,
        "dispatcher-keys": _path,
    },
}

#: sections where a misspelt key could silently switch a protection off
_STRICT_SECTIONS = ("security",)


def _address(protocol, host, port):
    """A ZeroMQ endpoint; ipc has no ports, so the port becomes part of the name."""
    if protocol == "ipc":
        return "ipc://%s-%d" % (host, port)
    return "%s://%s:%d" % (protocol, host, port)


class Config:
    """A validated, immutable configuration.

    Build one with :func:`load` or :meth:`fromMapping`; values are typed
    (ports are ints, flags are bools) so callers never parse strings.
    """

    __slots__ = ("_values", "_path", "_source")

    def __init__(self, values, path=None, source="<defaults>"):
        # Private: use load() or fromMapping(), which validate.
        object.__setattr__(self, "_values", values)
        object.__setattr__(self, "_path", path)
        object.__setattr__(self, "_source", source)

    def __setattr__(self, name, value):
        raise AttributeError("Config is immutable; use replace()")

    def __delattr__(self, name):
        raise AttributeError("Config is immutable; use replace()")

    @classmethod
    def fromMapping(cls, mapping=None, source="<mapping>", path=None):
        """Build from ``{section: {key: value}}``; values may be strings, ints or bools.

        Missing keys take their defaults; validation is the same as for a file.
        """
        raw = {section: dict(keys) for section, keys in DEFAULTS.items()}
        for section, keys in (mapping or {}).items():
            if section not in raw:
                _unknownSection(section, source)
                continue
            for key, value in keys.items():
                if key not in raw[section] and section in _STRICT_SECTIONS:
                    raise ConfigError(
                        "%s: [%s] %s: unknown key (known: %s)"
                        % (source, section, key, ", ".join(raw[section]))
                    )
                if key not in raw[section]:
                    warnings.warn(
                        "%s: [%s] %s: unknown key, ignored" % (source, section, key),
                        ConfigWarning,
                        stacklevel=3,
                    )
                    continue
                raw[section][key] = value
        return cls(_validate(raw, source, _baseOf(path)), path=path, source=source)

    @property
    def path(self):
        """The file this came from, or None."""
        return self._path

    @property
    def source(self):
        """Where this came from, for messages: a path, ``<defaults>``, or a given name."""
        return self._source

    def get(self, section, key):
        """The typed value of ``[section] key``; ConfigError if there is no such key."""
        try:
            keys = self._values[section]
        except KeyError:
            raise ConfigError("%s: unknown section [%s]" % (self._source, section)) from None
        try:
            return keys[key]
        except KeyError:
            raise ConfigError(
                "%s: [%s] %s: unknown key" % (self._source, section, key)
            ) from None

    def replace(self, section, key, value):
        """A new config with one value changed (validated); this one is untouched."""
        self.get(section, key)
        raw = {s: dict(keys) for s, keys in self._values.items()}
        raw[section][key] = value
        return Config(
            _validate(raw, self._source, _baseOf(self._path)),
            path=self._path, source=self._source,
        )

    def asDict(self):
        """A plain copy of every typed value, ``{section: {key: value}}``."""
        return {section: dict(keys) for section, keys in self._values.items()}

    def routerAddress(self):
        """Where clients and dispatchers reach the router."""
        r = self._values["zmq-router"]
        return _address(r["protocol"], r["host"], r["port"])

    def dispatchAddress(self):
        """The dispatcher's command address from ``[zmq]`` (used without a router)."""
        z = self._values["zmq"]
        return _address(z["protocol"], z["host"], z["dispatch-port"])

    def broadcastAddress(self):
        """The dispatcher's broadcast address from ``[zmq]`` (used without a router)."""
        z = self._values["zmq"]
        return _address(z["protocol"], z["host"], z["broadcast-port"])

    def timeoutSeconds(self):
        """``[zmq-router] timeout`` in seconds, as Twisted timers want it."""
        return self._values["zmq-router"]["timeout"] / 1000.0

    def __eq__(self, other):
        if not isinstance(other, Config):
            return NotImplemented
        return self._values == other._values

    def __hash__(self):
        return hash(tuple((s, tuple(sorted(k.items()))) for s, k in sorted(self._values.items())))

    def __repr__(self):
        return "<Config from %s>" % (self._source,)


def _unknownSection(section, source):
    """Other tools may share the file, but [zmq_router] or [Security] is a typo.

    A misspelt [security] would leave secure mode off without a word: an error.
    """
    if difflib.get_close_matches(section.lower(), _STRICT_SECTIONS, cutoff=0.75):
        raise ConfigError(
            "%s: [%s]: unknown section (did you mean [security]?)" % (source, section)
        )
    if section.lower().startswith("zmq"):
        warnings.warn(
            "%s: [%s]: unknown section, ignored (known: [zmq], [zmq-router], [security])"
            % (source, section),
            ConfigWarning,
            stacklevel=4,
        )


def _baseOf(path):
    """The directory relative paths in a config are relative to."""
    return os.path.dirname(os.path.abspath(path)) if path else os.getcwd()


def _quoted(text):
    """True for ``"x"`` or ``'x'``: TOML habits, which INI keeps as part of the value."""
    if not isinstance(text, str):
        return False
    text = text.strip()
    return len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'"


def _validate(raw, source, base):
    """Parse every value of ``raw``; the first bad one raises ConfigError."""
    values = {}
    for section, parsers in _PARSERS.items():
        values[section] = {}
        for key, parse in parsers.items():
            text = raw[section][key]
            try:
                if _quoted(text):
                    raise ValueError("INI values take no quotes (is this a TOML file?)")
                values[section][key] = parse(text)
            except ValueError as e:
                raise ConfigError(
                    "%s: [%s] %s = %r: %s" % (source, section, key, text, e)
                ) from None
    z = values["zmq"]
    if z["dispatch-port"] and z["dispatch-port"] == z["broadcast-port"]:
        raise ConfigError(
            "%s: [zmq] broadcast-port = %r: must differ from dispatch-port"
            % (source, raw["zmq"]["broadcast-port"])
        )
    r = values["zmq-router"]
    if r["first-port"] + 2 > r["last-port"]:
        # Leases come from [first-port, last-port) in pairs (p, p + 1): the
        # range must hold at least one pair.
        raise ConfigError(
            "%s: [zmq-router] last-port = %r: must be at least first-port + 2 = %r "
            "(last-port is exclusive; leases are port pairs from [first-port, last-port))"
            % (source, raw["zmq-router"]["last-port"], r["first-port"] + 2)
        )
    _validateIpc(values, raw["zmq"]["ipc-dir"], source, base)
    _validateSecurity(values["security"], source, base)
    return types.MappingProxyType(
        {s: types.MappingProxyType(k) for s, k in values.items()}
    )


def defaultIpcDir(environ=None):
    """``$XDG_RUNTIME_DIR/cauldron`` if that is set, else ``/tmp/cauldron-UID``."""
    environ = os.environ if environ is None else environ
    runtime = environ.get("XDG_RUNTIME_DIR", "").strip()
    if runtime and os.path.isabs(runtime):
        return os.path.join(runtime, "cauldron")
    return os.path.join("/tmp", "cauldron-%d" % (os.getuid(),))


def checkIpcDir(path):
    """Why the folder of ipc files is unsafe to use, or None (a missing one is made later)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        return "cannot be used: %s" % (e.strerror,)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        return "exists and is not a folder"
    if info.st_uid != os.getuid():
        return "is owned by uid %d, not by this user (uid %d)" % (info.st_uid, os.getuid())
    if info.st_mode & 0o022:
        return ("is writable by others (mode %03o): chmod 700 it, or set another ipc-dir"
                % (stat.S_IMODE(info.st_mode),))
    return None


def _validateIpc(values, rawDir, source, base):
    """Resolve ``[zmq] ipc-dir``; with ipc in use, check it and put relative hosts in it.

    ZeroMQ names an ipc socket by a file path: ``HOST-PORT``.  A relative
    HOST would land in each process's working directory, so it is made
    ``IPC-DIR/HOST``: every process of the user finds the same files.
    """
    z, r = values["zmq"], values["zmq-router"]
    folder = z["ipc-dir"]
    folder = os.path.normpath(os.path.join(base, folder)) if folder else defaultIpcDir()
    z["ipc-dir"] = folder
    if "ipc" not in (z["protocol"], r["protocol"]):
        return
    problem = checkIpcDir(folder)
    if problem:
        raise ConfigError("%s: [zmq] ipc-dir = %r: %s" % (source, rawDir or folder, problem))
    for section in (z, r):
        if section["protocol"] == "ipc":
            section["host"] = os.path.join(folder, section["host"])


def _validateSecurity(security, source, base):
    """Make key paths absolute; secure mode needs at least this process's own key."""
    for key in PATH_KEYS:
        if security[key]:
            security[key] = os.path.normpath(os.path.join(base, security[key]))
    if security["curve"] and not security["secret-key"]:
        raise ConfigError(
            "%s: [security] secret-key: required with curve = yes"
            " (this process's key pair, NAME.key_secret)" % (source,)
        )


def _shownLine(line):
    """A line of the file for a message: stripped, cut short, quoted."""
    line = line.strip()
    if len(line) > 60:
        line = line[:59] + "\u2026"
    return repr(line)


def _iniProblem(error):
    """One line saying what configparser found wrong (its own text spans lines)."""
    if isinstance(error, configparser.MissingSectionHeaderError):
        return "not an INI file: line %d comes before any [section] header: %s" % (
            error.lineno, _shownLine(error.line))
    if isinstance(error, configparser.ParsingError):
        lineno, line = error.errors[0]
        try:  # configparser keeps repr(line)
            line = ast.literal_eval(line)
        except (ValueError, SyntaxError):
            pass
        more = len(error.errors) - 1
        return "not an INI file: line %d is neither [section] nor key = value: %s%s" % (
            lineno, _shownLine(line), " (and %d more bad lines)" % more if more else "")
    if isinstance(error, configparser.DuplicateSectionError):
        return "line %s: section [%s] given twice" % (error.lineno, error.section)
    if isinstance(error, configparser.DuplicateOptionError):
        return "line %s: [%s] %s given twice" % (error.lineno, error.section, error.option)
    return "not an INI file: %s" % (" ".join(str(error).split()),)


def _readFile(path):
    parser = configparser.ConfigParser(interpolation=None, default_section="\0none")
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f, source=path)
    except FileNotFoundError:
        raise ConfigError("%s: configuration file not found" % (path,)) from None
    except OSError as e:
        raise ConfigError("%s: cannot read configuration file: %s" % (path, e.strerror)) from None
    except UnicodeDecodeError as e:
        raise ConfigError(
            "%s: not an INI file: not UTF-8 text (byte 0x%02x at offset %d)"
            % (path, e.object[e.start], e.start)
        ) from None
    except configparser.Error as e:
        raise ConfigError("%s: %s" % (path, _iniProblem(e))) from None
    return {section: dict(parser.items(section)) for section in parser.sections()}


def load(path=None):
    """Load and validate a configuration.

    ``path`` may be a file path, an already-loaded :class:`Config` (returned
    unchanged), or None: then ``$CAULDRON_CONFIG`` names the file, and without
    it the built-in defaults are used.  A file named but missing is an error,
    never a silent fallback to defaults.
    """
    if isinstance(path, Config):
        return path
    if path is None:
        path = os.environ.get(ENV_VAR) or None
    if path is None:
        return Config.fromMapping({}, source="<defaults>")
    path = os.fspath(path)
    return Config.fromMapping(_readFile(path), source=path, path=path)


#: Anywhere a config is accepted, a path, None or a Config will do.
coerce = load
