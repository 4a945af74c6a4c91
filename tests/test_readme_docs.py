"""The README and docs/ stay true to the tree: every relative link (and #anchor) resolves, every
command in the README's shell blocks exists (make targets, `widen-dag` subcommands answering
--help, bench scripts, .venv binaries), and the README stays short enough to read in minutes."""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = sorted([README, REPO / "CHANGELOG.md", *(REPO / "docs").glob("*.md")])
README_MAX_LINES = 260
# Screenshots a test writes may be linked before that test has run; nothing else may be missing.
TEST_MADE_IMAGES = REPO / "docs" / "img"

FENCE = re.compile(r"^(```|~~~)(.*?)$(.*?)^\1\s*$", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
SHELL_LANGS = {"bash", "sh", "shell", "console"}


def _prose(text: str) -> str:
    """The Markdown outside code: links in code blocks and inline code are examples, not links."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    return re.sub(r"[^\w\- ]", "", text.replace("`", "").strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    """Every heading's anchor; a repeated heading gets -1, -2, ... as on GitHub."""
    anchors: set[str] = set()
    repeats: dict[str, int] = {}
    for line in FENCE.sub("", path.read_text()).splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            slug = _anchor(m.group(1))
            n = repeats.get(slug, 0)
            repeats[slug] = n + 1
            anchors.add(f"{slug}-{n}" if n else slug)
    return anchors


def _links(path: Path) -> list[str]:
    return [t for t in LINK.findall(_prose(path.read_text())) if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]


def _made_by_a_test(image: Path) -> bool:
    tests = (p for p in (REPO / "tests").rglob("*.py") if p.resolve() != Path(__file__).resolve())
    name = re.compile(r"(?<![\w.-])" + re.escape(image.name) + r"(?![\w.-])")  # not global_lineage.png for lineage.png
    return any(name.search(p.read_text(errors="replace")) for p in tests)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_points_to_an_existing_file_and_heading(doc):
    broken = []
    for target in _links(doc):
        file_part, _, anchor = target.partition("#")
        dest = (doc.parent / file_part).resolve() if file_part else doc
        if not dest.exists():
            if dest.parent == TEST_MADE_IMAGES.resolve() and _made_by_a_test(dest):
                continue
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.relative_to(REPO)}")
    assert not broken, f"{doc.relative_to(REPO)}: " + "; ".join(broken)


def _readme_commands() -> list[list[str]]:
    """Each simple command (split at &&, ||, ; and |) of the README's shell code blocks, without
    leading VAR=value assignments; comments dropped."""
    commands = []
    for m in FENCE.finditer(README.read_text()):
        if m.group(2).strip().lower() not in SHELL_LANGS:
            continue
        for line in m.group(3).splitlines():
            words, current = shlex.split(line, comments=True), []
            for word in [*words, "&&"]:
                if word in {"&&", "||", ";", "|"}:
                    while current and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", current[0]):
                        current.pop(0)
                    if current and current[0] != "export":
                        commands.append(current)
                    current = []
                else:
                    current.append(word)
    return commands


def _make_targets() -> set[str]:
    text = (REPO / "Makefile").read_text()
    targets = set(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", text, re.MULTILINE))
    for phony in re.findall(r"^\.PHONY\s*:(.*)$", text, re.MULTILINE):
        targets.update(phony.split())
    return targets


def _problems(argv: list[str]) -> list[str]:
    program, args = argv[0], argv[1:]
    found = []
    if "/" in program and not (REPO / program).exists():
        found.append(f"{program}: no such file")
    name = Path(program).name
    if name == "make":
        targets = _make_targets()
        found += [f"make {t}: no such Makefile target" for t in args if not t.startswith("-") and t not in targets]
    elif name == "widen-dag":
        sub = next((a for a in args if not a.startswith("-")), None)
        cli = REPO / ".venv" / "bin" / "widen-dag"
        if sub is None:
            found.append("widen-dag without a subcommand")
        elif not cli.exists():
            found.append(f"{cli.relative_to(REPO)}: not installed (make install)")
        else:
            done = subprocess.run([str(cli), sub, "--help"], capture_output=True, text=True, timeout=60, cwd=REPO)
            if done.returncode != 0:
                found.append(f"widen-dag {sub} --help exited {done.returncode}: {done.stderr.strip()[-300:]}")
    elif re.fullmatch(r"python(3(\.\d+)?)?", name) and args:
        if args[0] == "-m" and len(args) > 1 and importlib.util.find_spec(args[1]) is None:
            found.append(f"python -m {args[1]}: no such module")
        elif args[0].endswith(".py") and not (REPO / args[0]).is_file():
            found.append(f"{args[0]}: no such script")
    return found


README_COMMANDS = _readme_commands()


def test_the_readme_shows_both_set_up_commands():
    assert ["make", "demo"] in README_COMMANDS and ["make", "test"] in README_COMMANDS, README_COMMANDS


@pytest.mark.parametrize("argv", README_COMMANDS, ids=lambda a: " ".join(a)[:60])
def test_every_command_in_the_readme_exists(argv):
    assert not _problems(argv), _problems(argv)


def test_the_readme_is_short():
    lines = len(README.read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines (at most {README_MAX_LINES}): move detail to docs/"
