"""The docs (README.md and docs/*.md) keep to the code.

Rules this file holds the pages to:

* **Examples run.** A line of a ``bash``/``sh``/``console`` code block that calls
  ``python -m sigma_core validate|inspect|attributes|make-tokenizer|make-tiny|generate`` is run,
  in-process, in a scratch folder holding copies of ``presets/`` and ``configs/``; a page's
  examples run in order in one folder, so one may use what an earlier one wrote. It must exit 0.
  An example that names ``--checkpoint`` or ``--sigma-weights`` needs real weights, and
  ``train``/``export`` need a trained run: those are not run, only flag-checked. A ``generate``
  that runs is on the preview engine and must stay quick: ``--steps`` at most 4 and ``--size``
  at most 128x128.
* **Flags exist.** Every ``--flag`` a page names belongs to a command: the nearest command named
  before it in the same paragraph, list item, table row or code block (``python -m sigma_core
  CMD``, ``-m sigma_core CMD`` after ``accelerate launch``, ``python app.py``, ``python -m
  benchmarks.NAME``, ``python -m scripts.NAME``, ``python -m tests.NAME``), else the commands a
  table row lists in a cell of ``sigma_core`` command names (it must exist in each), else the
  page's own commands (``PAGE_COMMANDS``; it must exist in one). It must be an option of that
  command's argparse parser. Flags after a foreign program (``pip``, ``hf``, ``accelerate
  launch``, ``apt-get``, ``pytest``) are that program's and are not checked.
  ``--set KEY=VALUE`` of ``train`` must name a training config key.
* The checks that once read the README: the example preset equals its file, every CLI option is
  documented, every limit is in the limits table; and every studio flag is documented, the
  attribute table is the vocabulary, the README's first screen holds the two commands and the
  contents, links between pages resolve, and the source-tree page names exactly the modules on
  disk.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import json
import re
import shlex
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import pytest

from sigma_core import cli

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
COMBINE = ROOT / "presets" / "combine_astronaut_cat_rocket.json"
RUN_SUBCOMMANDS = {"validate", "inspect", "attributes", "make-tokenizer", "make-tiny", "generate"}
NEEDS_WEIGHTS = {"--checkpoint", "--sigma-weights"}
MAX_EXAMPLE_STEPS, MAX_EXAMPLE_PIXELS = 4, 128 * 128
SHELL_LANGS = {"bash", "sh", "shell", "console"}
TEST_COMMAND = "pip install -r requirements.txt -r requirements-dev.txt && python -m pytest"
RUN_COMMAND = "pip install -r requirements.txt && python app.py"

Command = tuple[str, ...]  # ("sigma_core", "generate"), ("app",), ("benchmarks", "bench_gpu")


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    """``python -m sigma_core``'s commands and their parsers."""
    parser = cli.build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


SIGMA_CORE = tuple(("sigma_core", name) for name in sorted(_subcommands()))

PAGE_COMMANDS: dict[str, tuple[Command, ...]] = {
    "studio.md": (("app",),),
    "cli.md": SIGMA_CORE,
    "compositions.md": (("sigma_core", "validate"), ("sigma_core", "inspect"),
                        ("sigma_core", "generate")),
    "limits.md": (("sigma_core", "generate"), ("sigma_core", "make-tiny")),
    "engine.md": (("sigma_core", "generate"),),
    "precision.md": (("sigma_core", "generate"), ("app",)),
    "training.md": (("sigma_core", "train"), ("sigma_core", "export")),
    "sequence-layouts.md": (("sigma_core", "generate"), ("sigma_core", "inspect")),
    "evaluation.md": (("sigma_core", "evaluate"),),
}  # fmt: skip

COMMAND = re.compile(
    r"(?:python )?-m sigma_core ([a-z][a-z-]*)|python (app)\.py"
    r"|python -m (benchmarks|scripts|tests)\.([a-z_]+)"
)
FOREIGN = re.compile(r"\b(?:pip install|hf download|accelerate launch|apt-get install|pytest)\b")
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9_-]*[a-z0-9]")
SET_KEY = re.compile(r"--set[ =]([a-z_]+)=")


# ----------------------------------------------------------------------------- the pages


@dataclass(frozen=True)
class Block:
    """A paragraph, list item, table row or fenced code block of a page (``lang`` for code)."""

    page: Path
    text: str
    kind: str  # "prose", "row" or "code"
    lang: str = ""


def _blocks(page: Path) -> Iterator[Block]:
    lines = page.read_text(encoding="utf-8").split("\n")
    if lines[0] == "---":  # the Space's front matter
        lines = lines[lines.index("---", 1) + 1 :]
    prose: list[str] = []
    code: list[str] | None = None
    lang = ""
    for line in [*lines, ""]:
        if code is not None:
            if line.startswith("```"):
                yield Block(page, "\n".join(code), "code", lang)
                code = None
            else:
                code.append(line)
            continue
        starts_item = line.startswith(("```", "|", "#")) or re.match(r"\s*(?:- |\d+\. )", line)
        if (not line.strip() or starts_item) and prose:
            yield Block(page, " ".join(prose), "prose")
            prose = []
        if line.startswith("```"):
            code, lang = [], line[3:].strip()
        elif line.startswith("|"):
            yield Block(page, line, "row")
        elif line.strip():
            prose.append(line.strip())


def _all_blocks() -> list[Block]:
    return [block for page in PAGES for block in _blocks(page)]


def _logical_lines(code: str) -> list[str]:
    """A code block's lines, those ending in a backslash joined to the next."""
    return code.replace("\\\n", " ").split("\n")


# ----------------------------------------------------------------------------- the parsers


class _Captured(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser


def _capture_parse_args(self: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
    raise _Captured(self)


def _options(parser: argparse.ArgumentParser) -> frozenset[str]:
    """Its option strings, and those of its steps (``evaluate generate|score|report``)."""
    own = frozenset(o for action in parser._actions for o in action.option_strings)
    steps = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return own.union(*(_options(p) for a in steps for p in a.choices.values()))


@functools.cache
def options_of(command: Command) -> frozenset[str]:
    """The option strings the parser of ``command`` accepts."""
    if command[0] == "sigma_core":
        sub = _subcommands()
        assert command[1] in sub, f"python -m sigma_core {command[1]}: no such command"
        return _options(sub[command[1]])
    if command == ("app",):
        from studio.options import build_parser

        return _options(build_parser())
    module = importlib.import_module(".".join(command))
    if hasattr(module, "build_parser"):
        return _options(module.build_parser())
    if "parse_args(" not in Path(module.__file__).read_text(encoding="utf-8"):
        return frozenset()  # takes no flags at all
    # The parser is built inside main(): stop main at parse_args and keep the parser.
    with mock.patch.object(argparse.ArgumentParser, "parse_args", _capture_parse_args):
        try:
            module.main()
        except _Captured as captured:
            return _options(captured.parser)
    raise AssertionError(f"python -m {'.'.join(command)}: main() parsed no arguments")


def _train_keys() -> set[str]:
    from sigma_core.training.config import TrainConfig

    return {f.name for f in dataclasses.fields(TrainConfig)}


def _row_commands(row: str) -> tuple[Command, ...] | None:
    """The sigma_core commands a table row lists in one cell ("validate, inspect"), if any."""
    names = {name for _, name in SIGMA_CORE}
    for cell in re.split(r"(?<!\\)\|", row):
        words = [w.strip() for w in cell.split(",")]
        if words and all(w in names for w in words):
            return tuple(("sigma_core", w) for w in words)
    return None


def _flag_problems(block: Block) -> Iterator[str]:
    """Each flag of ``block`` that its command does not accept, as a message."""
    text = re.sub(r"\s+", " ", block.text) if block.kind != "code" else block.text
    lines = _logical_lines(text) if block.kind == "code" else [text]
    defaults = PAGE_COMMANDS.get(block.page.name, ())
    row = _row_commands(block.text) if block.kind == "row" else None
    context: tuple[Command, ...] | None = row or defaults
    every = row is not None  # a row's flag must be an option of each command it lists
    for line in lines:
        events = [(m.start(), "command", m) for m in COMMAND.finditer(line)]
        events += [(m.start(), "foreign", m) for m in FOREIGN.finditer(line)]
        events += [(m.start(), "flag", m) for m in FLAG.finditer(line)]
        for _, kind, m in sorted(events, key=lambda e: e[0]):
            if kind == "command":
                context, every = (_command(m),), True
            elif kind == "foreign":
                context = None
            elif context is not None:
                yield from _check_flag(block, line, m, context, every)


def _command(m: re.Match[str]) -> Command:
    sub, app, package, module = m.groups()
    if sub:
        return ("sigma_core", sub)
    return ("app",) if app else (package, module)


def _check_flag(
    block: Block, line: str, m: re.Match[str], context: tuple[Command, ...], every: bool
) -> Iterator[str]:
    flag, where = m.group(0), f"{block.page.relative_to(ROOT)}: {line.strip()[:90]!r}"
    if not context:
        yield f"{where}: {flag} names no command (name it in the same paragraph)"
        return
    accepted = [flag in options_of(c) for c in context]
    if not (all(accepted) if every else any(accepted)):
        names = " / ".join(" ".join(c) for c in context)
        yield f"{where}: {flag} is not an option of {names}"
    if flag == "--set" and ("sigma_core", "train") in context:
        key = SET_KEY.match(line, m.start())
        if key and key[1] not in _train_keys():
            yield f"{where}: --set {key[1]}=...: no such training config key"


def test_every_flag_the_docs_name_exists_in_its_commands_parser() -> None:
    problems = [p for block in _all_blocks() for p in _flag_problems(block)]
    assert not problems, "\n".join(problems)


def test_the_flag_check_sees_the_pages() -> None:
    # The rule above must look at real text: flags of each kind of command are found.
    seen: set[str] = set()
    for block in _all_blocks():
        for line in _logical_lines(block.text):
            seen.update(m.group(2) or m.group(3) or m.group(1) for m in COMMAND.finditer(line))
    assert {"generate", "train", "app", "benchmarks", "scripts"} <= seen
    wrong = Block(DOCS / "cli.md", "python -m sigma_core validate --steps 3", "code", "bash")
    assert list(_flag_problems(wrong)), "a flag of another command must be refused"
    bad_key = Block(DOCS / "training.md", "`--set stepz=3`", "prose")
    assert list(_flag_problems(bad_key)), "an unknown training key must be refused"


# ----------------------------------------------------------------------------- the examples


def _examples(page: Path) -> list[list[str]]:
    """The page's ``python -m sigma_core`` shell examples, as argument lists for cli.main."""
    out = []
    for block in _blocks(page):
        if block.kind != "code" or block.lang not in SHELL_LANGS:
            continue
        for line in _logical_lines(block.text):
            words = shlex.split(line, comments=True)
            if words[:3] == ["python", "-m", "sigma_core"]:
                out.append(words[3:])
    return out


def _runs(args: list[str]) -> bool:
    """Whether an example is run (the rule in the module docstring), not only flag-checked."""
    return args[0] in RUN_SUBCOMMANDS and not NEEDS_WEIGHTS & set(args)


def _quick(args: list[str]) -> bool:
    if args[0] != "generate":
        return True
    steps = args[args.index("--steps") + 1] if "--steps" in args else "50"
    size = args[args.index("--size") + 1] if "--size" in args else "1024x1024"
    w, h = (int(v) for v in size.lower().split("x"))
    return int(steps) <= MAX_EXAMPLE_STEPS and w * h <= MAX_EXAMPLE_PIXELS


PAGES_WITH_EXAMPLES = [p for p in PAGES if any(_runs(a) for a in _examples(p))]


def test_the_docs_show_every_command_that_runs_without_weights() -> None:
    shown = {args[0] for page in PAGES for args in _examples(page) if _runs(args)}
    assert shown == RUN_SUBCOMMANDS, f"no runnable example of {RUN_SUBCOMMANDS - shown}"


@pytest.mark.parametrize("page", PAGES_WITH_EXAMPLES, ids=lambda p: p.name)
def test_cli_examples_run(
    page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    for folder in ("presets", "configs"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    monkeypatch.chdir(tmp_path)
    for args in filter(_runs, _examples(page)):
        assert _quick(args), (
            f"{page.name}: `python -m sigma_core {' '.join(args)}` runs on the preview engine in "
            f"this test: give it --steps <= {MAX_EXAMPLE_STEPS} and a --size of at most "
            "128x128, or name --checkpoint"
        )
        code = cli.main(args)
        out = capsys.readouterr()
        assert code == 0, f"python -m sigma_core {' '.join(args)} exited {code}:\n{out.err}"


# ----------------------------------------------------------------------------- what pages hold


def _page(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def test_readme_first_screen_says_what_it_is_and_gives_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    body = readme[readme.index("\n---\n", 4) + 5 :]
    first_screen = body[: body.index("## Contents")]
    assert "# SIGMA Studio" in first_screen and "SIGMA" in first_screen
    assert f"```bash\n{RUN_COMMAND}\n```" in first_screen
    assert f"```bash\n{TEST_COMMAND}\n```" in first_screen
    assert len(first_screen.splitlines()) <= 30
    assert TEST_COMMAND in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    contents = body[body.index("## Contents") :]
    for page in sorted(DOCS.glob("*.md")):
        assert f"](docs/{page.name})" in contents, f"docs/{page.name} is not in the contents"


def test_links_between_pages_resolve() -> None:
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target):
                continue  # a web address
            path = target.split("#", 1)[0]
            if path and not (page.parent / path).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, broken


def test_example_preset_is_the_file_it_names() -> None:
    section = _page("compositions.md").split("## Presets", 1)[1]
    block = section[section.index("```json") + len("```json") : section.index("```\n", 10)]
    assert "presets/combine_astronaut_cat_rocket.json" in section[: section.index("```json")]
    assert json.loads(block) == json.loads(COMBINE.read_text(encoding="utf-8"))


def test_every_cli_option_is_documented() -> None:
    page = _page("cli.md")
    for _, name in SIGMA_CORE:
        assert f"python -m sigma_core {name}" in page
        for option in options_of(("sigma_core", name)):
            assert f"`{option}" in page or f"[{option}" in page, f"{name} {option}"


def test_every_studio_flag_is_documented() -> None:
    page = _page("studio.md")
    for option in options_of(("app",)) - {"-h", "--help"}:
        assert f"`{option}" in page, option


def test_attribute_table_is_the_vocabulary_in_order() -> None:
    from sigma_core.inputs.attributes import ATTRIBUTES, DESCRIPTIONS

    rows = re.findall(r"^\| `(<\w+>)` \| (.*) \|$", _page("compositions.md"), re.MULTILINE)
    assert [token for token, _ in rows] == list(ATTRIBUTES)
    assert all(DESCRIPTIONS[token] == text for token, text in rows)


def test_every_limit_is_in_the_limits_table() -> None:
    from sigma_core import limits

    table = _page("limits.md")
    for name in dir(limits):
        value = getattr(limits, name)
        if name.startswith(("MAX_", "MIN_")) and name != "MAX_SEED" and isinstance(value, int):
            shown = f"{value:,}"
            if name in ("MAX_COMPOSITION_BYTES", "MAX_IMAGE_BYTES"):
                shown = f"{value >> 20} MB"
            assert shown in table, name
        elif name.startswith(("MAX_", "MIN_")) and isinstance(value, float):
            assert f"{value:g}" in table, name
    assert "2^63" in table


def test_the_source_tree_page_names_every_module_and_only_those() -> None:
    page = _page("source-tree.md")
    listed: set[str] = set()
    for section in re.split(r"^## ", page, flags=re.MULTILINE)[1:]:
        folder = re.match(r"`([\w/]+/)`", section)
        if folder:
            rows = re.findall(r"^\| `([\w/.]+)` \|", section, flags=re.MULTILINE)
            listed |= {folder[1] + row for row in rows}
    on_disk = {
        p.relative_to(ROOT).as_posix()
        for top in ("sigma_core", "studio", "benchmarks", "scripts")
        for p in (ROOT / top).rglob("*.py")
        if p.name != "__init__.py" and "__pycache__" not in p.parts
    }
    listed_modules = {name for name in listed if name.endswith(".py")}
    assert listed_modules == on_disk, (
        f"not on the page: {sorted(on_disk - listed_modules)}; "
        f"not on disk: {sorted(listed_modules - on_disk)}"
    )
    assert all((ROOT / name).exists() for name in listed), sorted(
        n for n in listed if not (ROOT / n).exists()
    )
