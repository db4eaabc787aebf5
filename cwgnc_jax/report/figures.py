"""The figures of a report, each drawn to a PNG file from the groups of every setting
(``FIGURES``: file name, drawing function, caption), or skipped with the reason (``draw``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cwgnc_jax import diagnostics, files, paths
from cwgnc_jax.report import tables
from cwgnc_jax.report.load import (Group, row_order, sweep_title, sweeps, task_header,
                                   task_name, tasks_in)

_MOVE_LOG = "move it away (the figures it feeds are then skipped) or rerun that seed"

def _pyplot():
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  return plt


def _save(fig, path: Path) -> None:
  fig.savefig(path, dpi=120, bbox_inches="tight")
  _pyplot().close(fig)


def seed_points(group: Group) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
  """A group's finished seeds in seed order: their scores, whether each failed, and for a
  best-of group (Mosbach et al.'s protocol) each seed's last evaluation (else None)."""
  runs = sorted(group.summary["runs"], key=lambda run: run["seed"])
  last = tables.last_evaluations(group) if group.config.get("keep_best") else None
  return (np.array([run["score"] for run in runs]), np.array([run["failed"] for run in runs]),
          None if last is None else np.array(last[0]))


def figure_scores(groups: Sequence[Group], path: Path) -> str | None:
  """Every seed's score and each group's mean +- std, per task; for a best-of group, each
  seed's last evaluation too, joined to its best. Returns None when drawn, and the reason it
  is not ('no finished seeds') otherwise, as every figure does."""
  groups = [g for g in groups if g.summary["finished"]]
  if not groups:
    return "no finished seeds"
  plt = _pyplot()
  tasks = tasks_in(groups)
  labels = [label for label in dict.fromkeys(g.label for g in sorted(groups, key=row_order))]
  # Room for the row names (about 0.08 inch a character) beside the task panels.
  width = 4.2 * len(tasks) + 0.5 + 0.08 * max(len(label) for label in labels)
  fig, axes = plt.subplots(1, len(tasks), figsize=(width, 0.5 * len(labels) + 2), squeeze=False)
  drawn = set()  # legend entries given once, on whichever panel first draws them
  for ax, task in zip(axes[0], tasks):
    members = {g.label: g for g in groups if g.task == task}
    for y, label in enumerate(labels):
      if label not in members:
        continue
      s = members[label].summary
      scores, failed, last = seed_points(members[label])
      jitter = np.linspace(-0.15, 0.15, len(scores)) if len(scores) > 1 else np.zeros(1)
      if last is not None:  # how far the best-of pick lies above the end of training
        ax.hlines(y + jitter, np.minimum(last, scores), np.maximum(last, scores), color="gray",
                  lw=0.6, zorder=2)
        ax.scatter(last, y + jitter, s=14, facecolors="none", edgecolors="tab:blue", zorder=3,
                   label="last evaluation (best-of rows)" if "last" not in drawn else None)
        drawn.add("last")
      # Seeds drawn over the mean marker, so a lone seed stays visible.
      ax.scatter(scores[~failed], y + jitter[~failed], s=14, color="tab:blue", alpha=0.7,
                 zorder=3, label="seed" if y == 0 else None)
      ax.scatter(scores[failed], y + jitter[failed], s=14, color="tab:red", marker="x",
                 zorder=3, label="failed seed" if y == 0 else None)
      ax.errorbar(s["mean"], y, xerr=s["std"], fmt="D", color="black", capsize=4, ms=5,
                  label="mean ± std" if y == 0 else None)
    majority = [g.summary["majority_score"] for g in members.values()]
    if majority:
      ax.axvline(majority[0], color="gray", ls="--", lw=1, label="majority classifier")
    ax.set_yticks(range(len(labels)), labels if ax is axes[0][0] else [""] * len(labels))
    ax.set_ylim(len(labels) - 0.5, -0.5)
    ax.set_xlabel(f"dev {task_header(task, groups)} x100")
    ax.set_title(task_name(task))
    ax.grid(axis="x", alpha=0.3)
  handles, names = axes[0][0].get_legend_handles_labels()
  for ax in axes[0][1:]:
    for h, n in zip(*ax.get_legend_handles_labels()):
      if n not in names:
        handles.append(h)
        names.append(n)
  fig.legend(handles, names, loc="lower center", ncol=len(names), bbox_to_anchor=(0.5, -0.02),
             frameon=False)
  fig.suptitle("Dev score of every seed (x = failed: not above the majority classifier)")
  fig.tight_layout(rect=(0, 0.08, 1, 1))
  _save(fig, path)
  return None


def _iterations(results: dict[str, Any]) -> list[dict[str, Any]]:
  """The GU iterations' records of a run's results (``unfreezing.record``), if any."""
  return (results.get("unfreezing") or {}).get("iterations") or []


def figure_gu(groups: Sequence[Group], path: Path) -> str | None:
  """Fig. 1: dev score after each GU iteration (mean +- std over seeds)."""
  gu = [g for g in groups if g.unfreezing != "none"
        and any(_iterations(r) for r in g.results().values())]
  if not gu:
    return ("no gradual-unfreezing results (groups trained with unfreezing.mode 'gu' or "
            "'gu_restart', whose results.json lists unfreezing.iterations)")
  plt = _pyplot()
  tasks = tasks_in(gu)
  fig, axes = plt.subplots(1, len(tasks), figsize=(7 * len(tasks), 5.5), squeeze=False)
  for ax, task in zip(axes[0], tasks):
    length, references = 0, {}
    for g in [g for g in gu if g.task == task]:
      per_seed = [[it["score"] for it in _iterations(r)] for r in g.results().values()]
      per_seed = [s for s in per_seed if s]
      count = min(len(s) for s in per_seed)
      scores = np.array([s[:count] for s in per_seed])
      ax.errorbar(np.arange(1, count + 1), scores.mean(0), yerr=scores.std(0), marker="o",
                  capsize=3, label=f"{g.label} (n={len(scores)})")
      length = max(length, count)
      # Full fine-tuning: the plain group of this task with GU's optimizer settings.
      full = next((f for f in groups if f.task == task and f.unfreezing == "none"
                   and f.summary["finished"] and f.config["optimizer"] == g.config["optimizer"]),
                  None)
      if full is not None:
        references[full.path] = full
    for full in references.values():  # once, though GU and GU restart share it
      s = full.summary
      ax.axhline(s["mean"], color="black", lw=1,
                 label=f"full fine-tuning, {full.label} (n={s['finished']})")
      ax.axhspan(s["mean"] - s["std"], s["mean"] + s["std"], color="gray", alpha=0.2)
    ax.set_xticks(range(1, length + 1))
    ax.set_xlabel("GU iteration k (trains the head and the top k layers of the stack)")
    ax.set_ylabel(f"dev {task_header(task, groups)} x100")
    ax.set_title(task_name(task))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False)
  fig.suptitle("Fig. 1: gradual unfreezing, dev score after each iteration (mean ± std)")
  fig.tight_layout()
  _save(fig, path)
  return None


def _layer_order(layers: Sequence[str]) -> list[str]:
  """The embeddings and encoder layers, bottom up. The head is left out, as in the paper's
  figures: its fresh classifier (zero-initialised bias: cosine 0) says nothing about the
  pretrained layers and would dwarf them."""
  rank = lambda layer: -1 if layer == paths.EMBEDDINGS else paths.layer_index(layer)
  return sorted((layer for layer in layers if layer != paths.HEAD), key=rank)


def _short_layer(layer: str) -> str:
  return "emb" if layer == paths.EMBEDDINGS else str(paths.layer_index(layer))


def figure_gu_drift(groups: Sequence[Group], path: Path) -> str | None:
  """Figs. 2, 4, 5: per-layer max RMS and min cosine of the first 4 GU iterations (one GU
  group: the first with results), against the pretrained model and the previous iteration."""
  gu = [g for g in groups if g.unfreezing != "none"
        and any(_iterations(r) for r in g.results().values())]
  if not gu:
    return "no gradual-unfreezing results with per-iteration drift"
  g = min(gu, key=lambda g: g.unfreezing != "gu")  # GU itself, as the paper shows
  runs = [_iterations(r) for r in g.results().values() if _iterations(r)]
  plt = _pyplot()
  fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
  panels = [("drift_from_pretrained", "max_rms", "max RMS difference", "against pretrained"),
            ("drift_from_previous", "max_rms", "max RMS difference", "against previous iteration"),
            ("drift_from_pretrained", "min_cos", "min cosine similarity", "against pretrained"),
            ("drift_from_previous", "min_cos", "min cosine similarity",
             "against previous iteration")]
  for ax, (source, key, ylabel, title) in zip(axes.ravel(), panels):
    layers = _layer_order(runs[0][0][source])
    for k in range(min(4, min(len(r) for r in runs))):
      values = np.array([[r[k][source][layer][key] for layer in layers] for r in runs])
      ax.errorbar(range(len(layers)), values.mean(0), yerr=values.std(0), marker="o", ms=3,
                  capsize=2, label=f"iteration {k + 1}")
    ax.set_xticks(range(len(layers)), [_short_layer(layer) for layer in layers])
    ax.set_xlabel("layer (emb = embeddings, numbers = encoder layers)")
    ax.set_ylabel(ylabel)
    ax.ticklabel_format(axis="y", useOffset=False)  # cosines: 0.99997, not 1e-5 + 0.9999
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.suptitle(f"Figs. 2, 4, 5: per-layer drift under {g.label} on "
               f"{task_name(g.task)} (mean ± std over {len(runs)} "
               f"seed{'s' if len(runs) > 1 else ''})")
  fig.tight_layout()
  _save(fig, path)
  return None


def figure_drift_by_method(groups: Sequence[Group], path: Path) -> str | None:
  """Per-layer max RMS and min cosine against the pretrained model at the last evaluation,
  per group (mean +- std over seeds), one column per task."""
  data: dict[str, list[tuple[Group, list[dict[str, Any]]]]] = {}
  for g in sorted(groups, key=row_order):
    if g.unfreezing != "none":
      continue
    drifts = [r["evaluations"][-1].get("drift") for r in g.results().values()
              if r.get("evaluations")]
    drifts = [d for d in drifts if d]
    if drifts:
      data.setdefault(g.task, []).append((g, drifts))
  if not data:
    return "no evaluation recorded per-layer drift"
  plt = _pyplot()
  tasks = [t for t in tasks_in(groups) if t in data]
  colors = {label: f"C{i % 10}" for i, label in
            enumerate(dict.fromkeys(g.label for t in tasks for g, _ in data[t]))}
  fig, axes = plt.subplots(2, len(tasks), figsize=(6.5 * len(tasks), 8), squeeze=False)
  for column, task in enumerate(tasks):
    for g, drifts in data[task]:
      layers = _layer_order(drifts[0])
      for row, key in enumerate(("max_rms", "min_cos")):
        values = np.array([[d[layer][key] for layer in layers] for d in drifts])
        axes[row][column].errorbar(range(len(layers)), values.mean(0), yerr=values.std(0),
                                   marker="o", ms=3, capsize=2, color=colors[g.label],
                                   label=f"{g.label} (n={len(drifts)})")
        axes[row][column].set_xticks(range(len(layers)), [_short_layer(x) for x in layers])
    for row, ylabel in enumerate(("max RMS difference", "min cosine similarity")):
      ax = axes[row][column]
      ax.set_ylabel(ylabel)
      ax.ticklabel_format(axis="y", useOffset=False)
      ax.set_xlabel("layer (emb = embeddings, numbers = encoder layers)")
      ax.set_title(f"{task_name(task)}: {ylabel} against pretrained")
      ax.grid(alpha=0.3)
      ax.legend(fontsize=7)
  fig.suptitle("Per-layer drift from the pretrained model at the end of training "
               "(mean ± std over seeds)")
  fig.tight_layout()
  _save(fig, path)
  return None


def _fig3_pick(groups: Sequence[Group]) -> tuple[Group, int, int] | None:
  """A group with a failed and a successful seed that both have gradient norms, and of those
  seeds its lowest-scoring failed one and its highest-scoring successful one: (group, failed
  seed, successful seed). Baselines (not CWGNC) first, then most seeds; None if no group has
  both."""
  candidates = []
  for g in groups:
    runs = [r for r in g.summary["runs"]
            if (g.seed_dir(r["seed"]) / files.GRAD_NORMS_FILE).is_file()]
    failed = [r for r in runs if r["failed"]]
    succeeded = [r for r in runs if not r["failed"]]
    if failed and succeeded:
      worst = min(failed, key=lambda r: r["score"])["seed"]
      best = max(succeeded, key=lambda r: r["score"])["seed"]
      candidates.append(((g.is_cwgnc, -len(runs), g.label), g, worst, best))
  if not candidates:
    return None
  _, g, worst, best = min(candidates, key=lambda c: c[0])
  return g, worst, best


def figure_gradient_norms(groups: Sequence[Group], path: Path) -> str | None:
  """Fig. 3: per-tensor gradient norms of one encoder layer over steps, failed vs successful."""
  pick = _fig3_pick(groups)
  if pick is None:
    return ("no group has both a failed and a successful seed with grad_norms.npz "
            "(diagnostics_every > 0)")
  g, failed_seed, good_seed = pick
  norms = {seed: diagnostics.read_gradient_norms(g.seed_dir(seed) / files.GRAD_NORMS_FILE,
                                                 _MOVE_LOG)
           for seed in (failed_seed, good_seed)}
  names = [str(n) for n in norms[good_seed]["tensor_names"]]
  layers = sorted({paths.layer_index(n) for n in names} - {None})
  layer = layers[-2] if len(layers) >= 2 else layers[-1]
  prefix = f"encoder/layers/{layer}/"
  # The key bias is left out: its gradient is 0 up to rounding (softmax ignores a shift).
  columns = [i for i, n in enumerate(names)
             if n.startswith(prefix) and not n.endswith("attention/key/bias")]
  scores = {r["seed"]: r["score"] for r in g.summary["runs"]}
  plt = _pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), sharey=True)
  cmap = plt.get_cmap("tab20")
  for ax, seed, kind in ((axes[0], failed_seed, "failed"), (axes[1], good_seed, "successful")):
    data = norms[seed]
    for color, i in enumerate(columns):
      ax.plot(data["step"], data["tensor_norms"][:, i], lw=1, color=cmap(color % 20),
              label=names[i][len(prefix):])
    if g.is_cwgnc and g.clip_norm is not None:
      ax.axhline(g.clip_norm, color="black", ls="--", lw=1, label=f"threshold c = {g.clip_norm:g}")
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_title(f"{kind} run: seed {seed}, dev score {scores[seed]:.1f}")
    ax.grid(alpha=0.3)
  axes[0].set_ylabel("gradient L2 norm (before clipping)")
  axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
  fig.suptitle(f"Fig. 3: gradient norm of every tensor of encoder layer {layer} "
               f"(of {len(layers)}), {g.label} on {task_name(g.task)}")
  fig.tight_layout()
  _save(fig, path)
  return None


def _clipped_fraction(group: Group, seed: int) -> float | None:
  """The fraction of a CWGNC run's recorded (step, component) pairs whose component was
  clipped, or None without ``grad_norms.npz``."""
  path = group.seed_dir(seed) / files.GRAD_NORMS_FILE
  if not path.is_file():
    return None
  clipped = diagnostics.read_gradient_norms(path, _MOVE_LOG).get("clipped")
  return None if clipped is None else float(np.mean(clipped))


def figure_threshold_sweep(groups: Sequence[Group], path: Path) -> str | None:
  """Table 2 as a figure: per sweep, each seed's score and the mean +- std against c (log
  scale), and the fraction of (step, component) pairs CWGNC clipped."""
  found = sweeps([g for g in groups if g.summary["finished"]])
  if not found:
    return "no task has finished CWGNC runs at two or more thresholds"
  plt = _pyplot()
  fig, axes = plt.subplots(len(found), 2, figsize=(11, 4 * len(found)), squeeze=False)
  for (ax_score, ax_clip), (key, members) in zip(axes, found.items()):
    c = np.array([g.clip_norm for g in members])
    for g in members:
      runs = [r for r in g.summary["runs"] if "score" in r]
      scores = np.array([r["score"] for r in runs])
      failed = np.array([r["failed"] for r in runs])
      # Seeds spread a little along log c so that equal scores stay visible.
      x = g.clip_norm * np.exp(np.linspace(-0.06, 0.06, len(runs)) if len(runs) > 1 else [0.0])
      first = g is members[0]
      ax_score.scatter(x[~failed], scores[~failed], s=14, color="tab:blue", alpha=0.7,
                       zorder=3, label="seed" if first else None)
      ax_score.scatter(x[failed], scores[failed], s=20, color="tab:red", marker="x", zorder=3,
                       label="failed seed" if first else None)
      fractions = [f for f in (_clipped_fraction(g, r["seed"]) for r in runs) if f is not None]
      ax_clip.scatter([g.clip_norm] * len(fractions), 100 * np.array(fractions), s=14,
                      color="tab:blue", alpha=0.7)
    means = [g.summary["mean"] for g in members]
    stds = [g.summary["std"] for g in members]
    ax_score.errorbar(c, means, yerr=stds, fmt="D-", color="black", capsize=4, ms=5, lw=1,
                      label="mean ± std")
    ax_score.axhline(members[0].summary["majority_score"], color="gray", ls="--", lw=1,
                     label="majority classifier")
    ax_score.set_ylabel(f"dev {task_header(key[0], members)} x100")
    ax_score.set_title(f"{sweep_title(key)}: dev score")
    ax_score.legend(fontsize=8, loc="lower left")
    ax_clip.set_ylim(-3, 103)
    ax_clip.set_ylabel("component-steps clipped (%)")
    ax_clip.set_title(f"{sweep_title(key)}: how often CWGNC clips")
    for ax in (ax_score, ax_clip):
      ax.set_xscale("log")
      ax.set_xticks(c, [f"{v:g}" for v in c])
      ax.minorticks_off()
      ax.set_xlabel("threshold c (per-tensor gradient norm)")
      ax.grid(alpha=0.3)
  fig.suptitle("Table 2: CWGNC's clipping threshold (n seeds per point as in the table)")
  fig.tight_layout()
  _save(fig, path)
  return None


FIGURES = (
    ("scores.png", figure_scores,
     "Every seed's dev score (x: failed) and each group's mean ± std; dashed: the majority "
     "classifier; hollow, joined to a best-of row's seed: its last evaluation."),
    ("fig1_gradual_unfreezing.png", figure_gu,
     "Fig. 1: dev score after each gradual-unfreezing iteration (mean ± std over seeds); "
     "the line and band: full fine-tuning with the same optimizer."),
    ("fig2_4_5_gu_drift.png", figure_gu_drift,
     "Figs. 2, 4, 5: per layer, the maximum RMS difference and the minimum cosine similarity "
     "of its tensors, against the pretrained model and against the previous iteration, for "
     "the first 4 GU iterations (the head, with its fresh classifier, left out)."),
    ("drift_by_method.png", figure_drift_by_method,
     "Per layer, the maximum RMS difference and the minimum cosine similarity of its tensors "
     "against the pretrained model after training, per method (mean ± std over seeds; the "
     "head, with its fresh classifier, left out)."),
    ("table2_thresholds.png", figure_threshold_sweep,
     "Table 2 as a figure: each seed's dev score and the mean ± std against CWGNC's threshold "
     "c, and per seed the percentage of its recorded steps and components (every "
     "diagnostics_every-th step; a component is one tensor under the default labels) whose "
     "pre-clip gradient norm exceeded c."),
    ("fig3_gradient_norms.png", figure_gradient_norms,
     "Fig. 3: the pre-clip gradient norm of every tensor of the second-highest encoder layer "
     "(but the attention key bias, whose gradient is 0 up to rounding) over training, in a "
     "failed and a successful run of the same group."),
)


def draw(groups: Sequence[Group], folder: Path) -> dict[str, str]:
  """Draws every figure of ``FIGURES`` into ``folder``; returns the skipped ones' reasons, by
  file name."""
  skipped = {}
  for name, figure, _ in FIGURES:
    reason = figure(groups, folder / name)
    if reason is not None:
      skipped[name] = reason
  return skipped


def markdown(skipped: dict[str, str]) -> list[str]:
  """report.md's lines on the figures: each drawn one with its caption, then the skipped
  ones with their reasons."""
  lines = ["## Figures", ""]
  for name, _, caption in FIGURES:
    if name not in skipped:
      lines += [f"![{name}]({name})", "", caption, ""]
  if skipped:
    lines += ["Skipped figures:", "",
              *(f"- `{name}` skipped: {reason}." for name, reason in skipped.items()), ""]
  return lines
