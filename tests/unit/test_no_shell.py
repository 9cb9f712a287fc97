"""No file name or label ever reaches a shell (issue 16, 5e).

Rules run Python (``script:``), never ``shell:``; the package and the workflow scripts
never start a shell: no ``os.system`` / ``os.popen``, no ``shell=True``, no
``subprocess.getoutput``, and a command given to ``subprocess`` is an argument list, never
a string built from names. A BIDS label could otherwise carry ``;`` or ``$(...)`` into a
command line (``sub-x;touch INJECTED``; such folders are also refused by
:func:`atlas.bids.check_bids_names`).
"""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SMK = sorted([ROOT / "Snakefile", *(ROOT / "workflow" / "rules").glob("*.smk")])
PYTHON = sorted([*(ROOT / "atlas").rglob("*.py"), *(ROOT / "workflow" / "scripts").rglob("*.py")])

#: Calls that always go through a shell.
SHELL_CALLS = {
    "os.system",
    "os.popen",
    "subprocess.getoutput",
    "subprocess.getstatusoutput",
    "asyncio.create_subprocess_shell",
}
#: Calls whose first argument is the command.
COMMAND_CALLS = {
    f"subprocess.{f}" for f in ("run", "call", "check_call", "check_output", "Popen")
} | {"os.execv", "os.execvp", "os.spawnv", "os.spawnvp", "asyncio.create_subprocess_exec"}


def _dotted(node) -> str:
    """``a.b.c`` of an attribute chain or name, else ``""``."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else ""
    return ""


def _is_string(node) -> bool:
    """An expression that is evidently a string: a literal, an f-string, ``+``/``%`` of
    strings, or a ``.format``/``.join`` call."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str)
    if isinstance(node, ast.JoinedStr):
        return True
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Mod):
        return _is_string(node.left) or _is_string(node.right)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        return node.func.attr == "format" or (
            node.func.attr == "join" and _is_string(node.func.value)
        )
    return False


def shell_uses(source: str, filename: str = "<string>") -> list[str]:
    """Every place in Python ``source`` that starts a shell or passes a string command.

    Returns ``"<file>:<line>: <what>"`` strings; aliases of ``subprocess``/``os`` imported
    with ``from ... import`` are resolved (``from subprocess import run``).
    """
    tree = ast.parse(source, filename)
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in ("os", "subprocess", "asyncio"):
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.asname:
                    aliases[a.asname] = a.name
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        head, _, rest = name.partition(".")
        name = aliases.get(head, head) + (f".{rest}" if rest else "")
        where = f"{filename}:{node.lineno}"
        if name in SHELL_CALLS:
            found.append(f"{where}: {name} runs a shell")
        for kw in node.keywords:
            if kw.arg == "shell" and not (
                isinstance(kw.value, ast.Constant) and kw.value.value is False
            ):
                found.append(f"{where}: {name or 'call'}(shell=...)")
        if name in COMMAND_CALLS:
            command = node.args[0] if node.args else None
            command = next((k.value for k in node.keywords if k.arg == "args"), command)
            if command is not None and _is_string(command):
                found.append(f"{where}: {name} with a string command (pass a list)")
    return found


def test_the_checker_finds_shells():
    bad = """
import os, subprocess as sp
from subprocess import run
os.system("ls " + name)
sp.run(f"ants {name}", shell=True)
run("convert {}".format(name))
sp.check_output(args="ls")
"""
    good = """
import subprocess
subprocess.run(["git", "rev-parse", "HEAD"], check=True, shell=False)
cmd = ["snakemake", "--cores", "1"]
subprocess.run(cmd)
"""
    assert len(shell_uses(bad)) == 5
    assert shell_uses(good) == []


@pytest.mark.parametrize("path", PYTHON, ids=lambda p: str(p.relative_to(ROOT)))
def test_package_and_scripts_start_no_shell(path):
    assert shell_uses(path.read_text(), str(path.relative_to(ROOT))) == []


def smk_offenders(text: str, name: str = "<smk>") -> tuple[int, list[str]]:
    """Number of ``rule`` blocks in a Snakemake file and its shell uses: ``shell:``
    directives, ``shell(...)`` calls, and rules with outputs but no ``script:``
    (``use rule ... with`` inherits its parent's)."""
    offenders = [f"{name}: {m.group(0).strip()}" for m in re.finditer(r"^\s*shell\s*:", text, re.M)]
    offenders += [f"{name}: shell(" for _ in re.finditer(r"\bshell\s*\(", text)]
    blocks = re.split(r"^rule ", text, flags=re.M)[1:]
    for block in blocks:
        body = re.split(r"^(?:use rule|rule|def|[A-Z_]+\s*=)", block, flags=re.M)[0]
        if re.search(r"^\s+output\s*:", body, re.M) and not re.search(
            r"^\s+script\s*:", body, re.M
        ):
            offenders.append(f"{name}: rule {block.split(':')[0]} has no script:")
    return len(blocks), offenders


def test_the_rule_checker_finds_shells():
    text = """
rule a:
    output:
        "x",
    shell:
        "cat {input} > {output}"


rule b:
    output:
        "y",
    run:
        shell("touch {output}")


rule c:
    output:
        "z",
    script:
        RUN
"""
    n, offenders = smk_offenders(text)
    assert n == 3
    assert offenders == [
        "<smk>: shell:",
        "<smk>: shell(",
        "<smk>: rule a has no script:",
        "<smk>: rule b has no script:",
    ]


def test_rules_run_python_not_shell():
    """No ``shell:`` directive and no ``shell(...)`` call in the Snakefile or any rule
    file, and every rule runs its job with ``script:`` (``workflow/scripts/run.py``), which
    receives file names as Python values, never as the text of a command line."""
    assert len(SMK) > 3
    rules, offenders = 0, []
    for path in SMK:
        n, found = smk_offenders(path.read_text(), path.name)
        rules += n
        offenders += found
    assert rules > 10
    assert offenders == []
