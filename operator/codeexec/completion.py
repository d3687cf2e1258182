"""Shell completion: scripts for bash, zsh and fish that ask `codeexec __complete` for words.

One completer, written against the argparse parser itself, serves every shell and kubectl's
plugin completion, so completion never lags behind the options. Names of CodeExecutions and
namespaces come from the cluster (best effort, 3 s at most); contexts from the kubeconfig.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import Sequence

# A tab press must not hang on an unreachable cluster.
LOOKUP_TIMEOUT_SECONDS = 3.0
HIDDEN = {"__complete"}

_BASH = """# codeexec completion for bash: source <(codeexec completion bash)
_codeexec_complete() {
  local cur="${COMP_WORDS[COMP_CWORD]}"
  local IFS=$'\\n'
  local words
  words="$("${COMP_WORDS[0]}" __complete "${COMP_WORDS[@]:1:COMP_CWORD}" 2>/dev/null)"
  COMPREPLY=($(compgen -W "$words" -- "$cur"))
}
complete -o default -F _codeexec_complete codeexec kubectl-codeexec
"""

_ZSH = """# codeexec completion for zsh: source <(codeexec completion zsh)
autoload -U +X bashcompinit && bashcompinit
""" + _BASH.split("\n", 1)[1]

_FISH = """# codeexec completion for fish: codeexec completion fish | source
function __codeexec_complete
    set -l words (commandline -opc) (commandline -ct)
    codeexec __complete $words[2..-1] 2>/dev/null
end
complete -c codeexec -f -a '(__codeexec_complete)'
complete -c kubectl-codeexec -f -a '(__codeexec_complete)'
"""


def script(shell: str) -> str:
    return {"bash": _BASH, "zsh": _ZSH, "fish": _FISH}[shell].rstrip("\n")


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return {k: v for k, v in action.choices.items() if k not in HIDDEN}
    return {}


def _option(parser: argparse.ArgumentParser, flag: str) -> argparse.Action | None:
    for action in parser._actions:
        if flag in action.option_strings:
            return action
    return None


def _value_of(words: Sequence[str], *flags: str) -> str | None:
    for i, word in enumerate(words[:-1]):
        if word in flags and i + 1 < len(words) - 1:
            return words[i + 1]
        for flag in flags:
            if flag.startswith("--") and word.startswith(flag + "="):
                return word.split("=", 1)[1]
    return None


def candidates(parser: argparse.ArgumentParser, words: list[str]) -> list[str]:
    """The completions of the last word of `words` (the arguments after the program name)."""
    words = words or [""]
    current = words[-1]
    subs = _subparsers(parser)
    if len(words) == 1:
        return [name for name in subs if name.startswith(current)]
    sub = subs.get(words[0])
    if sub is None:
        return []
    previous = words[-2]
    action = _option(sub, previous)
    if action is not None and action.nargs != 0:
        if action.choices:
            return [str(c) for c in action.choices if str(c).startswith(current)]
        if action.dest == "context":
            return [c for c in _contexts(words) if c.startswith(current)]
        if action.dest == "namespace":
            return [n for n in _names(words, namespaces=True) if n.startswith(current)]
        return []  # a path or free text: the shell's own file completion
    if current.startswith("-"):
        flags = [f for a in sub._actions for f in a.option_strings]
        return sorted(f for f in flags if f.startswith(current))
    if words[0] in ("get", "wait"):
        return [n for n in _names(words) if n.startswith(current)]
    return []


def _contexts(words: Sequence[str]) -> list[str]:
    from kubernetes_asyncio.config.kube_config import KubeConfigMerger

    from codeexec.kube.config import kubeconfig_paths

    with contextlib.suppress(Exception):
        merged = KubeConfigMerger(kubeconfig_paths(_value_of(words, "--kubeconfig"))).config
        if merged is not None:
            items = merged.value.get("contexts") or []
            return sorted(str(getattr(c, "value", c).get("name")) for c in items)
    return []


def _names(words: Sequence[str], *, namespaces: bool = False) -> list[str]:
    async def fetch() -> list[str]:
        from codeexec.client import Client
        from codeexec.kube.client import CODE_EXECUTIONS, NAMESPACES

        async with Client(
            namespace=_value_of(words, "-n", "--namespace"),
            kubeconfig=_value_of(words, "--kubeconfig"),
            context=_value_of(words, "--context"),
            component="cli",
        ) as cx:
            if namespaces:
                listing = await cx.kube.list(NAMESPACES)
            else:
                listing = await cx.kube.list(CODE_EXECUTIONS, cx.namespace)
        return sorted(item["metadata"]["name"] for item in listing.get("items", []))

    async def bounded() -> list[str]:
        return await asyncio.wait_for(fetch(), LOOKUP_TIMEOUT_SECONDS)

    with contextlib.suppress(Exception):
        return asyncio.run(bounded())
    return []
