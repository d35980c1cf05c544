"""Tests for cauldron.config: defaults, lookup order, validation, immutability."""

import os
import warnings

import pytest

from cauldron import config
from cauldron.config import Config, ConfigWarning, load
from cauldron.errors import CauldronError, ConfigError


@pytest.fixture(autouse=True)
def noEnvironment(monkeypatch):
    """Tests must not depend on the developer's CAULDRON_CONFIG."""
    monkeypatch.delenv("CAULDRON_CONFIG", raising=False)


def writeConfig(tmp_path, text, name="config.ini"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


EXPECTED_DEFAULTS = {
    ("zmq", "host"): "localhost",
    ("zmq", "protocol"): "tcp",
    ("zmq", "dispatch-port"): 6511,
    ("zmq", "broadcast-port"): 6512,
    ("zmq", "ipc-dir"): config.defaultIpcDir(),
    ("zmq-router", "enable"): True,
    ("zmq-router", "host"): "localhost",
    ("zmq-router", "protocol"): "tcp",
    ("zmq-router", "port"): 6510,
    ("zmq-router", "first-port"): 6600,
    ("zmq-router", "last-port"): 6700,
    ("zmq-router", "timeout"): 1000,
    ("zmq-router", "verbose"): 0,
    ("zmq-router", "process"): "thread",
    ("zmq-router", "allow-spawn"): True,
    ("security", "curve"): False,
    ("security", "secret-key"): "",
    ("security", "router-key"): "",
    ("security", "client-keys"): "",
    ("security", "dispatcher-keys"): "",
}


def test_defaults():
    c = load()
    assert c.path is None
    for (section, key), value in EXPECTED_DEFAULTS.items():
        got = c.get(section, key)
        assert got == value and type(got) is type(value), (section, key)


def test_exactlyTheSeedKeysAndSecurity():
    c = load()
    keys = {(s, k) for s, ks in c.asDict().items() for k in ks}
    assert keys == set(EXPECTED_DEFAULTS)


def test_addressHelpers():
    c = load()
    assert c.routerAddress() == "tcp://localhost:6510"
    assert c.dispatchAddress() == "tcp://localhost:6511"
    assert c.broadcastAddress() == "tcp://localhost:6512"
    assert c.timeoutSeconds() == 1.0


def test_ipcAddresses():
    c = Config.fromMapping(
        {
            "zmq": {"protocol": "ipc", "host": "/tmp/cd"},
            "zmq-router": {"protocol": "IPC", "host": "/tmp/rt"},
        }
    )
    assert c.routerAddress() == "ipc:///tmp/rt-6510"
    assert c.dispatchAddress() == "ipc:///tmp/cd-6511"
    assert c.broadcastAddress() == "ipc:///tmp/cd-6512"


def test_loadFile(tmp_path):
    path = writeConfig(
        tmp_path,
        "[zmq]\nhost = example.org\ndispatch-port = 7001\n"
        "[zmq-router]\nenable = No\ntimeout = 250\nverbose = 2\n",
    )
    c = load(path)
    assert c.path == path
    assert c.get("zmq", "host") == "example.org"
    assert c.get("zmq", "dispatch-port") == 7001
    assert c.get("zmq", "broadcast-port") == 6512
    assert c.get("zmq-router", "enable") is False
    assert c.get("zmq-router", "verbose") == 2
    assert c.timeoutSeconds() == 0.25


def test_pathLike(tmp_path):
    path = tmp_path / "c.ini"
    path.write_text("[zmq]\nhost = h\n")
    assert load(path).get("zmq", "host") == "h"


def test_environment(tmp_path, monkeypatch):
    path = writeConfig(tmp_path, "[zmq-router]\nport = 7777\n")
    monkeypatch.setenv("CAULDRON_CONFIG", path)
    c = load()
    assert c.path == path
    assert c.routerAddress() == "tcp://localhost:7777"


def test_argumentBeatsEnvironment(tmp_path, monkeypatch):
    monkeypatch.setenv("CAULDRON_CONFIG", writeConfig(tmp_path, "[zmq]\nhost = env\n", "e.ini"))
    path = writeConfig(tmp_path, "[zmq]\nhost = arg\n", "a.ini")
    assert load(path).get("zmq", "host") == "arg"


def test_missingFileNamed(tmp_path):
    path = str(tmp_path / "nope.ini")
    with pytest.raises(ConfigError, match="nope.ini"):
        load(path)


def test_missingFileFromEnvironment(tmp_path, monkeypatch):
    path = str(tmp_path / "gone.ini")
    monkeypatch.setenv("CAULDRON_CONFIG", path)
    with pytest.raises(ConfigError, match="gone.ini"):
        load()


def test_emptyEnvironmentMeansDefaults(monkeypatch):
    monkeypatch.setenv("CAULDRON_CONFIG", "")
    assert load() == load(None)


def test_configPassthrough():
    c = Config.fromMapping({"zmq": {"dispatch-port": 0}})
    assert load(c) is c
    assert config.coerce(c) is c


def test_ipcDirDefault(monkeypatch):
    """ipc files go in $XDG_RUNTIME_DIR/cauldron, else /tmp/cauldron-UID."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1234")
    assert load().get("zmq", "ipc-dir") == "/run/user/1234/cauldron"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert load().get("zmq", "ipc-dir") == "/tmp/cauldron-%d" % os.getuid()
    monkeypatch.setenv("XDG_RUNTIME_DIR", "relative")  # not a runtime dir: ignored
    assert load().get("zmq", "ipc-dir") == "/tmp/cauldron-%d" % os.getuid()


def test_ipcRelativeHostsGoInTheIpcDir(tmp_path):
    """A relative ipc host is made IPC-DIR/HOST, whatever the working directory."""
    path = writeConfig(
        tmp_path,
        "[zmq]\nprotocol = ipc\nhost = 127.0.0.1\nipc-dir = sockets\n"
        "[zmq-router]\nprotocol = ipc\n",
    )
    c = load(path)
    folder = str(tmp_path / "sockets")  # relative to the config file
    assert c.get("zmq", "ipc-dir") == folder
    assert c.dispatchAddress() == "ipc://%s/127.0.0.1-6511" % folder
    assert c.routerAddress() == "ipc://%s/localhost-6510" % folder
    assert not os.path.exists(folder)  # made by whoever binds first, not at load
    again = Config.fromMapping(c.asDict())  # written back (a spawned router): the same
    assert again.dispatchAddress() == c.dispatchAddress()
    tcp = load(writeConfig(tmp_path, "[zmq]\nhost = 127.0.0.1\n", "tcp.ini"))
    assert tcp.get("zmq", "host") == "127.0.0.1"


@pytest.mark.parametrize("mode, why", [
    (0o777, "is writable by others (mode 777): chmod 700 it, or set another ipc-dir"),
    (0o720, "is writable by others (mode 720)"),
])
def test_ipcDirUnsafe(tmp_path, mode, why):
    """An ipc-dir others can write to is refused at load, naming file, key and value."""
    folder = tmp_path / "open"
    folder.mkdir()
    folder.chmod(mode)
    path = writeConfig(tmp_path, "[zmq]\nprotocol = ipc\nipc-dir = %s\n" % folder)
    with pytest.raises(ConfigError) as info:
        load(path)
    assert str(info.value).startswith("%s: [zmq] ipc-dir = %r: %s" % (path, str(folder), why))
    folder.chmod(0o700)
    assert load(path).get("zmq", "ipc-dir") == str(folder)
    tcp = writeConfig(tmp_path, "[zmq]\nipc-dir = %s\n" % folder, "tcp.ini")
    folder.chmod(mode)
    load(tcp)  # not checked when nothing uses ipc


def test_ipcDirOwnedBySomeoneElse():
    """A folder owned by another user (here root's /) is refused."""
    if os.getuid() == 0:
        why = "is writable by others"
        folder = "/tmp"
    else:
        why = "is owned by uid 0, not by this user"
        folder = "/"
    assert why in config.checkIpcDir(folder)
    with pytest.raises(ConfigError, match="ipc-dir"):
        Config.fromMapping({"zmq": {"protocol": "ipc", "ipc-dir": folder}})


def test_ipcDirNotAFolder(tmp_path):
    (tmp_path / "file").write_text("")
    assert config.checkIpcDir(str(tmp_path / "file")) == "exists and is not a folder"
    assert config.checkIpcDir(str(tmp_path / "missing")) is None


def test_unparsable(tmp_path):
    path = writeConfig(tmp_path, "this is not ini\n[zmq\n")
    with pytest.raises(ConfigError, match="config.ini"):
        load(path)


def test_duplicateKeyIsUnparsable(tmp_path):
    path = writeConfig(tmp_path, "[zmq]\nhost = a\nhost = b\n")
    with pytest.raises(ConfigError, match="config.ini"):
        load(path)


NOT_INI = [
    ("toml.ini", b'title = "x"\n[zmq]\nhost = "x"\n',
     "not an INI file: line 1 comes before any [section] header: 'title = \"x\"'"),
    ("image.png", b"\x89PNG\r\n\x1a\n\x00\x00",
     "not an INI file: not UTF-8 text (byte 0x89 at offset 0)"),
    ("nul.bin", b"\x00\x01\x02\n",
     r"not an INI file: line 1 comes before any [section] header: '\x00\x01\x02'"),
    ("bad.ini", b"[zmq]\nhost\n[x\n",
     "not an INI file: line 2 is neither [section] nor key = value: 'host' (and 1 more bad lines)"),
    ("twice.ini", b"[zmq]\n[zmq]\n", "line 2: section [zmq] given twice"),
    ("key.ini", b"[zmq]\nhost = a\nhost = b\n", "line 3: [zmq] host given twice"),
    ("quoted.toml", b'[zmq]\nhost = "127.0.0.1"\n',
     "[zmq] host = '\"127.0.0.1\"': INI values take no quotes (is this a TOML file?)"),
]


@pytest.mark.parametrize("name, content, why", NOT_INI, ids=[n for n, _, _ in NOT_INI])
def test_notIniIsOneLine(tmp_path, name, content, why):
    """A file that is not INI is one line: the file, then what is wrong, said once."""
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        load(str(path))
    message = str(info.value)
    assert message == "%s: %s" % (path, why)
    assert "\n" not in message and message.count(str(path)) == 1


def test_badValueNamesEverything(tmp_path):
    path = writeConfig(tmp_path, "[zmq]\ndispatch-port = sixty\n")
    with pytest.raises(ConfigError) as info:
        load(path)
    message = str(info.value)
    for part in (path, "[zmq]", "dispatch-port", "sixty", "not an integer"):
        assert part in message
    assert isinstance(info.value, CauldronError)


@pytest.mark.parametrize(
    "section, key, value",
    [
        ("zmq", "dispatch-port", "sixty"),
        ("zmq", "dispatch-port", "-1"),
        ("zmq", "broadcast-port", "65536"),
        ("zmq", "broadcast-port", "1.5"),
        ("zmq-router", "port", "70000"),
        ("zmq-router", "first-port", "0"),
        ("zmq-router", "last-port", "65536"),
        ("zmq-router", "timeout", "0"),
        ("zmq-router", "timeout", "-5"),
        ("zmq-router", "timeout", "fast"),
        ("zmq-router", "verbose", "4"),
        ("zmq-router", "verbose", "-1"),
        ("zmq-router", "enable", "maybe"),
        ("zmq-router", "allow-spawn", "2"),
        ("zmq", "protocol", "udp"),
        ("zmq-router", "protocol", "inproc"),
        ("zmq", "host", ""),
        ("zmq-router", "process", " "),
    ],
)
def test_badValues(tmp_path, section, key, value):
    path = writeConfig(tmp_path, "[%s]\n%s = %s\n" % (section, key, value))
    with pytest.raises(ConfigError) as info:
        load(path)
    message = str(info.value)
    assert path in message
    assert "[%s] %s" % (section, key) in message
    assert repr(value.strip()) in message or repr(value) in message


@pytest.mark.parametrize("key", ["dispatch-port", "broadcast-port"])
def test_zeroMeansEphemeral(key):
    assert Config.fromMapping({"zmq": {key: "0"}}).get("zmq", key) == 0


def test_routerPortZero():
    c = Config.fromMapping({"zmq-router": {"port": 0}})
    assert c.routerAddress() == "tcp://localhost:0"


@pytest.mark.parametrize("first, last", [(6700, 6600), (6600, 6600), (6600, 6601)])
def test_firstBelowLast(first, last):
    with pytest.raises(ConfigError, match="first-port"):
        Config.fromMapping({"zmq-router": {"first-port": first, "last-port": last}})


def test_lastPortIsExclusiveAndRoomForOnePairIsNeeded(tmp_path):
    # Leases are pairs (p, p + 1) from [first-port, last-port): 6600..6602
    # holds exactly one pair; 6600..6601 holds none.
    c = Config.fromMapping({"zmq-router": {"first-port": 6600, "last-port": 6602}})
    assert (c.get("zmq-router", "first-port"), c.get("zmq-router", "last-port")) == (6600, 6602)
    path = tmp_path / "narrow.ini"
    path.write_text("[zmq-router]\nfirst-port = 6600\nlast-port = 6601\n")
    with pytest.raises(ConfigError) as info:
        load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: [zmq-router] last-port = '6601': ")
    assert "first-port + 2 = 6602" in message and "exclusive" in message


@pytest.mark.parametrize(
    "text, expected",
    [
        ("yes", True), ("YES", True), ("true", True), ("On", True), ("1", True),
        ("no", False), ("False", False), ("off", False), ("0", False), ("nO", False),
        (True, True), (False, False),
    ],
)
def test_booleans(text, expected):
    c = Config.fromMapping({"zmq-router": {"enable": text, "allow-spawn": text}})
    assert c.get("zmq-router", "enable") is expected
    assert c.get("zmq-router", "allow-spawn") is expected


def test_boolIsNotAnInteger():
    with pytest.raises(ConfigError, match="timeout"):
        Config.fromMapping({"zmq-router": {"timeout": True}})


def test_unknownKeyWarns(tmp_path):
    path = writeConfig(tmp_path, "[zmq]\nhots = typo\n")
    with pytest.warns(ConfigWarning, match="hots"):
        c = load(path)
    assert c.get("zmq", "host") == "localhost"
    assert issubclass(ConfigWarning, UserWarning)


def test_unknownSectionIgnored(tmp_path):
    path = writeConfig(tmp_path, "[other-tool]\nanything = goes\n[DEFAULT]\nx = 1\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        c = load(path)
    assert c == load()


def test_getUnknown():
    c = load()
    with pytest.raises(ConfigError, match="nope"):
        c.get("nope", "host")
    with pytest.raises(ConfigError, match="nope"):
        c.get("zmq", "nope")


def test_fromMapping():
    c = Config.fromMapping({"zmq": {"dispatch-port": "7000"}}, source="<test>")
    assert c.get("zmq", "dispatch-port") == 7000
    assert c.path is None
    with pytest.raises(ConfigError, match="<test>: \\[zmq\\] dispatch-port"):
        Config.fromMapping({"zmq": {"dispatch-port": "x"}}, source="<test>")


def test_replace():
    c = load()
    d = c.replace("zmq", "dispatch-port", "7100")
    assert d.get("zmq", "dispatch-port") == 7100
    assert c.get("zmq", "dispatch-port") == 6511
    assert d != c
    with pytest.raises(ConfigError, match="verbose"):
        c.replace("zmq-router", "verbose", 9)
    with pytest.raises(ConfigError, match="nope"):
        c.replace("zmq", "nope", 1)


def test_replaceKeepsPath(tmp_path):
    path = writeConfig(tmp_path, "[zmq]\n")
    assert load(path).replace("zmq", "host", "h").path == path


def test_immutable():
    c = load()
    with pytest.raises(AttributeError):
        c.path = "x"
    with pytest.raises(TypeError):
        c._values["zmq"]["host"] = "x"  # read-only mappings inside
    c.asDict()["zmq"]["host"] = "x"
    assert c.get("zmq", "host") == "localhost"


def test_equalAndHashable():
    assert load() == load()
    assert hash(load()) == hash(load())


def test_samePortTwiceRejected(tmp_path):
    """dispatch-port and broadcast-port must differ (0, ephemeral, excepted)."""
    path = tmp_path / "same.ini"
    path.write_text("[zmq]\ndispatch-port = 7000\nbroadcast-port = 7000\n")
    with pytest.raises(ConfigError, match=r"\[zmq\] broadcast-port = '7000': must differ"):
        load(str(path))
    path.write_text("[zmq]\ndispatch-port = 0\nbroadcast-port = 0\n")
    assert load(str(path)).get("zmq", "broadcast-port") == 0


def test_misspelledSectionWarned(tmp_path):
    """A section that looks like ours but is not ([zmq_router]) is named in a warning."""
    path = tmp_path / "typo.ini"
    path.write_text("[zmq_router]\nport = 41999\n[other-tool]\nx = 1\n")
    with pytest.warns(ConfigWarning) as caught:
        cfg = load(str(path))
    messages = [str(w.message) for w in caught]
    assert any("[zmq_router]: unknown section" in m for m in messages), messages
    assert not any("other-tool" in m for m in messages)
    assert cfg.get("zmq-router", "port") == 6510


# -- [security] (issue 10) ---------------------------------------------------------


def test_securityOffByDefault():
    c = load()
    assert c.get("security", "curve") is False
    assert all(c.get("security", key) == "" for key in config.PATH_KEYS)


def test_securityPathsRelativeToTheFile(tmp_path):
    (tmp_path / "etc").mkdir()
    path = writeConfig(
        tmp_path / "etc",
        "[security]\ncurve = yes\nsecret-key = keys/me.key_secret\n"
        "router-key = ../public/router.key\nclient-keys = /abs/clients\n",
    )
    c = load(path)
    assert c.get("security", "curve") is True
    assert c.get("security", "secret-key") == str(tmp_path / "etc" / "keys" / "me.key_secret")
    assert c.get("security", "router-key") == str(tmp_path / "public" / "router.key")
    assert c.get("security", "client-keys") == "/abs/clients"
    assert c.get("security", "dispatcher-keys") == ""


def test_securityPathsWithoutFileRelativeToWorkingDirectory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    c = Config.fromMapping({"security": {"curve": "yes", "secret-key": "me.key_secret"}})
    assert c.get("security", "secret-key") == str(tmp_path / "me.key_secret")
    # Made absolute once: changing directory later changes nothing.
    monkeypatch.chdir("/")
    assert c.replace("zmq", "host", "h").get("security", "secret-key") == str(
        tmp_path / "me.key_secret")


def test_securityHomeExpanded(monkeypatch):
    monkeypatch.setenv("HOME", "/home/astro")
    c = Config.fromMapping({"security": {"secret-key": "~/keys/me.key_secret"}})
    assert c.get("security", "secret-key") == "/home/astro/keys/me.key_secret"


def test_curveNeedsSecretKey(tmp_path):
    path = writeConfig(tmp_path, "[security]\ncurve = yes\n")
    with pytest.raises(ConfigError) as info:
        load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: [security] secret-key: required with curve = yes")


def test_curveBadBoolean(tmp_path):
    path = writeConfig(tmp_path, "[security]\ncurve = maybe\n")
    with pytest.raises(ConfigError, match=r"\[security\] curve = 'maybe': not a boolean"):
        load(path)


def test_unknownSecurityKeyIsAnError(tmp_path):
    """A misspelt key in [security] could leave a protection off: it stops the load."""
    path = writeConfig(tmp_path, "[security]\ncruve = yes\n")
    with pytest.raises(ConfigError) as info:
        load(path)
    assert str(info.value).startswith(f"{path}: [security] cruve: unknown key")


@pytest.mark.parametrize("section", ["Security", "securty", "SECURITY", "secuirty"])
def test_misspeltSecuritySectionIsAnError(tmp_path, section):
    """A misspelt [security] would leave secure mode off without a word."""
    path = writeConfig(tmp_path, "[%s]\ncurve = yes\n" % section)
    with pytest.raises(ConfigError, match=r"\[%s\]: unknown section \(did you mean \[security\]" %
                       section):
        load(path)


def test_securityRoundTripsThroughAFile(tmp_path):
    """Values in force written back as INI (as a spawned router gets them) load the same."""
    c = Config.fromMapping({"security": {"curve": "no", "client-keys": str(tmp_path)}})
    path = tmp_path / "again.ini"
    with open(path, "w") as f:
        for section, values in c.asDict().items():
            f.write(f"[{section}]\n")
            for key, value in values.items():
                value = ("yes" if value else "no") if isinstance(value, bool) else value
                f.write(f"{key} = {value}\n")
    assert load(str(path)) == c
