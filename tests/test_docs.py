"""The README is the front page and the guides are docs/*.md (issue 21 item 6): every relative link and
`#anchor` in them resolves (anchors by GitHub's heading slugs), the README stays a front page (at most
300 lines, its two copy-paste commands with the CPU torch advice before them, the demo's printed block),
every guide is linked from it, and the commands in their code blocks use only flags their subcommand has."""
from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from guided_diffusion.cli import SUBCOMMANDS, main

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]
README_MAX_LINES = 300

DEMO_COMMAND = "pip install -c constraints.txt -e '.[demo]' && guided-diffusion demo"
TEST_COMMAND = "pip install -c constraints.txt -e '.[test,demo]' && python -m pytest -q"
CPU_TORCH = "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"


@dataclass(frozen=True)
class Block:
    """A fenced code block: its info string (language) and text."""

    language: str
    text: str


def split_fences(text: str) -> tuple[list[str], list[Block]]:
    """The page's lines outside fenced code blocks (fence lines blanked, so numbering stays) and its blocks."""
    prose: list[str] = []
    blocks: list[Block] = []
    fence: str | None = None
    language, body = "", list[str]()
    for line in text.splitlines():
        marker = re.match(r"^\s*(```+|~~~+)\s*([\w+-]*)", line)
        if fence is None and marker:
            fence, language, body = marker.group(1), marker.group(2), []
            prose.append("")
        elif fence is not None and line.strip().startswith(fence) and not line.strip()[len(fence):].strip():
            blocks.append(Block(language, "\n".join(body)))
            fence = None
            prose.append("")
        elif fence is not None:
            body.append(line)
            prose.append("")
        else:
            prose.append(line)
    assert fence is None, "a code fence is never closed"
    return prose, blocks


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text (link text, code without backticks, no emphasis
    marks) lower-cased, every character but letters, digits, '-', '_' and spaces dropped, spaces -> '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = text.replace("`", "").replace("*", "")
    kept = "".join(ch for ch in text.strip().lower() if ch.isalnum() or ch in "-_ ")
    return kept.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading anchor of a page, duplicates numbered as GitHub numbers them (-1, -2, ...)."""
    prose, _ = split_fences(page.read_text())
    seen: dict[str, int] = {}
    result = set()
    for line in prose:
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        slug = github_slug(match.group(1))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def links(page: Path) -> Iterator[tuple[int, str]]:
    """(line number, target) of every inline link, image and reference definition outside code."""
    prose, _ = split_fences(page.read_text())
    for number, line in enumerate(prose, start=1):
        line = re.sub(r"`[^`]*`", "", line)  # inline code is not a link
        for match in re.finditer(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)", line):
            yield number, match.group(1)
        definition = re.match(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(\s|$)", line)
        if definition:
            yield number, definition.group(1)


def is_external(target: str) -> bool:
    return bool(re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target))


def _page_id(page: Path) -> str:
    return str(page.relative_to(REPO))


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_every_relative_link_and_anchor_resolves(page):
    broken = []
    for number, target in links(page):
        if is_external(target):
            continue
        path_part, _, anchor = target.partition("#")
        destination = (page.parent / path_part).resolve() if path_part else page
        where = f"{_page_id(page)}:{number}: {target}"
        if not destination.exists():
            broken.append(f"{where}: no such file")
        elif REPO not in destination.parents and destination != REPO:
            broken.append(f"{where}: outside the repository")
        elif anchor:
            if destination.suffix != ".md":
                broken.append(f"{where}: an anchor into a file that is not markdown")
            elif anchor not in anchors(destination):
                broken.append(f"{where}: no heading with this anchor in {destination.name}")
    assert not broken, "\n".join(broken)


def test_links_are_found_and_slugs_follow_github():
    """The checker itself: it sees links (not those in code) and makes GitHub's slugs."""
    assert github_slug("Tuned grids: `tune_steps`") == "tuned-grids-tune_steps"
    assert github_slug("Compatibility: what is kept, what is fixed") == "compatibility-what-is-kept-what-is-fixed"
    assert github_slug("No float64, and Apple's MPS") == "no-float64-and-apples-mps"
    assert github_slug("Several GPUs, one node") == "several-gpus-one-node"
    found = [target for _, target in links(README)]
    assert "docs/sampling.md" in found and "docs/images/demo_guidance_plot.png" in found
    assert not any(target.startswith("https://download.pytorch.org") for target in found)  # inside code


def test_readme_is_a_front_page():
    text = README.read_text()
    assert len(text.splitlines()) <= README_MAX_LINES
    prose, blocks = split_fences(text)
    commands = [block.text.strip() for block in blocks]
    # The two copy-paste commands, each a block of its own, with the CPU torch advice before them.
    assert DEMO_COMMAND in commands and TEST_COMMAND in commands
    assert CPU_TORCH in commands
    assert commands.index(CPU_TORCH) < commands.index(DEMO_COMMAND) < commands.index(TEST_COMMAND)
    before = text[:text.index(DEMO_COMMAND)]
    assert "cannot be reached" in before, "the fallback when PyTorch's CPU index cannot be reached"
    # The demo's printed block.
    printed = [block.text for block in blocks if block.text.startswith("guided-diffusion demo: ")]
    assert len(printed) == 1 and "sample again from the trained checkpoints with:" in printed[0]
    assert "docs/images/demo_guidance_plot.png" in "\n".join(prose)


def test_every_guide_is_linked_from_the_readme():
    linked = {(README.parent / target.partition("#")[0]).resolve() for _, target in links(README)
              if not is_external(target)}
    missing = [_page_id(page) for page in PAGES[1:] if page.resolve() not in linked]
    assert not missing, f"guides the README does not link: {missing}"


# -- the commands in the code blocks ---------------------------------------------------------------------

_help_flags: dict[str, set[str]] = {}


def subcommand_flags(name: str, capsys: pytest.CaptureFixture[str]) -> set[str]:
    """The flags `guided-diffusion NAME --help` lists."""
    if name not in _help_flags:
        capsys.readouterr()
        code: int | str | None
        try:
            code = main([name, "--help"])
        except SystemExit as exit_:
            code = exit_.code
        assert code in (0, None), f"guided-diffusion {name} --help failed"
        _help_flags[name] = set(re.findall(r"--[A-Za-z0-9_]+", capsys.readouterr().out))
    return _help_flags[name]


def shell_commands(block: Block) -> Iterator[list[str]]:
    """The words of each command line of a shell block: continuation lines joined, comments and here-document
    bodies dropped, variables assigned earlier in the block (MODEL_FLAGS="...") expanded."""
    variables: dict[str, str] = {}
    heredoc_end: str | None = None
    for line in block.text.replace("\\\n", " ").splitlines():
        if heredoc_end is not None:
            heredoc_end = None if line.strip() == heredoc_end else heredoc_end
            continue
        heredoc = re.search(r"<<-?\s*['\"]?(\w+)['\"]?", line)
        if heredoc:
            heredoc_end = heredoc.group(1)
        words = shlex.split(line, comments=True)
        if not words:
            continue
        assignment = re.match(r"^([A-Za-z_]\w*)=(.*)$", words[0])
        if assignment and len(words) == 1:
            variables[assignment.group(1)] = assignment.group(2)
            continue
        expanded: list[str] = []
        for word in words:
            value = variables.get(word[1:]) if word.startswith("$") else None
            expanded.extend(shlex.split(value) if value is not None else [word])
        yield expanded


def subcommand_call(words: list[str]) -> tuple[str, list[str]] | None:
    """(subcommand, its arguments) of `guided-diffusion NAME ...` or `... -m guided_diffusion NAME ...`."""
    for i, word in enumerate(words[:-1]):
        if word == "guided-diffusion" or (word == "guided_diffusion" and i > 0 and words[i - 1] == "-m"):
            rest = words[i + 2:]
            ends = [j for j, w in enumerate(rest) if w in ("&&", "||", "|", ";")]
            return words[i + 1].replace("-", "_"), rest[:ends[0]] if ends else rest
    return None


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_documented_commands_use_flags_their_subcommand_has(page, capsys):
    _, blocks = split_fences(page.read_text())
    problems = []
    for block in blocks:
        if block.language not in ("bash", "sh", "shell"):
            continue
        for words in shell_commands(block):
            call = subcommand_call(words)
            if call is None or call[0].startswith("-"):  # `guided-diffusion --version`
                continue
            name, arguments = call
            if name not in SUBCOMMANDS:
                problems.append(f"{_page_id(page)}: unknown subcommand {name!r}")
                continue
            known = subcommand_flags(name, capsys)
            for word in arguments:
                flag = word.split("=", 1)[0]
                if flag.startswith("--") and flag not in known:
                    problems.append(f"{_page_id(page)}: `guided-diffusion {name}` has no flag {flag}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_python_examples_are_valid_python(page):
    _, blocks = split_fences(page.read_text())
    for number, block in enumerate(b for b in blocks if b.language == "python"):
        compile(block.text, f"{_page_id(page)} python block {number}", "exec")
