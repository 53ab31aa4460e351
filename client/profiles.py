"""Where the `tidelog` command finds its cluster: flags, environment, profiles, the default.

Each client setting is resolved once, in this order (the first that is set wins):

1. the flag (``--bootstrap``, ``--tls-ca``, ...), before or after the subcommand;
2. its ``TIDELOG_*`` environment variable (``TIDELOG_BOOTSTRAP``, ``TIDELOG_TLS_CA``, ...);
3. the active profile of the config file (``--profile NAME``, else ``TIDELOG_PROFILE``, else the
   file's ``current_profile``);
4. the default: for the bootstrap, every address `make run` (``tidelog cluster up --nodes 3``)
   listens on, so that one dead node does not make every command fail.

The config file (TOML) is ``$TIDELOG_CONFIG``, else ``$XDG_CONFIG_HOME/tidelog/config.toml``,
else ``~/.config/tidelog/config.toml``::

    current_profile = "prod"

    [profiles.prod]
    bootstrap = "10.0.0.1:9091,10.0.0.2:9091"
    tls_ca = "/etc/tidelog/ca.pem"
    user = "alice"

`tidelog profile create` never writes a password; a user may add ``password = "..."`` by hand
(the file is mode 0600), but TIDELOG_PASSWORD keeps it out of files altogether. The file is
rewritten whole (atomically, mode 0600) by `tidelog profile`: comments in it are not kept.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from tidelog.client.errors import ConfigError

# What `make run` (= `tidelog cluster up --nodes 3 --base-port 9091`) starts; a test checks that
# this stays equal to cluster up's defaults.
DEFAULT_BOOTSTRAP = "127.0.0.1:9091,127.0.0.1:9092,127.0.0.1:9093"
DEFAULT_CONNECT_TIMEOUT_S = 5.0

PROFILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Profile:
    """One named set of client settings; "" = not set here (the next source decides)."""

    name: str
    bootstrap: str = ""
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    tls_server_name: str = ""
    user: str = ""
    password: str = ""  # only when the user wrote it into the file; never written by tidelog

    def settings(self) -> dict[str, str]:
        """The fields that are set, without the name."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name != "name" and getattr(self, f.name)}


PROFILE_KEYS: tuple[str, ...] = tuple(f.name for f in fields(Profile) if f.name != "name")
_PATH_KEYS = ("tls_ca", "tls_cert", "tls_key")


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfigFile:
    """The parsed config file: its profiles and which one is current."""

    path: Path
    current: str = ""
    profiles: Mapping[str, Profile] = field(default_factory=dict)

    def get(self, name: str) -> Profile:
        try:
            return self.profiles[name]
        except KeyError:
            known = ", ".join(sorted(self.profiles)) or "none"
            raise ConfigError(f"no profile {name!r} in {self.path} (profiles: {known}; "
                              "`tidelog profile create NAME --bootstrap ...` adds one)") from None


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientSettings:
    """Every client setting after resolution, and where the bootstrap came from (for messages)."""

    bootstrap: str
    bootstrap_source: str  # "--bootstrap", "TIDELOG_BOOTSTRAP", "profile NAME" or "default"
    profile: str  # the active profile's name, "" for none
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    tls_server_name: str = ""
    user: str = ""
    password: str = ""
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S


# setting -> its environment variable
ENV_VARS: Mapping[str, str] = {
    "bootstrap": "TIDELOG_BOOTSTRAP", "tls_ca": "TIDELOG_TLS_CA", "tls_cert": "TIDELOG_TLS_CERT",
    "tls_key": "TIDELOG_TLS_KEY", "tls_server_name": "TIDELOG_TLS_SERVER_NAME",
    "user": "TIDELOG_USER", "password": "TIDELOG_PASSWORD",
    "connect_timeout_s": "TIDELOG_CONNECT_TIMEOUT", "profile": "TIDELOG_PROFILE",
}


def config_path(environ: Mapping[str, str]) -> Path:
    """$TIDELOG_CONFIG, else $XDG_CONFIG_HOME/tidelog/config.toml, else ~/.config/..."""
    explicit = environ.get("TIDELOG_CONFIG", "")
    if explicit:
        return Path(explicit).expanduser()
    base = environ.get("XDG_CONFIG_HOME", "") or str(Path(environ.get("HOME", "~")) / ".config")
    return Path(base).expanduser() / "tidelog" / "config.toml"


def load_config(path: Path) -> ConfigFile:
    """The file at `path`, or an empty ConfigFile when there is none. A malformed file, an
    unknown key (a typo would otherwise be ignored silently) or a non-string value raise
    ConfigError naming the file."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return ConfigFile(path=path)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {path}: {exc}") from exc
    unknown = set(raw) - {"current_profile", "profiles"}
    if unknown:
        raise ConfigError(f"config file {path}: unknown key(s) {', '.join(sorted(unknown))} "
                          "(known: current_profile, [profiles.NAME])")
    current = raw.get("current_profile", "")
    tables = raw.get("profiles", {})
    if not isinstance(current, str) or not isinstance(tables, dict):
        raise ConfigError(f"config file {path}: current_profile must be a string and "
                          "profiles a table of tables")
    profiles = {name: _profile(path, name, table) for name, table in tables.items()}
    return ConfigFile(path=path, current=current, profiles=profiles)


def save_config(config: ConfigFile) -> None:
    """Write the whole file atomically (temporary file, fsync, rename) with mode 0600: it may
    hold a user name and paths to keys, and a crash must not leave half a file."""
    path = config.path
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    text = render_config(config)
    fd, temporary = tempfile.mkstemp(prefix=".config.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def render_config(config: ConfigFile) -> str:
    """TOML text of `config` (tomllib reads, it does not write; the schema is flat strings)."""
    lines = ["# Tidelog client profiles (docs/client.md); rewritten by `tidelog profile`."]
    if config.current:
        lines.append(f"current_profile = {_toml_string(config.current)}")
    for name in sorted(config.profiles):
        lines += ["", f"[profiles.{_toml_key(name)}]"]
        lines += [f"{key} = {_toml_string(value)}"
                  for key, value in config.profiles[name].settings().items()]
    return "\n".join(lines) + "\n"


def check_profile_name(name: str) -> str:
    if not PROFILE_NAME.fullmatch(name):
        raise ConfigError(f"profile name {name!r}: use letters, digits, '_', '.', '-' "
                          "(at most 64, starting with a letter or digit)")
    return name


def resolve(flags: Mapping[str, str | None], environ: Mapping[str, str],
            config: ConfigFile | None = None) -> ClientSettings:
    """Resolve every setting as the module docstring says. `flags`: the values given on the
    command line (None or absent = not given), keyed like ClientSettings plus "profile".
    `config`: the config file (read from config_path(environ) when None)."""
    def given(key: str) -> str:
        flag = flags.get(key)
        if flag is not None and flag != "":
            return str(flag)
        return environ.get(ENV_VARS[key], "")

    profile_name = given("profile")
    if config is None:
        config = load_config(config_path(environ))
    profile = Profile(name="")
    if profile_name:
        profile = config.get(profile_name)
    elif config.current:
        profile = config.get(config.current)
    values: dict[str, str] = {}
    for key in PROFILE_KEYS:
        values[key] = given(key) or getattr(profile, key)
    if flags.get("bootstrap"):
        source = "--bootstrap"
    elif environ.get("TIDELOG_BOOTSTRAP"):
        source = "TIDELOG_BOOTSTRAP"
    elif profile.bootstrap:
        source = f"profile {profile.name}"
    else:
        source = "default"
    if not values["user"] and not flags.get("password"):
        # TIDELOG_PASSWORD exported for one profile's user must not break a profile without one.
        values["password"] = ""
    bootstrap = values.pop("bootstrap") or DEFAULT_BOOTSTRAP
    timeout_text = given("connect_timeout_s")
    try:
        timeout_s = float(timeout_text) if timeout_text else DEFAULT_CONNECT_TIMEOUT_S
    except ValueError:
        raise ConfigError(f"connect timeout {timeout_text!r}: not a number of seconds") from None
    if not 0 < timeout_s <= 600:
        raise ConfigError(f"connect timeout {timeout_s:g} s: give more than 0 and at most 600")
    return ClientSettings(bootstrap=bootstrap, bootstrap_source=source, profile=profile.name,
                          connect_timeout_s=timeout_s, **values)


def with_profile(config: ConfigFile, profile: Profile, *, make_current: bool) -> ConfigFile:
    profiles = {**config.profiles, profile.name: profile}
    return replace(config, profiles=profiles,
                   current=profile.name if make_current else config.current)


def without_profile(config: ConfigFile, name: str) -> ConfigFile:
    config.get(name)  # raises for an unknown name
    profiles = {k: v for k, v in config.profiles.items() if k != name}
    return replace(config, profiles=profiles, current="" if config.current == name
                   else config.current)


def _profile(path: Path, name: str, table: object) -> Profile:
    if not isinstance(table, dict):
        raise ConfigError(f"config file {path}: profiles.{name} must be a table")
    unknown = set(table) - set(PROFILE_KEYS)
    if unknown:
        raise ConfigError(f"config file {path}: profile {name!r}: unknown key(s) "
                          f"{', '.join(sorted(unknown))} (known: {', '.join(PROFILE_KEYS)})")
    for key, value in table.items():
        if not isinstance(value, str):
            raise ConfigError(f"config file {path}: profile {name!r}: {key} must be a string")
    values = dict(table)
    for key in _PATH_KEYS:  # relative paths are relative to the file, not to the current folder
        if values.get(key):
            values[key] = str((path.parent / Path(values[key]).expanduser()).resolve())
    return Profile(name=name, **values)


def _toml_string(value: str) -> str:
    # JSON's escapes (\" \\ \n \t \u00XX) are all valid in a TOML basic string; DEL is the one
    # control character JSON leaves raw and TOML refuses.
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")


def _toml_key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else _toml_string(name)
