"""The command line ``python -m cwgnc_jax.report RUN_DIR [RUN_DIR ...] [--out DIR]``
(the package's docstring says what it writes). Bad input exits with status 2 and one line on
stderr."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cwgnc_jax.report
from cwgnc_jax.report.publish import write_report


def main(argv: list[str]) -> None:
  parser = argparse.ArgumentParser(prog="python -m cwgnc_jax.report",
                                   description=cwgnc_jax.report.__doc__.splitlines()[0],
                                   allow_abbrev=False)
  parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                      help="a study folder (cwgnc_jax.study --out) or a group folder")
  parser.add_argument("--out", help="where report.md and the figures go (default: the first "
                      "RUN_DIR)")
  args = parser.parse_args(argv)
  command = "python -m cwgnc_jax.report " + " ".join(argv)
  try:
    # The run folders stay as given: report.md names them, and only plain files are read.
    path = write_report(args.run_dirs, Path(args.out or args.run_dirs[0]).absolute(), command)
  except (OSError, ValueError) as e:
    print(f"cwgnc_jax.report: error: {e}", file=sys.stderr)
    sys.exit(2)
  print(path)
