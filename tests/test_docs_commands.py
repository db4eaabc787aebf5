"""The documentation cannot drift from the code: every command in a ``bash`` block of README.md
and docs/*.md is accepted by the program it names, and every relative link and repository path
they give exists.

A command is checked as far as it can be without running it:

* ``python train.py ARGS`` and ``python -m cwgnc_jax.study ARGS`` (``--table1`` included): the
  arguments are parsed as the programs parse them, every config they name is loaded, its
  ``--config.KEY=VALUE`` overrides are applied (unknown keys, wrong types and unknown methods
  fail) and the result validated, as before any training;
* ``python -m cwgnc_jax.predict ARGS``: its own parser;
* any other ``python -m cwgnc_jax.MODULE ARGS``: the module exists, and every ``--flag`` the
  command passes appears in what ``--help`` prints;
* ``python benchmarks/X.py`` or ``tools/X.py ARGS`` (any interpreter): the script exists, every
  ``--flag`` is one it defines, and its ``--config.KEY=VALUE`` overrides apply to its config;
* ``bash FILE``: the file exists.

Optional arguments written ``[--flag VALUE]`` are checked as if given; ``...`` is left out.
"""

from __future__ import annotations

import contextlib
import io
import re
import runpy
import shlex
import sys
from pathlib import Path

import pytest

from cwgnc_jax import config as config_lib
from cwgnc_jax import command_line, predict, table1

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
ENV_ASSIGNMENT = re.compile(r"^[A-Z_][A-Z0-9_]*=")
# Paths in backticks that name a file or folder of this repository.
REPO_PATH = re.compile(r"`((?:benchmarks|tools|experiments|configs|tests|docs|cwgnc_jax|\.ci)"
                       r"/[A-Za-z0-9_./-]*)(::[A-Za-z0-9_]+)?`")
# Metavariables of optional arguments (``[--workers N]``), given a value to check.
PLACEHOLDERS = {"N": "2", "K": "2", "DIR": "runs/x"}
# docs/results.md records the commands that made each result, at the commits it names; they
# need not parse on today's code (its links are checked).
RECORDS = ("results.md",)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def bash_commands(page: Path) -> list[list[str]]:
  """Every command of ``page``'s bash blocks as an argument list: continued lines joined,
  comments dropped, ``&&`` chains split, environment assignments and ``taskset -c N`` in
  front left out, ``[...]`` brackets of optional arguments removed and ``...`` dropped."""
  commands = []
  for block in re.findall(r"```bash\n(.*?)```", page.read_text(), re.S):
    for line in block.replace("\\\n", " ").splitlines():
      for part in line.split("&&"):
        args = shlex.split(part, comments=True)
        while args and ENV_ASSIGNMENT.match(args[0]):
          args = args[1:]
        if args[:1] == ["taskset"]:
          args = args[3:]
        args = [PLACEHOLDERS.get(arg.strip("[]"), arg.strip("[]")) for arg in args
                if arg == "" or arg.strip("[]") not in ("", "...")]
        if args:
          commands.append(args)
  return commands


def all_commands() -> list[tuple[str, list[str]]]:
  return [(f"{page.relative_to(REPO)}: {shlex.join(args)}", args)
          for page in PAGES if page.name not in RECORDS for args in bash_commands(page)]


def help_text(program: str) -> str:
  """What ``python -m MODULE --help`` (or ``python SCRIPT --help``) prints, run in this
  process as ``python`` runs it."""
  out = io.StringIO()
  argv = sys.argv
  sys.argv = [program, "--help"]
  try:
    with contextlib.redirect_stdout(out):
      if program.endswith(".py"):
        runpy.run_path(str(REPO / program), run_name="__main__")
      else:
        runpy.run_module(program, run_name="__main__", alter_sys=False)
  except SystemExit as e:
    assert e.code in (0, None), f"{program} --help exited {e.code}"
  finally:
    sys.argv = argv
  text = out.getvalue()
  assert text.strip(), f"{program} --help printed nothing"
  return text


def flags(args: list[str]) -> list[str]:
  return [arg.split("=", 1)[0] for arg in args
          if arg.startswith("--") and not arg.startswith("--config.")]


def check_config(config_arg: str, overrides) -> None:
  """The config loads, takes the overrides and validates; the data is not checked (the
  hub stands in for a GLUE folder this machine may not have)."""
  config = config_lib.apply_overrides(config_lib.load(config_arg), list(overrides))
  if not any(key == "glue_dir" for key, _ in overrides):
    config.glue_dir = "hub"
  config_lib.validate(config)


def check_pytest(args: list[str]) -> None:
  """Test files exist, and a ``-m`` expression names registered markers."""
  markers = {line.split(":")[0].strip().strip('"') for line in re.findall(
      r'^  "([a-z_]+:)', (REPO / "pyproject.toml").read_text(), re.M)}
  i = 0
  while i < len(args):
    if args[i] in ("-m", "-n"):
      if args[i] == "-m":
        words = set(args[i + 1].split()) - {"not", "and", "or"}
        assert words <= markers, f"unregistered markers {words - markers}"
      i += 2
      continue
    if not args[i].startswith("-"):
      assert (REPO / args[i].split("::")[0]).exists(), f"no test file {args[i]}"
    i += 1


def check_python(args: list[str]) -> None:
  """Raises (ConfigError, AssertionError, SystemExit) unless ``python ARGS`` would be
  accepted."""
  if args[:1] == ["-m"]:
    module, rest = args[1], args[2:]
    if module == "pytest":
      check_pytest(rest)
      return
    assert module.startswith("cwgnc_jax."), f"not this project's module: {module}"
    if rest == ["--help"]:
      help_text(module)
    elif module == "cwgnc_jax.study":
      plan = table1.parse_args(rest)
      for entry in plan.entries:
        check_config(entry.config_arg, entry.overrides)
    elif module == "cwgnc_jax.predict":
      predict.parse_args(rest)
    else:
      text = help_text(module)
      for flag in flags(rest):
        assert flag in text, f"{module} --help does not know {flag}"
    return
  script, rest = Path(args[0]), args[1:]
  assert (REPO / script).is_file(), f"no file {script}"
  if script == Path("train.py"):
    if rest == ["--help"]:
      help_text("train.py")
    else:
      command_line.train_config(rest)
    return
  assert script.parts[0] in ("benchmarks", "tools", "experiments"), script
  source = (REPO / script).read_text()
  for flag in flags(rest):
    if flag != "--help":
      assert re.search(rf"[\"']{re.escape(flag)}[\"']", source), f"{script} defines no {flag}"
  overrides = [tuple(arg[len("--config."):].split("=", 1)) for arg in rest
               if arg.startswith("--config.")]
  if overrides:
    config_arg = rest[rest.index("--config") + 1] if "--config" in rest else "demo"
    check_config(config_arg, overrides)


def check_command(args: list[str]) -> None:
  program = args[0]
  if program == "python" or program.endswith("/python"):
    check_python(args[1:])
  elif program == "bash":
    assert (REPO / args[1]).is_file(), f"no file {args[1]}"
  elif program == "pip":
    for i, arg in enumerate(args):
      if arg == "-r":
        assert (REPO / args[i + 1]).is_file(), f"no file {args[i + 1]}"
  else:
    raise AssertionError(f"a command this test does not know how to check: {program}")


COMMANDS = all_commands()


def test_the_pages_have_commands():
  assert len(PAGES) >= 8
  pages = {name.split(":")[0] for name, _ in COMMANDS}
  for page in ("README.md", "docs/training.md", "docs/methods.md", "docs/studies.md",
               "docs/interop.md", "docs/performance.md", "docs/testing.md"):
    assert page in pages, f"{page} starts with no commands"


@pytest.mark.filterwarnings("ignore:'cwgnc_jax.*' found in sys.modules:RuntimeWarning")
@pytest.mark.parametrize("args", [args for _, args in COMMANDS],
                         ids=[name for name, _ in COMMANDS])
def test_the_command_is_accepted(args):
  check_command(args)


@pytest.mark.parametrize("args", [
    ["python", "train.py", "--config", "rte_cwgnc", "--config.optimizer.clip_nrom=0.1"],
    ["python", "train.py", "--config", "rte_cwgnx"],
    ["python", "train.py", "--config", "demo", "--config.method=cwgnc_new"],
    ["python", "train.py", "--config", "demo", "--config.seed=three"],
    ["python", "-m", "cwgnc_jax.study", "--config", "demo", "--seeds", "3-1"],
    ["python", "-m", "cwgnc_jax.study", "--table1", "--rows", "adamw,sgd"],
    ["python", "-m", "cwgnc_jax.predict", "runs/x", "--split", "train"],
    ["python", "-m", "cwgnc_jax.report", "runs/x", "--output", "y"],
    ["python", "-m", "cwgnc_jax.exporter", "runs/x", "y"],
    ["python", "benchmarks/bench_train.py", "--stpes", "3"],
    ["python", "benchmarks/bench_trains.py"],
    ["python", "benchmarks/bench_dropout.py", "--config.task=cola", "--config.dropout=0.2"],
    ["bash", "experiments/studies.sh"],
    ["python", "-m", "pytest", "-q", "-m", "slwo"],
    ["python", "-m", "pytest", "-q", "tests/test_gone.py"],
], ids=lambda args: shlex.join(args))
def test_a_wrong_command_is_caught(args):
  """The checks fail on what a page could get wrong: a key, a config, a method, a value, a
  seed list, a row, a split, a flag, a module, a script."""
  with pytest.raises((config_lib.ConfigError, AssertionError, SystemExit, ImportError)):
    check_command(args)


def slug(heading: str) -> str:
  """GitHub's anchor of a heading."""
  text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
  return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
  text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
  return {slug(h) for h in re.findall(r"^#+ (.*)$", text, re.M)}


def broken_links(page: Path) -> list[str]:
  broken = []
  text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
  for target in LINK.findall(text):
    if re.match(r"^[a-z]+:", target):
      continue
    path, _, anchor = target.partition("#")
    file = (page.parent / path).resolve() if path else page
    if not file.exists():
      broken.append(target)
    elif anchor and file.suffix == ".md" and anchor not in anchors(file):
      broken.append(target)
  for path, test in REPO_PATH.findall(text):
    file = REPO / path
    if not file.exists():
      broken.append(path)
    elif test and not re.search(rf"^def {test[2:]}\(", file.read_text(), re.M):
      broken.append(path + test)
  return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(REPO)))
def test_links_and_paths_resolve(page):
  """Every relative link (and its #anchor) and every repository path in backticks
  (``tests/X.py::test_name`` included) names what exists."""
  assert broken_links(page) == []


def test_a_broken_link_is_caught(tmp_path):
  page = tmp_path / "page.md"
  (tmp_path / "there.md").write_text("# A title\n")
  page.write_text("[ok](there.md), [ok](there.md#a-title), [no](gone.md), "
                  "[no](there.md#another), `benchmarks/bench_gone.py`, "
                  "`tests/test_bert.py::test_that_does_not_exist`, `tests/test_bert.py`\n")
  assert broken_links(page) == ["gone.md", "there.md#another", "benchmarks/bench_gone.py",
                                "tests/test_bert.py::test_that_does_not_exist"]


def test_the_readme_is_a_page():
  """README.md stays about a page long, its sections in the order a new user needs them."""
  text = (REPO / "README.md").read_text()
  assert len(text.splitlines()) <= 210
  sections = re.findall(r"^## (.*)$", re.sub(r"```.*?```", "", text, flags=re.S), re.M)
  assert sections == ["Install", "On a fresh machine", "CWGNC in your own Optax chain",
                      "The main commands", "Results at our scale", "Speed against PyTorch",
                      "Documentation"]


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(REPO)))
def test_no_page_is_a_work_log(page):
  """No page names an issue number or reads as a dated log of the work."""
  text = page.read_text()
  found = re.findall(r"\bissue \d+|\bissues? #\d+|\btonight\b|\bthis (?:evening|morning|"
                     r"afternoon)\b|\b\d{1,2}:\d{2}\b|\bsession\b", text, re.I)
  assert found == []
