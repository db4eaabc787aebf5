"""Tables and figures of stability studies: ``python -m cwgnc_jax.report RUN_DIR ...``.

  python -m cwgnc_jax.report RUN_DIR [RUN_DIR ...] [--out DIR]

Each RUN_DIR is a study folder (``--out`` of ``cwgnc_jax.study``: one group folder per config,
each with ``summary.json`` and ``seed_<s>/`` run directories) or a single group folder. One
RUN_DIR is one setting (model, learning rates, epochs): it gets its own tables. Writes
``report.md`` and PNG figures to ``--out`` (default: the first RUN_DIR):

  * Table 1 (the paper's layout): rows are methods, and per task the number of seeds n, the
    Std, Mean and Max of the dev score (x100) over them and the failed-run percentage, then the
    paper's BERT-large ``Std / Mean / Max`` of the row (``paper.TABLE1``: another model and
    scale). CWGNC rows name their threshold; groups that would share a cell (e.g. two
    learning rates of one method) get their differing overrides in the row name.
  * Table 2 (the paper's layout): CWGNC's threshold sweep on a task, one row per threshold,
    when a RUN_DIR holds CWGNC groups of at least two thresholds on that task at one learning
    rate and number of epochs; from three thresholds on, with the rank correlation of score and
    log c (``sweep_trend``).
  * CWGNC against each baseline of its task at the same learning rate and scale
    (``comparisons``): are the differences in spread, mean and failures larger than the
    seeds' noise? Two-sided p-values
    (``stats.compare``), each beside its Holm-adjusted value over every test on the page
    (``stats.holm``).
  * ``scores.png``: every seed's score and each group's mean +- std against the majority
    classifier (the spread Table 1 summarizes); a best-of row's seeds also at their last
    evaluation.
  * ``fig1_gradual_unfreezing.png``: dev score after each GU iteration (mean +- std over
    seeds) for GU and GU restart, and full fine-tuning with the same optimizer (Fig. 1);
    needs groups trained with ``unfreezing.mode`` 'gu' / 'gu_restart' (their results.json
    ``unfreezing.iterations``).
  * ``fig2_4_5_gu_drift.png``: per layer, the maximum RMS difference and the minimum cosine
    similarity against the pretrained model and the previous iteration, for the first 4 GU
    iterations (Figs. 2, 4, 5); same data source.
  * ``drift_by_method.png``: the same two quantities per layer at the end of training, for
    every Table 1 group (mean +- std over seeds), from each evaluation's ``drift``.
  * ``table2_thresholds.png``: Table 2 as a figure: score against CWGNC's threshold c (each
    seed, mean +- std), and how often each seed's run clipped (``grad_norms.npz``).
  * ``fig3_gradient_norms.png``: the pre-clip gradient norm of every tensor of one encoder
    layer (the second from the top, as the paper's layer 22 of 24) over training, in a
    failed run and a successful run of one group (``grad_norms.npz``).

A figure without data is skipped, and ``report.md`` says why. ``seeds.csv`` beside it holds
the raw per-seed results behind the tables (one row per finished seed of every group).

Modules: ``load`` (the study folders, checked; groups and their names), ``tables`` (the
Markdown and seeds.csv), ``figures``, ``publish`` (``render``, then ``publish`` atomically:
``write_report``) and ``main`` (the command line).
"""
