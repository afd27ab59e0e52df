"""What people wrap around a tool's output when they paste it: prompts, fences, indentation, CRLF.

Parsers of pasted text read lines through `paste_lines`, so a dump copied from a terminal, an
issue or a doc page parses like the raw output. A prompt line is not dropped silently where it
carries meaning: `prompt_command` returns the command it ran (a tc dump names its device there).
"""

from __future__ import annotations

import re

from cnitrace.collectors.base import strip_provenance

_PROMPTS = (
    re.compile(r"^[$#%]\s+(.*)$"),                                          # '$ cmd', '# cmd'
    re.compile(r"^[~/][\w/.-]*\s?[$#%](?:\s+(.*))?$"),                      # '~$ cmd', '~/src# cmd', busybox '/ # cmd'
    re.compile(r"^(?:[❯➜λ]|[\w.-]*\s*[❯➜])(?:\s+(.*))?$"),                  # zsh/starship '❯ cmd', '➜  ~ cmd'
    re.compile(r"^[\w.-]+@(?:[\w.-]+|<[^>\s]*>)(?::[^\s$#]*)?\s*[$#:%]\s*(.*)$"),   # 'user@host:~$ cmd', 'me@pi: cmd', 'root@<>:/x# cmd'
    re.compile(r"^(?:\[[^\]\n]{1,80}\]\s?[$#%]|\[\])\s*(.*)$"),                # '[root@host ~]# cmd', '[] cmd'
    re.compile(r"^[\w.-]+[$#]\s+(.*)$"),                                    # 'bash-5.1# cmd'
)


def prompt_command(line: str) -> str | None:
    """The command of a shell prompt line ('$ tc filter show dev eth0' -> 'tc filter show dev eth0'),
    None when the line is not a prompt. '# text' counts: a root prompt looks like a comment."""
    s = line.strip()
    if s in ("$", "#", "%"):
        return ""
    for rx in _PROMPTS:
        m = rx.match(s)
        if m:
            return (m.group(1) or "").strip()
    return None


def is_fence(line: str) -> bool:
    return line.lstrip().startswith(("```", "~~~"))


def paste_lines(text: str, keep_prompts: bool = False) -> list[tuple[int, str]]:
    """(1-based line number, stripped line) of a pasted dump without the fixture's provenance line,
    markdown fences, blank lines and (unless `keep_prompts`) shell prompt lines."""
    out = []
    for no, raw in enumerate(strip_provenance(text).splitlines(), 1):
        s = raw.strip()
        while s.startswith(">"):          # a markdown quote of the output
            s = s[1:].strip()
        if not s or is_fence(s):
            continue
        if not keep_prompts and prompt_command(s) is not None:
            continue
        out.append((no, s))
    return out


def is_command(line: str, *tools: str) -> bool:
    """Whether a line is a command echoed without a prompt ('bpftool net show', 'sudo tc ...',
    'kubectl -n kube-system exec ds/cilium -- cilium status'): its first word, after sudo, is
    one of `tools` or kubectl."""
    words = line.split()
    if words and words[0] == "sudo":
        words = words[1:]
    return bool(words) and (words[0] in tools or words[0] == "kubectl")
