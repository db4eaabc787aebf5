"""A report in two steps: ``render`` reads the study folders and makes report.md's tables,
writing nothing; ``publish`` draws the figures and writes every file of the report to its
folder at once. ``write_report`` does both.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

from cwgnc_jax.report import figures, tables
from cwgnc_jax.report.load import Group, label_groups, load_settings


@dataclasses.dataclass(frozen=True)
class Report:
  """A report before anything is written: report.md's lines down to its figures, and every
  group of every setting, named apart across settings (the figures show them together)."""
  lines: list[str]
  groups: list[Group]


def render(run_dirs: Sequence[str | Path], command: str | None = None) -> Report:
  """The report of the groups below ``run_dirs`` (one setting each). Every summary.json and
  results.json is read and checked here; nothing is written."""
  settings = load_settings(run_dirs)
  lines = tables.markdown(settings, command)
  groups = [g for _, members in settings for g in members]
  if len(settings) > 1:  # the figures show every setting: names must not collide across them
    label_groups(groups)
  return Report(lines, groups)


def _staging_folder(out: Path) -> Path:
  """A new temporary folder inside ``out`` (made if need be), where the report is written
  before its files are moved into ``out``."""
  if out.exists() and not out.is_dir():
    raise NotADirectoryError(f"the report folder {out} is a file, not a folder: pass --out a "
                             "folder")
  try:
    out.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=out, prefix=".report-"))
  except OSError as error:
    raise OSError(f"cannot write the report to {out} ({error.strerror}): pass --out a folder "
                  "you can write") from None


def publish(report: Report, out: Path) -> Path:
  """Writes ``out/report.md``, ``seeds.csv`` and the figures of ``report``; returns the path
  of report.md.

  The files are made in a temporary folder inside ``out``, then moved there, report.md last:
  a failure (a gradient-norm log found unreadable while a figure is drawn, a full disk)
  leaves an earlier report in ``out`` as it was. A figure skipped now is removed from ``out``.
  """
  staging = _staging_folder(out)
  try:
    tables.write_seed_table(report.groups, staging / "seeds.csv")
    skipped = figures.draw(report.groups, staging)
    (staging / "report.md").write_text("\n".join(report.lines + figures.markdown(skipped)))
    # report.md last: once it is in place, so is everything it shows.
    for name in sorted(os.listdir(staging), key=lambda name: name == "report.md"):
      os.replace(staging / name, out / name)
    for name in skipped:
      (out / name).unlink(missing_ok=True)  # a stale figure of an earlier report
  except OSError as error:
    raise OSError(f"cannot write the report to {out} ({error.strerror or error}): pass --out "
                  "a folder you can write") from None
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  return out / "report.md"


def write_report(run_dirs: Sequence[str | Path], out: str | Path,
                 command: str | None = None) -> Path:
  """``publish(render(run_dirs, command), out)``: bad input is found before anything is
  written."""
  return publish(render(run_dirs, command), Path(out))
