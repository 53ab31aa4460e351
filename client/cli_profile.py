"""`tidelog profile create|use|list|show|delete`: named client settings, like rpk profiles.

A profile holds a bootstrap, TLS files and a user name (client/profiles.py: the file, its
path and the order in which flags, TIDELOG_* variables, the profile and the default apply).
`create` makes the new profile the current one (as `rpk profile create` does; --no-use keeps
the current one). No command writes a password: use TIDELOG_PASSWORD.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path

from tidelog.client.cli_common import fail
from tidelog.client.cli_tables import add_output_option, table, to_json, wants_json
from tidelog.client.errors import ConfigError
from tidelog.client.profiles import (
    ConfigFile,
    Profile,
    check_profile_name,
    config_path,
    load_config,
    save_config,
    with_profile,
    without_profile,
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "profile", help="named client settings (bootstrap, TLS, user): create, use, list, "
                        "show, delete",
        description="Profiles live in $TIDELOG_CONFIG, else $XDG_CONFIG_HOME/tidelog/config.toml, "
                    "else ~/.config/tidelog/config.toml (mode 0600). The current one applies to "
                    "every command; --profile NAME or TIDELOG_PROFILE picks another per call.")
    commands = parser.add_subparsers(dest="profile_command", metavar="ACTION")
    commands.required = True
    create = commands.add_parser("create", help="add a profile and make it current")
    create.add_argument("name", metavar="NAME")
    create.add_argument("--bootstrap", required=True, metavar="HOST:PORT[,...]")
    create.add_argument("--tls-ca", default="", metavar="FILE")
    create.add_argument("--tls-cert", default="", metavar="FILE")
    create.add_argument("--tls-key", default="", metavar="FILE")
    create.add_argument("--tls-server-name", default="", metavar="NAME")
    create.add_argument("--user", default="", metavar="NAME",
                        help="SCRAM user; its password comes from TIDELOG_PASSWORD or --password")
    create.add_argument("--force", action="store_true", help="replace a profile of that name")
    create.add_argument("--no-use", action="store_true", help="do not make it current")
    create.set_defaults(func=_create)
    use = commands.add_parser("use", help="make a profile the current one")
    use.add_argument("name", metavar="NAME")
    use.set_defaults(func=_use)
    listing = commands.add_parser("list", help="every profile; the current one marked")
    add_output_option(listing)
    listing.add_argument("--names", action="store_true", help=argparse.SUPPRESS)  # completion
    listing.set_defaults(func=_list)
    show = commands.add_parser("show", help="one profile's settings (default: the active one)")
    show.add_argument("name", metavar="NAME", nargs="?", default="")
    add_output_option(show)
    show.set_defaults(func=_show)
    delete = commands.add_parser("delete", help="remove a profile")
    delete.add_argument("name", metavar="NAME")
    delete.set_defaults(func=_delete)


def _create(args: argparse.Namespace) -> int:
    def path(value: str, flag: str) -> str:
        if not value:
            return ""
        resolved = Path(value).expanduser().resolve()
        if not resolved.is_file():
            raise ConfigError(f"{flag} {value}: no such file")
        return str(resolved)  # absolute: the profile must work from any folder

    try:
        name = check_profile_name(args.name)
        config = _load()
        if name in config.profiles and not args.force:
            return fail(args, f"profile {name!r} exists in {config.path} (--force replaces it)", 2)
        if not [part for part in args.bootstrap.split(",") if part.strip()]:
            raise ConfigError("--bootstrap: give at least one HOST:PORT")
        profile = Profile(name=name, bootstrap=args.bootstrap.strip(),
                          tls_ca=path(args.tls_ca, "--tls-ca"),
                          tls_cert=path(args.tls_cert, "--tls-cert"),
                          tls_key=path(args.tls_key, "--tls-key"),
                          tls_server_name=args.tls_server_name, user=args.user)
        if bool(profile.tls_cert) != bool(profile.tls_key):
            raise ConfigError("--tls-cert and --tls-key go together")
        save_config(with_profile(config, profile, make_current=not args.no_use))
    except ConfigError as exc:
        return fail(args, str(exc), 2)
    except OSError as exc:
        return fail(args, f"{config_path(os.environ)}: {exc}")
    current = "" if args.no_use else "; it is the current profile now"
    print(f"profile {name} saved in {config.path}{current}")
    return 0


def _use(args: argparse.Namespace) -> int:
    return _change(args, lambda config: with_profile(config, config.get(args.name),
                                                     make_current=True),
                   f"profile {args.name} is the current profile now")


def _delete(args: argparse.Namespace) -> int:
    return _change(args, lambda config: without_profile(config, args.name),
                   f"profile {args.name} deleted")


def _list(args: argparse.Namespace) -> int:
    try:
        config = _load()
    except ConfigError as exc:
        return fail(args, str(exc), 2)
    names = sorted(config.profiles)
    if args.names:
        print("\n".join(names))
    elif wants_json(args):  # an array of objects, as every `list --output json`
        print(to_json([_as_json(config.profiles[n], config) for n in names]))
    elif not names:
        print(f"no profiles in {config.path} (`tidelog profile create NAME --bootstrap ...`)")
    else:
        print(table(["current", "name", "bootstrap", "tls", "user"],
                    [["*" if n == config.current else "", n, config.profiles[n].bootstrap,
                      "yes" if config.profiles[n].tls_ca else "no",
                      config.profiles[n].user or None] for n in names]))
    return 0


def _show(args: argparse.Namespace) -> int:
    try:
        config = _load()
        name = args.name or os.environ.get("TIDELOG_PROFILE", "") or config.current
        if not name:
            return fail(args, f"no current profile in {config.path}; name one "
                              "(`tidelog profile list`)")
        profile = config.get(name)
    except ConfigError as exc:
        return fail(args, str(exc), 2)
    shown = _as_json(profile, config)
    if wants_json(args):
        print(to_json(shown))
    else:
        width = max(len(key) for key in shown)
        for key, value in shown.items():
            print(f"{key.ljust(width)}  {'' if value is None else value}")
    return 0


def _change(args: argparse.Namespace, change: Callable[[ConfigFile], ConfigFile],
            done: str) -> int:
    try:
        config = _load()
        save_config(change(config))
    except ConfigError as exc:
        return fail(args, str(exc), 2)
    except OSError as exc:
        return fail(args, f"{config_path(os.environ)}: {exc}")
    print(done)
    return 0


def _as_json(profile: Profile, config: ConfigFile) -> dict[str, object]:
    shown: dict[str, object] = {"name": profile.name, "current": profile.name == config.current}
    for key, value in profile.settings().items():
        shown[key] = "(set in the file)" if key == "password" else value
    return shown


def _load() -> ConfigFile:
    return load_config(config_path(os.environ))

