"""A fine-tuned run as a Hugging Face model folder: ``python -m cwgnc_jax.export RUN_DIR OUT_DIR``.

  python -m cwgnc_jax.export RUN_DIR OUT_DIR

writes the parameters that the run's ``results.json`` scored (the final ones, or the best
with ``keep_best``) to the new folder OUT_DIR as transformers writes a
``BertForSequenceClassification``:

  config.json        the base model's BERT config, as transformers' ``BertConfig`` saves it,
                     with ``architectures = ['BertForSequenceClassification']`` and the task's
                     classes in ``id2label`` / ``label2id`` (their number is ``num_labels``);
  model.safetensors  float32 tensors under transformers' names (``bert.encoder.layer.0...``,
                     ``classifier.weight``), Linear weights [out, in] (``loading.hf_tensors``);
  tokenizer files    those of the base model (``loading.TOKENIZER_FILES``), copied unchanged.

``transformers.BertForSequenceClassification.from_pretrained(OUT_DIR)`` (PyTorch) and
``cwgnc_jax.models.from_pretrained(OUT_DIR)`` both load it with the classifier. Dropout rates
are the base model's (a Mixout run trained without dropout; inference never uses it).
Checkpoints written during training stay orbax; this folder is the interchange format.

OUT_DIR must not exist or be empty: the folder is written beside it under a temporary name
and renamed into place when complete, so it is never half-written, and nothing is
overwritten. Exit status: 0 done; 2 bad input (a folder that is not a finished run, a missing
checkpoint or base model, an unusable OUT_DIR), reported in one line on stderr.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

from safetensors.numpy import save_file

from cwgnc_jax import command_line, files, saved_run
from cwgnc_jax.models import bert, loading
from cwgnc_jax.training import checkpoint


class OutputError(ValueError):
  """The output folder cannot be written (one line naming it)."""


def check_output_dir(out_dir: str | Path) -> Path:
  """``out_dir`` as a Path if a folder can be written there: absent or empty, under a
  writable parent (the nearest existing ancestor, when parents are missing)."""
  out_dir = Path(out_dir).absolute()
  if out_dir.exists():
    if not out_dir.is_dir():
      raise OutputError(f"output folder {out_dir} is a file: pass a new or empty folder")
    if any(out_dir.iterdir()):
      raise OutputError(f"output folder {out_dir} already holds files: pass a new or empty "
                        "folder (nothing is overwritten)")
  problem = files.unwritable_reason(out_dir.parent)  # the folder is staged beside it
  if problem:
    raise OutputError(f"output folder {out_dir} cannot be created: {problem}")
  return out_dir


def write_hf_folder(out_dir: str | Path, params: Mapping[str, Any], *, base_model: str,
                    label_names: Sequence[str]) -> Path:
  """Writes ``params`` (a BERT classifier's pure parameter dict) as a transformers
  ``BertForSequenceClassification`` folder at ``out_dir`` (new or empty); returns its path.

  ``base_model`` (a name, folder or hub id) gives the architecture config and the tokenizer
  files; ``label_names[i]`` names class ``i``.
  """
  # Imported when needed, as loading.load_tokenizer does: transformers takes seconds to import.
  import transformers  # pylint: disable=import-outside-toplevel

  out_dir = check_output_dir(out_dir)
  model_dir = loading.resolve_model_dir(base_model)
  tensors = loading.hf_tensors(params)
  num_labels = tensors["classifier.bias"].shape[0]
  if num_labels != len(label_names):
    raise ValueError(f"the classifier has {num_labels} classes, but {len(label_names)} label "
                     f"names were given: {list(label_names)}")
  config = transformers.BertConfig.from_pretrained(
      str(model_dir), id2label=dict(enumerate(label_names)),
      label2id={name: i for i, name in enumerate(label_names)})
  config.architectures = ["BertForSequenceClassification"]
  if not any((model_dir / name).is_file() for name in loading.VOCABULARY_FILES):
    raise FileNotFoundError(f"{model_dir} holds no tokenizer file "
                            f"({' or '.join(loading.VOCABULARY_FILES)})")
  tokenizer_files = [model_dir / name for name in loading.TOKENIZER_FILES
                     if (model_dir / name).is_file()]

  try:
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
  except OSError as e:  # what the access check cannot foresee: /proc, a read-only mount
    raise OutputError(f"output folder {out_dir} cannot be created ({e.strerror}): pass a "
                      "folder you can write") from None
  try:
    config.save_pretrained(str(staging))
    # {"format": "pt"}: transformers refuses safetensors files without this metadata.
    save_file(tensors, str(staging / loading.WEIGHTS_FILE), metadata={"format": "pt"})
    for path in tokenizer_files:
      shutil.copyfile(path, staging / path.name)
    # mkdtemp makes the folder 0o700 and safetensors its file 0o600: readable for all, as
    # any other model folder.
    staging.chmod(0o755)
    for path in staging.iterdir():
      path.chmod(0o644)
    os.rename(staging, out_dir)  # atomic; replaces out_dir only if it is an empty folder
  except BaseException as e:
    shutil.rmtree(staging, ignore_errors=True)
    cause = files.disk_error(e)  # a full or read-only disk; safetensors raises its own kind
    if cause:
      raise OutputError(f"output folder {out_dir} cannot be written ({cause}; it needs about "
                        f"{files.size_text(sum(t.nbytes for t in tensors.values()))}): free "
                        "space or pass another folder") from None
    raise
  return out_dir


def export_run(run_dir: str | Path, out_dir: str | Path) -> Path:
  """Writes the result parameters of the finished run in ``run_dir`` as a Hugging Face
  ``BertForSequenceClassification`` folder at ``out_dir`` (module docstring); returns it."""
  check_output_dir(out_dir)
  run = saved_run.open_run(run_dir)
  _, _, params = bert.split_params(saved_run.load_model(run))
  return write_hf_folder(out_dir, params, base_model=run.model_name,
                         label_names=run.task.label_names)


PROG = "cwgnc_jax.export"
USAGE = "usage: python -m cwgnc_jax.export RUN_DIR OUT_DIR"


def main(argv: list[str]) -> None:
  if command_line.asks_for_help(argv):
    print(__doc__.strip())
    return
  try:
    args = command_line.parse(argv, usage=USAGE, positionals=("RUN_DIR", "OUT_DIR"))
  except command_line.ConfigError as e:
    command_line.fail(PROG, f"{e} (python -m {PROG} --help)")
  run_dir, out_dir = (Path(arg).absolute() for arg in args.positionals)  # orbax: absolute only
  try:
    written = export_run(run_dir, out_dir)
  except (ValueError, OSError,  # RunDirError, OutputError, missing or wrong files
          checkpoint.CheckpointError) as e:
    command_line.fail_on(PROG, e)
  print(f"exported {run_dir} to {written}", file=sys.stderr)


if __name__ == "__main__":
  os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
  main(sys.argv[1:])
