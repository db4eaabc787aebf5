"""docs/results.md's Table 1 section says what its committed runs say
(``experiments/table1_section.py``)."""

from __future__ import annotations

import copy
import importlib.util
import json
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
_SPEC = importlib.util.spec_from_file_location("table1_section",
                                               REPO / "experiments" / "table1_section.py")
table1_section = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(table1_section)


def test_the_page_is_what_the_committed_runs_write(capsys):
  """Collecting runs without rewriting the section (or editing its numbers by hand) fails."""
  assert table1_section.main(["--check"]) == 0, capsys.readouterr().err


def test_each_group_lands_in_its_own_setting():
  """A group's setting comes from its recorded config: the harsh pair (RTE at 2e-4, 3 epochs)
  is not the RTE AdamW row at 2e-5, and a best-of row counts its evaluations."""
  summary = json.loads(next(table1_section.RUNS.glob("rte_adamw__*/summary.json")).read_text())
  Setting = table1_section.Setting
  assert table1_section.setting_of(summary) == Setting("rte", "adamw", 2e-5, 3, 1)
  harsh = copy.deepcopy(summary)
  harsh["config"]["optimizer"]["learning_rate"] = 2e-4
  assert table1_section.setting_of(harsh) == Setting("rte", "adamw", 2e-4, 3, 1)
  mosbach = copy.deepcopy(summary)
  mosbach["method"] = "mosbach"
  mosbach["config"].update(num_epochs=20, evals_per_epoch=3, keep_best=True)
  assert table1_section.setting_of(mosbach) in table1_section.SETTINGS
  assert table1_section.setting_of(mosbach).protocol == "Mosbach et al., 20 epochs, best of 60"
  assert table1_section.Setting("rte", "cwgnc", 2e-4, 3, 1).place == "RTE, lr 2e-4"


def test_a_verdict_names_what_survives_holm():
  """Against a committed AdamW group, a made-up CWGNC group whose every run scores far above
  it on the same seeds is named significant (Welch); one that scores about the same is not."""
  groups = table1_section.read_groups(table1_section.RUNS)
  adamw = next(s for s in groups if s.row == "adamw" and s.learning_rate == 2e-5)
  cwgnc = table1_section.Setting("rte", "cwgnc", 2e-5, 5, 1)

  def shifted(points: float) -> dict:
    group = copy.deepcopy(groups[adamw])
    for run in group["runs"]:
      run["score"] += points + 0.5 * (run["seed"] % 2)  # unequal, so the spreads differ
    return group

  text = table1_section.section({adamw: groups[adamw], cwgnc: shifted(20)})
  assert "**Significant after Holm's correction: RTE, lr 2e-5, CWGNC vs AdamW, Welch" in text
  text = table1_section.section({adamw: groups[adamw], cwgnc: shifted(0)})
  assert ("**No comparison is significant** after Holm's correction (the smallest uncorrected "
          "p, 0.") in text
  assert "RTE, lr 2e-5, CWGNC vs AdamW, " in text.split("(the smallest uncorrected p")[1]
  assert table1_section._seed_ranges([1, 2, 3, 5, 7, 8]) == "1-3, 5, 7-8"  # pylint: disable=protected-access


def test_collect_copies_finished_seeds_and_the_groups_that_have_one(tmp_path):
  """experiments/collect.sh: a finished seed's results, config and gradient norms and its
  group's summary come; checkpoints, an unfinished seed, and a group a study has only started
  (its summary lists no run) stay behind, so the page never meets an empty group."""
  runs, dest = tmp_path / "runs", tmp_path / "dest"
  files = {"cola_mosbach__x/summary.json": "{}",  # started: no seed finished yet
           "cola_mosbach__x/seed_1/config.json": "{}",
           "cola_adamw__x/summary.json": "{}",
           "cola_adamw__x/seed_1/results.json": "{}", "cola_adamw__x/seed_1/config.json": "{}",
           "cola_adamw__x/seed_1/grad_norms.npz": "", "cola_adamw__x/seed_1/checkpoints/9/a": "",
           "cola_adamw__x/seed_2/config.json": "{}"}  # in flight
  for name, text in files.items():
    (runs / name).parent.mkdir(parents=True, exist_ok=True)
    (runs / name).write_text(text)
  subprocess.run(["bash", str(REPO / "experiments" / "collect.sh"), str(runs), str(dest)],
                 check=True)
  assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()) == [
      "cola_adamw__x/seed_1/config.json", "cola_adamw__x/seed_1/grad_norms.npz",
      "cola_adamw__x/seed_1/results.json", "cola_adamw__x/summary.json"]


def test_a_best_of_row_gives_its_last_evaluation_beside_its_best(tmp_path):
  """The best of 60 evaluations is picked on the dev set it is scored on; the page also gives
  each seed's last evaluation (the end of training), which the final-score rows compare to."""
  for seed, scores in ((1, [20.0, 33.5, 31.0]), (2, [25.0, 30.0, 29.0])):
    (tmp_path / "g" / f"seed_{seed}").mkdir(parents=True)
    (tmp_path / "g" / f"seed_{seed}" / "results.json").write_text(json.dumps(
        {"evaluations": [{"score": x} for x in scores]}))
  summary = {"group": "g", "runs": [{"seed": 2, "score": 30.0}, {"seed": 1, "score": 33.5}]}
  mosbach = table1_section.Setting("cola", "mosbach", 1e-4, 20, 60)
  assert table1_section.seed_line(mosbach, summary, tmp_path) == (
      "- CoLA, lr 1e-4, Mosbach et al., 20 epochs, best of 60: 33.50 / 30.00; "
      "at the last evaluation 31.00 / 29.00 (mean 30.0)")
  adamw = table1_section.Setting("cola", "adamw", 1e-4, 3, 1)  # no evaluations read
  assert table1_section.seed_line(adamw, summary, tmp_path / "absent") == (
      "- CoLA, lr 1e-4, AdamW, 3 epochs: 33.50 / 30.00")


def test_a_comparison_waits_for_three_common_seeds():
  """Two seeds give no spread test (Brown-Forsythe's p is nan): a baseline with fewer than
  three seeds in common with CWGNC is listed in the table, not yet compared."""
  groups = table1_section.read_groups(table1_section.RUNS)
  cwgnc = next(s for s in groups if s.row == "cwgnc" and s.task == "cola")
  mosbach = table1_section.Setting("cola", "mosbach", 1e-4, 20, 60)
  for seeds, compared in ((2, False), (3, True)):
    made_up = copy.deepcopy(groups[cwgnc])
    made_up["runs"] = made_up["runs"][:seeds]
    found = table1_section.comparisons({cwgnc: groups[cwgnc], mosbach: made_up})
    assert [c.baseline for c in found] == ([mosbach] if compared else [])
