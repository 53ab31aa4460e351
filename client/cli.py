"""The `tidelog` command: one entry point, subcommands registered by the package that owns them.

Each subcommand module exposes ``register(subparsers)``; it adds its parser and sets
``func`` (called with the parsed namespace, returns an exit code). Modules are imported lazily only
for the command that runs, so `tidelog --help` stays fast and the client does not import the node.

Global options (--bootstrap, --profile, --tls-*, --user, --password, --connect-timeout) are
added here, once, to the top-level parser AND to every client subcommand's parser after the
modules registered theirs, so `tidelog topic list --bootstrap X` works like `tidelog --bootstrap
X topic list`. Each level stores them under its own name (``_g<depth>_<dest>``, SUPPRESS
default, so nothing is set unless given); the deepest one given wins; then profiles.resolve()
applies the environment, the profile and the default (client/profiles.py says the order). An
option a subcommand defines itself (`quota set --user PRINCIPAL`, `top --bootstrap`) stays
that subcommand's: the global one is not added there. `--output` is global only before the
command, for commands that define their own --output.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tidelog.client import cli_common
from tidelog.client.errors import ConfigError
from tidelog.client.profiles import DEFAULT_BOOTSTRAP, ClientSettings, resolve
from tidelog.client.security import ClientSecurity

# Modules whose register() adds their subcommands. A module that fails to import is reported
# (when parsing fails) instead of breaking every other command.
_COMMAND_MODULES: tuple[str, ...] = (
    "tidelog.node.cli",
    "tidelog.client.cli_cluster_members",  # tidelog cluster add-node|decommission|members
    "tidelog.node.storage_cli",
    "tidelog.client.cli_demo",
    "tidelog.node.sim.cli",
    "tidelog.client.health_cli",
    "tidelog.client.cli_produce",
    "tidelog.client.cli_consume",
    "tidelog.client.cli_topic",
    "tidelog.client.cli_partition",  # tidelog partition reassign
    "tidelog.client.cli_group",
    "tidelog.client.cli_queue",
    "tidelog.chaos.cli",
    "tidelog.client.cli_certs",  # tidelog certs dev
    "tidelog.client.cli_security",  # tidelog user ..., tidelog acl ...
    "tidelog.client.cli_quota",  # tidelog quota ...
    "tidelog.node.keyring_cli",  # tidelog keyring ... (encryption at rest)
    "tidelog.client.cli_top",  # tidelog top (live view)
    "tidelog.client.cli_profile",  # tidelog profile create|use|list|show|delete
    "tidelog.client.cli_completion",  # tidelog completion bash|zsh|fish
    "tidelog.client.cli_bench",  # tidelog bench produce|consume|e2e
)

# Commands (and "command action"s) that are no cluster client: no global client options, no
# settings resolved (a broken config file must not stop `tidelog node`), no probe.
LOCAL_COMMANDS = frozenset({"node", "storage", "sim", "certs", "profile", "completion", "demo",
                            "chaos", "keyring", "cluster up"})
# Client commands that need no probe first: `health` and `top` report an absent node
# themselves (that is their job).
NO_PROBE_COMMANDS = frozenset({("health",), ("top",)})
# Global flags not repeated after these commands, where they would read as something else
# (`user create bob --password X` is not bob's new password: that is --password-stdin).
_NOT_AFTER: dict[tuple[str, ...], frozenset[str]] = {
    ("user", "create"): frozenset({"--password"}), ("user", "passwd"): frozenset({"--password"}),
}


@dataclass(frozen=True, slots=True)
class GlobalOption:
    flag: str
    dest: str  # the key of profiles.resolve()'s flags
    help: str
    metavar: str | None = None


GLOBAL_OPTIONS: tuple[GlobalOption, ...] = (
    GlobalOption("--bootstrap", "bootstrap",
                 "HOST:PORT[,HOST:PORT...] of any nodes. Order: this flag, TIDELOG_BOOTSTRAP, "
                 f"the profile's bootstrap, else {DEFAULT_BOOTSTRAP} (what `make run` starts)",
                 "HOST:PORT[,...]"),
    GlobalOption("--profile", "profile",
                 "use this profile of the config file (env TIDELOG_PROFILE; default the file's "
                 "current_profile; see `tidelog profile`)", "NAME"),
    GlobalOption("--connect-timeout", "connect_timeout_s",
                 "seconds to wait for any bootstrap node to answer before giving up (env "
                 "TIDELOG_CONNECT_TIMEOUT; default 5)", "S"),
    GlobalOption("--tls-ca", "tls_ca", "verify the nodes against this CA (PEM); turns TLS on",
                 "FILE"),
    GlobalOption("--tls-cert", "tls_cert", "client certificate for mTLS (PEM, with --tls-key)",
                 "FILE"),
    GlobalOption("--tls-key", "tls_key", "the client certificate's private key (PEM)", "FILE"),
    GlobalOption("--tls-server-name", "tls_server_name",
                 "the name the node certificates carry, when not the host dialled", "NAME"),
    GlobalOption("--user", "user", "log in as this SCRAM-SHA-256 user", "NAME"),
    GlobalOption("--password", "password",
                 "the user's password (prefer TIDELOG_PASSWORD: flags show in ps)", "PASSWORD"),
)
_DEPTH_MAX = 8  # levels of subcommands (`tidelog queue create` is 2); an assert in the walk
_GROUP_TITLE = ("global options (before or after the command; each also as its TIDELOG_* "
                "variable or in a profile: docs/client.md)")


class _OwnDefault(str):
    """A subcommand's own --output default, marked so that a global `tidelog --output json CMD`
    can tell "not given after the command" from "given": it equals the default everywhere else
    (help's %(default)s, comparisons), and main() replaces it by a plain str."""

    choices: Sequence[str] | None = None

    @classmethod
    def of(cls, value: str, choices: object) -> _OwnDefault:
        marker = cls(value)
        marker.choices = [str(c) for c in choices] if choices else None
        return marker


def _keep_marker(convert: Callable[[str], object]) -> Callable[[str], object]:
    """argparse runs an unset option's str default through its type: keep the mark on it."""
    @functools.wraps(convert)
    def converted(value: str) -> object:
        result = convert(value)
        if isinstance(value, _OwnDefault) and isinstance(result, str):
            return _OwnDefault.of(result, value.choices)
        return result

    return converted


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tidelog",
        description="Tidelog: a distributed, replicated message log. Error lines start "
                    "'tidelog COMMAND:'; exit code 0 is success.",
    )
    parser.add_argument("--version", action="version", version=f"tidelog {_version()}")
    _add_global_options(parser, depth=0, owned=set())
    parser.add_argument("--output", dest="_g0_output", default=argparse.SUPPRESS,
                        metavar="FORMAT",
                        help="output format for commands that have --output (text/table, json)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for module_name in _COMMAND_MODULES:
        try:
            importlib.import_module(module_name).register(subparsers)
        except Exception as exc:  # one broken command must not take the others (health!) down
            _broken.append(f"{module_name}: {type(exc).__name__}: {exc}")
    for path, sub, depth in _subcommands(parser):
        _prepare_subcommand(path, sub, depth)
    return parser


_broken: list[str] = []


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args, extras = parser.parse_known_args(argv)
        _take_trailing_values(parser, args, extras)
    except SystemExit:
        for problem in _broken:
            cli_common.error(None, f"a command could not be loaded: {problem}")
        raise
    if not _is_local(tuple(getattr(args, "command_path", args.command).split())):
        try:
            _apply_global_options(args)
        except ConfigError as exc:
            cli_common.error(args, str(exc))
            return 2
    try:
        if getattr(args, "needs_cluster", True) and "settings" in args and \
                not cli_common.reach_cluster(args, args.settings.connect_timeout_s):
            return 1
        return int(args.func(args) or 0)
    except KeyboardInterrupt:  # Ctrl-C while waiting for the cluster too: no traceback
        return 130


def global_flags(args: argparse.Namespace) -> dict[str, str]:
    """The global options given on the command line, at any level: the deepest wins (a
    subcommand's own option of the same name, e.g. `top --bootstrap`, deepest of all)."""
    given: dict[str, str] = {}
    for depth in range(_DEPTH_MAX):
        for option in GLOBAL_OPTIONS:
            value = getattr(args, f"_g{depth}_{option.dest}", None)
            if value is not None:
                given[option.dest] = value
    for option in GLOBAL_OPTIONS:
        own = vars(args).get(option.dest)
        if isinstance(own, str) and own and option.dest in getattr(args, "_own_globals", ()):
            given[option.dest] = own
    return given


def client_security(settings: ClientSettings) -> ClientSecurity | None:
    """The resolved TLS and login settings as one ClientSecurity, or None for a plaintext,
    anonymous client."""
    def path(value: str) -> Path | None:
        return Path(value).expanduser() if value else None

    security = ClientSecurity(
        tls_ca=path(settings.tls_ca), tls_cert=path(settings.tls_cert),
        tls_key=path(settings.tls_key), tls_server_name=settings.tls_server_name,
        username=settings.user, password=settings.password)
    return None if security == ClientSecurity() else security


def _apply_global_options(args: argparse.Namespace) -> None:
    settings = resolve(global_flags(args), os.environ)
    args.settings = settings
    args.bootstrap = settings.bootstrap
    args.bootstrap_source = settings.bootstrap_source
    args.security = client_security(settings)
    _apply_output(args)


def _apply_output(args: argparse.Namespace) -> None:
    wanted = getattr(args, "_g0_output", None)
    own = getattr(args, "output", None)
    if wanted is None:
        if isinstance(own, _OwnDefault):
            args.output = str(own)
        return
    if own is None:
        raise ConfigError(f"--output: `tidelog {args.command_path}` has no --output")
    if not isinstance(own, _OwnDefault):
        return  # given after the command too: that one wins
    choices = list(own.choices or [])
    aliases = {"text": "table", "table": "text"}  # the two names of the human format
    if choices and wanted not in choices and aliases.get(wanted) in choices:
        wanted = aliases[wanted]
    if choices and wanted not in choices:
        raise ConfigError(f"--output {wanted}: `tidelog {args.command_path}` knows "
                          f"{', '.join(choices)}")
    args.output = wanted


def _subcommands(parser: argparse.ArgumentParser, path: tuple[str, ...] = (), depth: int = 1
                 ) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser, int]]:
    """Every subcommand parser below `parser` (parents first), once each (aliases skipped)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            seen: set[int] = set()
            for name, sub in action.choices.items():
                if id(sub) in seen:
                    continue
                seen.add(id(sub))
                yield (*path, name), sub, depth
                yield from _subcommands(sub, (*path, name), depth + 1)


def _prepare_subcommand(path: tuple[str, ...], sub: argparse.ArgumentParser, depth: int) -> None:
    assert depth < _DEPTH_MAX, path
    sub.set_defaults(command_path=" ".join(path))
    if path in NO_PROBE_COMMANDS and sub.get_default("needs_cluster") is None:
        sub.set_defaults(needs_cluster=False)
    if _is_local(path):
        return
    # A subcommand's own option of a global's name and dest with a SUPPRESS default (`top
    # --bootstrap`) is that global given after the command; any other stays the command's own.
    own = {option.dest for option in GLOBAL_OPTIONS
           if any(action.dest == option.dest and option.flag in action.option_strings
                  and action.default is argparse.SUPPRESS for action in sub._actions)}
    if own:
        sub.set_defaults(_own_globals=tuple(sorted(own)))
    skip = set(sub._option_string_actions) | _NOT_AFTER.get(path, frozenset())
    _add_global_options(sub, depth=depth, owned=skip)
    for action in sub._actions:
        if action.dest == "output" and isinstance(action.default, str) \
                and not isinstance(action.default, _OwnDefault):
            action.default = _OwnDefault.of(action.default, action.choices)
            if action.type is not None:
                action.type = _keep_marker(action.type)


def _is_local(path: tuple[str, ...]) -> bool:
    return any(" ".join(path[:n]) in LOCAL_COMMANDS for n in range(1, len(path) + 1))


def _add_global_options(parser: argparse.ArgumentParser, *, depth: int, owned: set[str]) -> None:
    group = parser.add_argument_group(_GROUP_TITLE)
    for option in GLOBAL_OPTIONS:
        if option.flag in owned:
            continue
        group.add_argument(option.flag, dest=f"_g{depth}_{option.dest}",
                           default=argparse.SUPPRESS, metavar=option.metavar, help=option.help)


def _take_trailing_values(parser: argparse.ArgumentParser, args: argparse.Namespace,
                          extras: list[str]) -> None:
    """argparse stops filling a `VALUE ...` positional at the first option, so `queue send jobs
    --key k hello` left "hello" unrecognized. A command that sets `trailing_values` (the name of
    its list) takes the plain words after its options too; anything else is still an error."""
    if not extras:
        return
    field = getattr(args, "trailing_values", None)
    if field is None or any(e.startswith("-") for e in extras):
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    getattr(args, field).extend(extras)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tidelog")
    except PackageNotFoundError:
        return "unknown (not installed as a distribution)"


if __name__ == "__main__":
    sys.exit(main())
