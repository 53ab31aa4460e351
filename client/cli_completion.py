"""`tidelog completion bash|zsh|fish`: a shell completion script generated from the parser.

The script is plain text made from argparse's own tree (every subcommand, its flags, the
choices of flags that have them), so it can never list a command that does not exist, and
completing costs no Python start: nothing runs but the shell, except for the values of
--profile, which come from `tidelog profile list --names`. argcomplete would complete every
word by running Python (about 0.3 s per Tab here) and needs a hook in the entry point; the tree
is static, so a generated script does as well without a dependency.

    eval "$(tidelog completion bash)"              # in ~/.bashrc
    eval "$(tidelog completion zsh)"               # in ~/.zshrc (through bashcompinit)
    tidelog completion fish > ~/.config/fish/completions/tidelog.fish

Regenerate after upgrading tidelog.
"""

from __future__ import annotations

import argparse
import shlex
from dataclasses import dataclass, field

SHELLS = ("bash", "zsh", "fish")


@dataclass(frozen=True, slots=True, kw_only=True)
class Node:
    """One parser of the tree: the words that lead to it, its subcommands, its flags."""

    path: tuple[str, ...]
    help: str = ""
    children: tuple[str, ...] = ()
    words: tuple[str, ...] = ()  # a plain word here: the subcommands, else positional choices
    flags: tuple[str, ...] = ()
    choices: dict[str, tuple[str, ...]] = field(default_factory=dict)  # flag -> its values
    takes_value: frozenset[str] = frozenset()


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "completion", help="print a shell completion script (bash, zsh, fish)",
        description="Print a completion script for the shell, generated from this tidelog's "
                    "commands. bash: eval \"$(tidelog completion bash)\" in ~/.bashrc; zsh: the "
                    "same with zsh in ~/.zshrc; fish: tidelog completion fish > "
                    "~/.config/fish/completions/tidelog.fish")
    parser.add_argument("shell", choices=SHELLS)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tidelog.client.cli import build_parser

    print(script(args.shell, build_parser()), end="")
    return 0


def script(shell: str, parser: argparse.ArgumentParser) -> str:
    nodes = tree(parser)
    if shell == "bash":
        return bash_script(nodes)
    if shell == "zsh":
        return "autoload -U +X bashcompinit && bashcompinit\n" + bash_script(nodes)
    assert shell == "fish", shell
    return fish_script(nodes)


def tree(parser: argparse.ArgumentParser) -> list[Node]:
    """Every parser reachable from `parser`, parents first."""
    nodes: list[Node] = []

    def walk(current: argparse.ArgumentParser, path: tuple[str, ...], help_text: str) -> None:
        children: list[tuple[str, argparse.ArgumentParser, str]] = []
        flags: list[str] = []
        choices: dict[str, tuple[str, ...]] = {}
        takes_value: set[str] = set()
        words: list[str] = []
        for action in current._actions:
            if isinstance(action, argparse._SubParsersAction):
                helps = {a.dest: a.help or "" for a in action._choices_actions}
                children += [(name, sub, helps.get(name, ""))
                             for name, sub in action.choices.items()]
            elif not action.option_strings and action.choices:
                words += [str(choice) for choice in action.choices]
            elif action.option_strings and action.help is not argparse.SUPPRESS:
                long_flags = [f for f in action.option_strings if f.startswith("--")]
                flags += long_flags or action.option_strings
                if action.nargs != 0:
                    takes_value.update(action.option_strings)
                    if action.choices:
                        for flag in action.option_strings:
                            choices[flag] = tuple(str(c) for c in action.choices)
        names = tuple(c[0] for c in children)
        nodes.append(Node(path=path, help=help_text, children=names, words=names or tuple(words),
                          flags=tuple(dict.fromkeys(flags)), choices=choices,
                          takes_value=frozenset(takes_value)))
        for name, sub, sub_help in children:
            walk(sub, (*path, name), sub_help)

    walk(parser, (), parser.description or "")
    return nodes


def bash_script(nodes: list[Node]) -> str:
    """A bash function: walk the words typed so far down the tree (skipping the values of flags
    that take one), then offer that node's flags, subcommands, or a flag's choices."""
    descend = [f'            "{_key(n.path[:-1])} {n.path[-1]}") path="{_key(n.path)}" ;;'
               for n in nodes if n.path]
    value_cases = [f'            "{_key(n.path)}") '
                   f'tv={shlex.quote(" " + " ".join(sorted(n.takes_value)) + " ")} ;;'
                   for n in nodes if n.takes_value]
    cases = []
    for n in nodes:
        cases.append(f'        "{_key(n.path)}") subs={shlex.quote(" ".join(n.words))}; '
                     f'opts={shlex.quote(" ".join(n.flags))} ;;')
    choice_cases = []
    for n in nodes:
        for flag, values in n.choices.items():
            choice_cases.append(f'        "{_key(n.path)} {flag}") '
                                f'values={shlex.quote(" ".join(values))} ;;')
    return "\n".join([
        "# tidelog completion for bash (generated by `tidelog completion bash`)",
        "_tidelog() {",
        '    local cur prev word path="" subs="" opts="" values="" tv i skip=0',
        '    cur="${COMP_WORDS[COMP_CWORD]}"',
        '    prev=""; [ "$COMP_CWORD" -gt 0 ] && prev="${COMP_WORDS[COMP_CWORD-1]}"',
        "    for ((i = 1; i < COMP_CWORD; i++)); do",
        '        word="${COMP_WORDS[i]}"',
        '        if [ "$skip" = 1 ]; then skip=0; continue; fi',
        '        tv=""',
        '        case "$path" in',
        *value_cases,
        "        esac",
        '        if [[ "$tv" == *" $word "* ]]; then skip=1; continue; fi',
        '        case "$path $word" in',
        *descend,
        "        esac",
        "    done",
        '    if [ "$prev" = "--profile" ]; then',
        '        COMPREPLY=($(compgen -W "$(tidelog profile list --names 2>/dev/null)" -- '
        '"$cur")); return',
        "    fi",
        '    case "$path $prev" in',
        *choice_cases,
        "    esac",
        '    if [ -n "$values" ]; then COMPREPLY=($(compgen -W "$values" -- "$cur")); return; fi',
        '    case "$path" in',
        *cases,
        "    esac",
        '    if [[ "$cur" == -* ]]; then COMPREPLY=($(compgen -W "$opts" -- "$cur"))',
        '    elif [ -n "$subs" ]; then COMPREPLY=($(compgen -W "$subs" -- "$cur"))',
        '    else COMPREPLY=($(compgen -f -- "$cur")); fi',
        "}",
        "complete -o default -F _tidelog tidelog",
        "",
    ])


def fish_script(nodes: list[Node]) -> str:
    """fish: a helper prints the path of subcommands typed so far; each completion is
    conditioned on it."""
    descend = [f"            case {shlex.quote(_key(n.path[:-1]) + ' ' + n.path[-1])}\n"
               f"                set path {shlex.quote(_key(n.path))}"
               for n in nodes if n.path]
    value_cases = [f"            case {shlex.quote(_key(n.path))}\n"
                   f"                set tv {' '.join(sorted(n.takes_value))}"
                   for n in nodes if n.takes_value]
    lines = [
        "# tidelog completion for fish (generated by `tidelog completion fish`)",
        "function __tidelog_path",
        "    set -l words (commandline -opc)",
        "    set -l path ''",
        "    set -l skip 0",
        "    for word in $words[2..-1]",
        "        if test $skip = 1",
        "            set skip 0",
        "            continue",
        "        end",
        "        set -l tv",
        '        switch "$path"',
        *value_cases,
        "        end",
        "        if contains -- $word $tv",
        "            set skip 1",
        "            continue",
        "        end",
        '        switch "$path $word"',
        *descend,
        "        end",
        "    end",
        "    echo $path",
        "end",
        "complete -c tidelog -l profile -x -a '(tidelog profile list --names 2>/dev/null)'",
    ]
    for n in nodes:
        at = f"-n 'test (__tidelog_path) = {shlex.quote(_key(n.path))}'" if n.path else \
             "-n 'test -z (__tidelog_path)'"
        for child in n.words:
            lines.append(f"complete -c tidelog {at} -f -a {shlex.quote(child)}")
        for flag in n.flags:
            if not flag.startswith("--"):
                continue
            values = n.choices.get(flag)
            extra = f" -x -a {shlex.quote(' '.join(values))}" if values else \
                    (" -r" if flag in n.takes_value else "")
            lines.append(f"complete -c tidelog {at} -l {flag[2:]}{extra}")
    return "\n".join(lines) + "\n"


def _key(path: tuple[str, ...]) -> str:
    """A node's key in the scripts: its words joined by '/' ("" for the top)."""
    return "/".join(path)
