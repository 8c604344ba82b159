"""The documentation cannot drift from the code: every command in README.md and docs/*.md parses, every link resolves.

Commands are taken from fenced blocks (bash/sh/shell/console; plain and
``text`` blocks where a line starts with a command) and from inline code in
prose. Each ``autocompress ...`` (or ``python -m autocompress ...``) is parsed
by the real argument parser, so removing or renaming a documented subcommand,
option or choice fails here. Lines in synopsis notation (``[--json]``,
``status|logs``, ``...``) are checked option by option instead. Scripts
(``python bench/X.py``) and config files (``search_spaces/*.yaml``) named in a
command must exist. The generated config reference must equal what
``docs/make_config_reference.py`` writes now.

Placeholders such as ``NAME`` or ``<study>`` are plain strings to argparse,
so a command may use them wherever the option takes a string.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import functools
import glob
import importlib.util
import io
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from autocompress.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
README_MAX_LINES = 200
QUICKSTART = (
    "python3 -m venv .venv && .venv/bin/pip install torch==2.13.0 && .venv/bin/pip install -e '.[test]' && "
    "HF_HUB_OFFLINE=1 .venv/bin/autocompress search search_spaces/quickstart.yaml --output out"
)
TEST_COMMAND = "HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q"
"""CI (.ci/run) and users run these two exactly as README.md spells them."""

SHELL_LANGUAGES = {"bash", "sh", "shell", "console", "zsh"}
PLAIN_LANGUAGES = {"", "text"}
"""Blocks read line by line for commands; other languages (python, yaml, json) are not shell."""
REPO_DIRS = ("search_spaces", "bench", "docs", "tests", "mlflow_server", "autocompress", ".ci")
"""A command word under one of these names a file of this repository, which must exist."""
CHECKED_SUFFIXES = (".yaml", ".yml", ".py", ".md")
"""Repository files a command reads; outputs it writes (``bench/results/x.json``) need not exist yet."""
SYNOPSIS = re.compile(r"[\[\]()]|\.\.\.|…|\w\|-?\w")
"""Usage notation, not a runnable command: optional parts, alternatives, elisions."""
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


@dataclass(frozen=True)
class Command:
    """One command as the docs spell it: where it is, and its words after env assignments and ``.venv/bin/``."""

    file: Path
    line: int
    text: str
    words: tuple[str, ...]

    @property
    def where(self) -> str:
        return f"{self.file.relative_to(REPO)}:{self.line}: {self.text}"


# --- Markdown ------------------------------------------------------------------------------------


def split_fences(text: str) -> tuple[list[tuple[str, int, list[str]]], list[tuple[int, str]]]:
    """Fenced blocks as (language, line number of their first line, lines), and the prose lines outside them."""
    blocks, prose, current = [], [], None
    for number, line in enumerate(text.splitlines(), start=1):
        fence = re.match(r"^\s*(```+|~~~+)\s*([\w+-]*)", line)
        if current is None and fence:
            current = (fence.group(1), fence.group(2).lower(), number + 1, [])
        elif current is not None and line.strip().startswith(current[0]) and not line.strip().strip(current[0][0]):
            blocks.append(current[1:])
            current = None
        elif current is not None:
            current[3].append(line)
        else:
            prose.append((number, line))
    return blocks, prose


def inline_code(prose: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Code spans of the prose, with their line; a span may wrap onto the next line, as Markdown allows."""
    text = "\n".join(line for _, line in prose)
    numbers = [number for number, _ in prose]
    spans = []
    for match in re.finditer(r"(?<!`)`([^`]+)`(?!`)", text):
        spans.append((numbers[text.count("\n", 0, match.start())], " ".join(match.group(1).split())))
    return spans


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: markup and punctuation dropped, lower case, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@functools.cache
def anchors(path: Path) -> frozenset[str]:
    """Every heading anchor of a Markdown file (GitHub numbers repeated ones -1, -2, ...)."""
    counts: dict[str, int] = {}
    found = set()
    for _, line in split_fences(path.read_text())[1]:
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            slug = anchor(heading.group(1))
            found.add(f"{slug}-{counts[slug]}" if slug in counts else slug)
            counts[slug] = counts.get(slug, 0) + 1
    return frozenset(found)


# --- Shell ---------------------------------------------------------------------------------------


def shell_segments(line: str) -> list[str]:
    """Split a shell line on ``&&``, ``||``, ``;`` and pipes, outside quotes, dropping a ``#`` comment.

    A pipe needs a space on one side (``a | b``): ``status|logs`` is usage
    notation for alternatives, which no command in the docs means as a pipe.
    """
    segments, current, quote, i = [], [], None, 0
    while i < len(line):
        char = line[i]
        if quote:
            if char == "\\" and quote == '"' and i + 1 < len(line):
                current.append(line[i : i + 2])
                i += 2
                continue
            quote = None if char == quote else quote
        elif char == "\\" and i + 1 < len(line):
            current.append(line[i : i + 2])
            i += 2
            continue
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            break
        elif line.startswith(("&&", "||"), i):
            segments.append("".join(current))
            current, i = [], i + 2
            continue
        elif char == ";" or (char == "|" and (line[i - 1 : i].isspace() or line[i + 1 : i + 2].isspace())):
            segments.append("".join(current))
            current, i = [], i + 1
            continue
        current.append(char)
        i += 1
    segments.append("".join(current))
    return [segment.strip() for segment in segments if segment.strip()]


def command_words(segment: str) -> tuple[str, ...]:
    """The words of one simple command, env assignments and ``.venv/bin/`` stripped, ``python -m autocompress`` as ``autocompress``."""
    try:
        words = shlex.split(segment)
    except ValueError:  # an unbalanced quote in usage notation
        words = segment.split()
    while words and ENV_ASSIGNMENT.match(words[0]):
        words = words[1:]
    words = [word.removeprefix(".venv/bin/") if i == 0 else word for i, word in enumerate(words)]
    if len(words) >= 3 and re.fullmatch(r"python3?", words[0]) and words[1:3] == ["-m", "autocompress"]:
        words = ["autocompress", *words[3:]]
    return tuple(words)


def is_command(words: tuple[str, ...]) -> bool:
    """Whether a line of a plain block is a command to check, not output or a diagram."""
    return bool(words) and (words[0] == "autocompress" or bool(re.fullmatch(r"python3?", words[0])))


def joined_lines(lines: list[str], start: int, *, shell: bool) -> list[tuple[int, str]]:
    """Logical lines: ``\\`` continuations joined; in a plain block an indented line continues a command above it (usage)."""
    logical: list[tuple[int, str]] = []
    pending = None
    for offset, line in enumerate(lines):
        if pending is not None:
            pending = (pending[0], pending[1] + " " + line.strip())
        elif not shell and logical and line[:1].isspace() and line.strip() and is_command(command_words(logical[-1][1])):
            number, previous = logical.pop()
            pending = (number, previous + " " + line.strip())
        else:
            pending = (start + offset, line)
        if pending[1].rstrip().endswith("\\"):
            pending = (pending[0], pending[1].rstrip()[:-1])
            continue
        logical.append(pending)
        pending = None
    if pending is not None:
        logical.append(pending)
    return logical


def commands_in(path: Path) -> list[Command]:
    """Every command of a Markdown file: in shell blocks all of them, in plain blocks and inline code those that start with one."""
    blocks, prose = split_fences(path.read_text())
    found = []
    for language, start, lines in blocks:
        if language not in SHELL_LANGUAGES | PLAIN_LANGUAGES:
            continue
        shell = language in SHELL_LANGUAGES
        for number, line in joined_lines(lines, start, shell=shell):
            if language == "console":
                if not line.lstrip().startswith("$ "):
                    continue
                line = line.lstrip()[2:]
            first = line.strip()
            if not shell and not is_command(command_words(first.split("#")[0])):
                continue
            for segment in shell_segments(first) if shell else [first]:
                words = command_words(segment)
                if words:
                    found.append(Command(path, number, segment, words))
    for number, span in inline_code(prose):
        words = command_words(span)
        if len(words) >= 2 and words[0] == "autocompress":
            found.append(Command(path, number, span, words))
    return found


# --- Checks --------------------------------------------------------------------------------------


def strict_parser() -> argparse.ArgumentParser:
    """The CLI's parser, refusing abbreviations: else ``--follow`` would still parse after a rename to ``--follow-log``."""
    parser = build_parser()
    for each in (parser, *_subparsers(parser).values()):
        each.allow_abbrev = False
    return parser


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """argparse has no public way to list subcommands."""
    return next(action.choices for action in parser._actions if isinstance(action, argparse._SubParsersAction))


@functools.cache
def subcommands() -> dict[str, argparse.ArgumentParser]:
    """The CLI's subcommands by name."""
    return _subparsers(build_parser())


def parse(words: tuple[str, ...]) -> str | None:
    """None if the CLI's parser accepts the arguments (``--help`` included), else argparse's message."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            strict_parser().parse_args(list(words[1:]))
    except SystemExit as stop:
        return None if stop.code in (0, None) else err.getvalue().strip().splitlines()[-1]
    return None


def check_synopsis(words: tuple[str, ...]) -> str | None:
    """For usage notation: every named subcommand exists and takes every option named, and listed choices are allowed."""
    tokens = [token.strip("[]()") for token in words[1:]]
    tokens = [token for token in tokens if token and token not in ("|", "...", "…")]
    if not tokens:
        return None
    names = tokens[0].split("|")
    missing = [name for name in names if name not in subcommands()]
    if missing:
        return f"no subcommand {', '.join(missing)}; there are {', '.join(subcommands())}"
    for name in names:
        options = subcommands()[name]._option_string_actions
        for i, token in enumerate(tokens[1:], start=1):
            if not token.startswith("-") or token == "-":
                continue
            option = token.split("=")[0]
            if option not in options:
                return f"{name}: no option {option}"
            action = options[option]
            following = tokens[i + 1] if i + 1 < len(tokens) else ""
            if action.choices and "|" in following:
                wrong = [choice for choice in following.split("|") if choice not in action.choices]
                if wrong:
                    return f"{name} {option}: {', '.join(wrong)} not among {', '.join(map(str, action.choices))}"
    return None


def repo_paths(words: tuple[str, ...]) -> list[str]:
    """Words naming a file of this repository the command reads: a config, a script, the command itself."""
    return [
        word
        for i, word in enumerate(words)
        if word.startswith(tuple(f"{d}/" for d in REPO_DIRS)) and (i == 0 or word.endswith(CHECKED_SUFFIXES))
    ]


def runs_repo_script(words: tuple[str, ...]) -> bool:
    """``python bench/X.py ...`` or ``python docs/X.py``: a script of this repository."""
    return bool(re.fullmatch(r"python3?", words[0])) and len(words) > 1 and words[1].startswith(("bench/", "docs/"))


def problems(command: Command) -> list[str]:
    """What is wrong with one documented command (empty if nothing)."""
    words, found = command.words, []
    found += [f"{path} does not exist" for path in repo_paths(words) if not glob.glob(str(REPO / path))]
    if words[0] == "autocompress":
        if SYNOPSIS.search(" ".join(words)) or len(words) == 2 and not words[1].startswith("-"):
            error = check_synopsis(words)
        else:
            error = parse(words)
        if error:
            found.append(error)
    elif runs_repo_script(words) and not (REPO / words[1]).is_file():
        found.append(f"{words[1]} does not exist")
    return found


def all_commands() -> list[Command]:
    return [command for path in DOCS for command in commands_in(path)]


def checked(commands: list[Command]) -> list[Command]:
    """The commands this test verifies: the CLI's, scripts of the repository, and any naming a repository file."""
    return [
        command
        for command in commands
        if command.words[0] == "autocompress" or runs_repo_script(command.words) or repo_paths(command.words)
    ]


# --- Tests ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", DOCS, ids=lambda path: str(path.relative_to(REPO)))
def test_every_command_parses(path: Path) -> None:
    failures = [f"{command.where}\n    {problem}" for command in checked(commands_in(path)) for problem in problems(command)]
    assert not failures, "documented commands that no longer work:\n" + "\n".join(failures)


def test_the_synopsis_names_every_option() -> None:
    """docs/cli.md lists every subcommand and option, so a new one is documented where users look first."""
    synopsis = [command.words for command in commands_in(REPO / "docs" / "cli.md") if command.words[0] == "autocompress"]
    named = {
        (word.strip("[]()"), option.strip("[]()"))
        for words in synopsis
        if len(words) > 1
        for word in words[1].split("|")
        for option in words
    }
    failures = []
    for name, parser in subcommands().items():
        if not any(command == name for command, _ in named):
            failures.append(f"autocompress {name}")
        for action in parser._actions:
            if action.option_strings and action.help != argparse.SUPPRESS and "-h" not in action.option_strings:
                if not any((name, option) in named for option in action.option_strings):
                    failures.append(f"autocompress {name} {action.option_strings[-1]}")
    assert not failures, "missing from the synopsis in docs/cli.md:\n" + "\n".join(failures)


def inline_options(path: Path) -> list[tuple[int, str]]:
    """Options named alone in prose (`--n-trials N`, `--dry-run`): each must be an option of some subcommand."""
    return [
        (number, span.split()[0].split("=")[0])
        for number, span in inline_code(split_fences(path.read_text())[1])
        if re.match(r"^--\w", span)
    ]


@pytest.mark.parametrize("path", DOCS, ids=lambda path: str(path.relative_to(REPO)))
def test_every_option_named_in_prose_exists(path: Path) -> None:
    known = {option for parser in subcommands().values() for option in parser._option_string_actions}
    failures = [f"{path.relative_to(REPO)}:{number}: {option}" for number, option in inline_options(path) if option not in known]
    assert not failures, "options the command line does not have:\n" + "\n".join(failures)


@pytest.mark.parametrize("path", DOCS, ids=lambda path: str(path.relative_to(REPO)))
def test_every_relative_link_resolves(path: Path) -> None:
    _, prose = split_fences(path.read_text())
    failures = []
    for number, line in prose:
        for target in re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", re.sub(r"`[^`]*`", "", line)):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            file, _, fragment = target.partition("#")
            resolved = (path.parent / file).resolve() if file else path
            if not resolved.exists():
                failures.append(f"{path.relative_to(REPO)}:{number}: {target}: no such file")
            elif fragment and resolved.suffix == ".md" and fragment not in anchors(resolved):
                failures.append(f"{path.relative_to(REPO)}:{number}: {target}: no heading #{fragment} in {resolved.name}")
    assert not failures, "broken links:\n" + "\n".join(failures)


def test_readme_is_short() -> None:
    lines = len((REPO / "README.md").read_text().splitlines())
    assert lines <= README_MAX_LINES, (
        f"README.md has {lines} lines; keep it to {README_MAX_LINES} and move reference text to docs/"
    )


def test_readme_keeps_the_two_commands() -> None:
    """CI and users copy them letter for letter; the checks above must have seen them too."""
    blocks, _ = split_fences((REPO / "README.md").read_text())
    shell_lines = [line.strip() for language, _, lines in blocks if language in SHELL_LANGUAGES for line in lines]
    assert QUICKSTART in shell_lines, "README.md lost the install + quickstart command"
    assert TEST_COMMAND in shell_lines, "README.md lost the test command"
    texts = {command.text for command in checked(commands_in(REPO / "README.md"))}
    assert "HF_HUB_OFFLINE=1 .venv/bin/autocompress search search_spaces/quickstart.yaml --output out" in texts


def defined_names(module: str) -> set[str] | None:
    """Top-level names a module defines, read from its source without importing it (torch stays unloaded); None if it has ``__getattr__``."""
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin, f"no module {module}"
    tree = ast.parse(Path(spec.origin).read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {target.id for target in targets if isinstance(target, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
    return None if "__getattr__" in names else names


@pytest.mark.parametrize("path", DOCS, ids=lambda path: str(path.relative_to(REPO)))
def test_python_examples_use_existing_names(path: Path) -> None:
    """Python blocks compile, their ``autocompress.X`` verbs are public, and what they import from autocompress exists."""
    import autocompress

    failures = []
    for language, start, lines in split_fences(path.read_text())[0]:
        if language != "python":
            continue
        where = f"{path.relative_to(REPO)}:{start}"
        try:
            tree = ast.parse("\n".join(lines))
        except SyntaxError as error:
            failures.append(f"{where}: {error}")
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "autocompress":
                if node.attr not in autocompress.__all__:
                    failures.append(f"{where}: autocompress.{node.attr} is not public")
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("autocompress"):
                names = defined_names(node.module)
                missing = [alias.name for alias in node.names if names is not None and alias.name not in names]
                failures += [f"{where}: {node.module} has no {name}" for name in missing]
    assert not failures, "Python examples that no longer match the package:\n" + "\n".join(failures)


def test_config_reference_is_current() -> None:
    spec = importlib.util.spec_from_file_location("make_config_reference", REPO / "docs" / "make_config_reference.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    committed = (REPO / "docs" / "config_reference.md").read_text()
    assert committed == script.render(), f"docs/config_reference.md is stale; regenerate it: {script.COMMAND}"


def test_the_checks_catch_drift() -> None:
    """A renamed option, an unknown subcommand, a wrong choice and a missing config are all reported."""
    here = REPO / "README.md"

    def broken(text: str) -> bool:
        return bool(problems(Command(here, 1, text, command_words(text))))

    assert not broken("autocompress pareto --storage sqlite:///a.db --study-name NAME --json")
    assert not broken(".venv/bin/python -m autocompress config --schema")
    assert broken("python -m autocompress config --scheme")
    assert broken("autocompress pareto --storage sqlite:///a.db --study-name NAME --jsn")
    assert broken("autocompress paretto --storage sqlite:///a.db --study-name NAME")
    assert broken("autocompress pick --storage URL --study-name NAME --rule quickest")
    assert broken("autocompress search search_spaces/no_such_space.yaml")
    assert not broken("autocompress logs JOB [--follow]")
    assert broken("autocompress logs JOB [--folow]")
    assert broken("autocompress register RUN_ID --format onnx|hf|tflite")
    assert broken("python bench/no_such_script.py")
    assert broken("autocompress logs JOB --fol")  # an abbreviation parses for users, but hides a renamed option
