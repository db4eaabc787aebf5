"""GLUE tasks' loaders and cached tokenization; the tasks themselves are ``cwgnc_jax.tasks``.

Two sources give the same examples:
  * the hub dataset ``nyu-mll/glue`` through ``datasets.load_dataset`` (needs internet, or
    its local cache with ``HF_HUB_OFFLINE=1``);
  * a local folder in the layout of the original GLUE download script,
    ``<GLUE_DIR>/<TASK>/{train,dev}.tsv`` (MNLI: ``dev_matched.tsv``, ``dev_mismatched.tsv``).
Each task's file layouts (header, columns, label strings) are its ``tasks.Layout`` entries.

A split is 'train' or one of the task's evaluation sets (``Task.splits``): 'dev', the run's
score, and MNLI's 'dev_mismatched'. Test files (``test.tsv``, MNLI ``test_matched.tsv`` and
``test_mismatched.tsv``) have no labels and a layout of their own, their first column the
index a submission repeats; ``read_test_tsv`` reads them.

Tokenization is ``[CLS] a [SEP] b [SEP]`` (``[CLS] a [SEP]`` for single-sentence tasks) with
token types 0 / 1, truncated ``longest_first`` to ``max_length`` tokens, and is cached on disk
keyed by the examples, the task, the split, the tokenizer and ``max_length``.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import os
import socket
import urllib.parse
import warnings
import zipfile
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Sequence

import numpy as np

from cwgnc_jax import files
from cwgnc_jax.tasks import Layout, Task, get_task

HUB_DATASET = "nyu-mll/glue"
DEFAULT_MAX_LENGTH = 128
DEFAULT_CACHE_DIR = Path("~/.cache/cwgnc_jax")
# Bump when the cached arrays change meaning, so old caches are never trusted.
_CACHE_FORMAT = 1


@dataclasses.dataclass(frozen=True)
class Example:
  """One example; ``text_b`` is None for single-sentence tasks (CoLA), ``label`` is
  ``NO_LABEL`` for a test example.

  ``id`` says where the example came from: ``<file>:<line>`` for a TSV row, the hub's
  ``idx`` otherwise.
  """
  text_a: str
  text_b: str | None
  label: int
  id: str


def _check_split(task: Task, split: str) -> str:
  if split not in task.splits:
    raise ValueError(f"unknown split {split!r}; expected one of {task.splits} for {task.name}")
  return split


def default_source() -> str:
  """``$GLUE_DIR`` when set (made absolute, ``~`` expanded), else 'hub'."""
  source = os.environ.get("GLUE_DIR") or "hub"
  return source if source == "hub" else str(Path(source).expanduser().absolute())


def load_examples(task_name: str, split: str, source: str | os.PathLike | None = None
                  ) -> list[Example]:
  """The examples of one split ('train' or an evaluation set's).

  Args:
    task_name: a task of ``tasks.TASKS``.
    split: 'train' or an evaluation set's (``Task.splits``: 'dev', MNLI's 'dev_mismatched').
    source: a GLUE folder, or 'hub'; default ``$GLUE_DIR`` when set, else 'hub'.
  """
  task = get_task(task_name)
  _check_split(task, split)
  source = default_source() if source is None else source
  if str(source) == "hub":
    where, examples = source, _load_hub(task, split)
  else:
    path = _tsv_path(task, split, Path(source).expanduser())
    where, examples = path, read_tsv(task, path, split)
  if not examples:
    header = task.layout(split).header
    raise ValueError(f"{task.name} {split} split from {where} is empty: expected "
                     f"{'a header line, then ' if header else ''}one example per line")
  return examples


def _tsv_path(task: Task, split: str, glue_dir: Path) -> Path:
  name = f"{task.name}/{task.file_stem(split)}.tsv"
  if glue_dir.exists() and not glue_dir.is_dir():
    raise NotADirectoryError(
        f"GLUE folder {glue_dir} is a file, not a folder; expected a folder holding "
        f"{name} (the original GLUE layout), or source='hub'")
  if not glue_dir.is_dir():
    raise FileNotFoundError(
        f"GLUE folder {glue_dir} does not exist; expected a folder holding "
        f"{name} (the original GLUE layout), or source='hub'")
  path = glue_dir / name
  if path.is_dir():
    raise IsADirectoryError(
        f"{path} is a directory, not a file; expected the {task.name} {split} split as the "
        f"file <GLUE_DIR>/{name}")
  if not path.is_file():
    raise FileNotFoundError(
        f"{path} does not exist; expected the {task.name} {split} split as "
        f"<GLUE_DIR>/{name}")
  return path


def _tsv_rows(path: Path, what: str) -> Iterator[tuple[int, list[str]]]:
  """(line number, fields) of each row of a GLUE TSV file, read as GLUE files must be: UTF-8
  (a byte-order mark, which the MRPC files start with, dropped) with quoting off (sentences
  contain bare quotes).

  Text that is not UTF-8 and a field the csv module refuses raise a ValueError naming the
  file and line; ``what`` says what each line should hold, e.g. "one RTE example".
  """
  try:
    text = path.read_bytes().decode("utf-8-sig")
  except UnicodeDecodeError as error:  # its positions are in error.object (no mark)
    line = error.object[:error.start].count(b"\n") + 1
    raise ValueError(
        f"{path}:{line}: not UTF-8 (byte 0x{error.object[error.start]:02x}): GLUE files are "
        "UTF-8 text; convert the file to UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None
  rows = csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
  try:
    yield from enumerate(rows, start=1)
  except csv.Error as error:  # e.g. a field over csv.field_size_limit()
    raise ValueError(f"{path}:{rows.line_num}: {error}; expected {what} per line") from None


def read_tsv(task: Task, path: Path, split: str) -> list[Example]:
  """The examples of one GLUE TSV file of ``split`` (its layout: ``Task.layout``), read by
  ``_tsv_rows``.

  Text that is not UTF-8, a row with the wrong number of columns or an unknown label, and a
  field the csv module refuses raise a ValueError naming the file and line.
  """
  path, layout = Path(path), task.layout(split)
  examples = []
  for line, row in _tsv_rows(path, f"one {task.name} example"):
    if line == 1 and layout.header is not None:
      if tuple(row) != layout.header:
        raise ValueError(
            f"{path}:1: header {row} is not the {task.name} header {list(layout.header)}")
      continue
    if len(row) != layout.columns:
      raise ValueError(
          f"{path}:{line}: {len(row)} columns, expected {layout.columns} for {task.name}")
    label = task.tsv_label.get(row[layout.label])
    if label is None:
      raise ValueError(
          f"{path}:{line}: unknown label {row[layout.label]!r}, expected one of "
          f"{sorted(task.tsv_label)}")
    examples.append(_example(task, layout, row, label, f"{path.name}:{line}"))
  return examples


def _example(task: Task, layout: Layout, row: list[str], label: int, where: str) -> Example:
  texts = [row[i] for i in layout.text]
  return Example(texts[0], texts[1] if task.is_pair else None, label, where)


NO_LABEL = -1  # the label of a test example: GLUE test files have none


def read_test_tsv(task: Task, path: Path) -> tuple[list[str], list[Example]]:
  """The ``index`` column and the examples (labels ``NO_LABEL``) of a GLUE test file, read
  by ``_tsv_rows`` as ``read_tsv`` reads train and dev files.

  Text that is not UTF-8, a field the csv module refuses, a wrong header, a row with the
  wrong number of columns, an index that is not an integer, or no rows at all raise a
  ValueError naming the file (and line).
  """
  path, layout = Path(path), task.test
  indices, examples = [], []
  for line, row in _tsv_rows(path, f"one {task.name} test example"):
    if line == 1:
      if tuple(row) != layout.header:
        raise ValueError(f"{path}:1: header {row} is not the {task.name} test header "
                         f"{list(layout.header)}")
      continue
    if len(row) != layout.columns:
      raise ValueError(f"{path}:{line}: {len(row)} columns, expected "
                       f"{layout.columns} for a {task.name} test file")
    if not row[0].isdigit():
      raise ValueError(f"{path}:{line}: index {row[0]!r} is not a non-negative integer")
    indices.append(row[0])
    examples.append(_example(task, layout, row, NO_LABEL, f"{path.name}:{line}"))
  if not examples:
    raise ValueError(f"{path} holds no examples below its header")
  return indices, examples


def _hub_unreachable() -> bool:
  """True when the hub's host cannot even be resolved and connected to (no internet).

  ``datasets`` retries for ~25 s before failing offline; this probe fails in milliseconds.
  With ``HF_HUB_OFFLINE`` set or a proxy configured the probe is skipped, and ``datasets``
  decides (it reads its local cache offline).
  """
  if any(os.environ.get(v) for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HTTPS_PROXY",
                                     "https_proxy", "ALL_PROXY", "all_proxy")):
    return False
  endpoint = urllib.parse.urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
  port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
  try:
    socket.create_connection((endpoint.hostname, port), timeout=5).close()
  except OSError:
    return True
  return False


def _hub_error(task: Task, reason: str) -> ConnectionError:
  return ConnectionError(
      f"cannot load {HUB_DATASET} config {task.hub_config!r} from the Hugging Face hub "
      f"({reason}); without internet set GLUE_DIR (or pass source=) to a folder holding "
      f"{task.name}/{{{','.join(task.file_stem(split) for split in task.splits)}}}.tsv in "
      "the original GLUE layout")


def _load_hub(task: Task, split: str) -> list[Example]:
  if _hub_unreachable():
    raise _hub_error(task, "the hub is unreachable")
  import datasets  # pylint: disable=import-outside-toplevel
  try:
    rows = datasets.load_dataset(HUB_DATASET, task.hub_config)[task.hub_split(split)]
  except Exception as e:  # datasets raises many kinds; all mean "not available".
    raise _hub_error(task, f"{type(e).__name__}: {e}") from e
  examples = []
  for row in rows:
    texts = [row[c] for c in task.hub_text]
    examples.append(Example(texts[0], texts[1] if task.is_pair else None, int(row["label"]),
                            str(row["idx"])))
  return examples


class TokenizedSplit(NamedTuple):
  """A tokenized split as flat arrays: example ``i`` is ``input_ids[offsets[i]:offsets[i+1]]``.

  Attributes:
    input_ids: int32 [total tokens], every example ``[CLS] a [SEP] (b [SEP])``.
    token_type_ids: int32 [total tokens], 0 on ``[CLS] a [SEP]``, 1 on ``b [SEP]``.
    offsets: int64 [N + 1], start of each example, then the total.
    labels: int32 [N].
  """
  input_ids: np.ndarray
  token_type_ids: np.ndarray
  offsets: np.ndarray
  labels: np.ndarray

  def __len__(self) -> int:
    return len(self.labels)

  @property
  def lengths(self) -> np.ndarray:
    return np.diff(self.offsets)

  def example(self, i: int) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, token_type_ids) of example ``i``."""
    start, stop = self.offsets[i], self.offsets[i + 1]
    return self.input_ids[start:stop], self.token_type_ids[start:stop]


def num_special_tokens(pair: bool) -> int:
  """How many special tokens an example holds: ``[CLS] a [SEP]``, and ``b [SEP]`` for a pair."""
  return 3 if pair else 2


def tokenize(examples: Sequence[Example], tokenizer: Any, max_length: int = DEFAULT_MAX_LENGTH
             ) -> TokenizedSplit:
  """Tokenizes ``examples`` with a transformers fast tokenizer in one batched call.

  ``max_length`` must not be shorter than the special tokens: the tokenizer cannot truncate
  below them, and would return the examples whole (ValueError instead).
  """
  if not examples:
    raise ValueError("no examples to tokenize")
  texts_a = [e.text_a for e in examples]
  pair = examples[0].text_b is not None
  texts_b = [e.text_b for e in examples] if pair else None
  encoded = tokenizer(texts_a, texts_b, truncation="longest_first", max_length=max_length,
                      return_token_type_ids=True, return_attention_mask=False)
  ids, types = encoded["input_ids"], encoded["token_type_ids"]
  offsets = np.zeros(len(ids) + 1, np.int64)
  np.cumsum([len(x) for x in ids], out=offsets[1:])
  if np.diff(offsets).max() > max_length:
    raise ValueError(f"max_length={max_length} is shorter than the {num_special_tokens(pair)} "
                     "special tokens ([CLS], [SEP]) of an example, below which the tokenizer "
                     "cannot truncate")
  return TokenizedSplit(
      input_ids=np.fromiter((t for x in ids for t in x), np.int32, count=offsets[-1]),
      token_type_ids=np.fromiter((t for x in types for t in x), np.int32, count=offsets[-1]),
      offsets=offsets,
      labels=np.array([e.label for e in examples], np.int32))


def tokenizer_fingerprint(tokenizer: Any) -> str:
  """sha256 of the tokenizer's definition (its ``tokenizer.json``), without call state.

  Transformers stores the last call's truncation settings in the backend tokenizer, so
  those are cleared on a copy before hashing.
  """
  from tokenizers import Tokenizer  # pylint: disable=import-outside-toplevel
  backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
  backend.no_truncation()
  backend.no_padding()
  return hashlib.sha256(backend.to_str().encode()).hexdigest()


def cache_key(task: Task, split: str, examples: Sequence[Example], tokenizer: Any,
              max_length: int) -> str:
  """Hash of everything the tokenized arrays depend on."""
  h = hashlib.sha256()
  h.update(json.dumps([_CACHE_FORMAT, task.name, split, max_length,
                       tokenizer_fingerprint(tokenizer)]).encode())
  for e in examples:
    h.update(json.dumps([e.text_a, e.text_b, e.label]).encode())
  return h.hexdigest()[:24]


def cache_folder(cache_dir: str | os.PathLike | None) -> Path:
  """The cache folder ``config.cache_dir`` names: itself, else ``$CWGNC_CACHE`` when set, else
  ``~/.cache/cwgnc_jax``; absolute (``~`` expanded)."""
  if cache_dir is None:
    cache_dir = os.environ.get("CWGNC_CACHE") or DEFAULT_CACHE_DIR
  return Path(cache_dir).expanduser().absolute()


def _save_atomically(path: Path, data: TokenizedSplit) -> None:
  """Writes ``path`` atomically (``files.write_atomic``): an interrupted write never leaves a
  file there."""
  files.write_atomic(path, lambda f: np.savez(f, **data._asdict()), binary=True)


def _cache_error(cache_dir: Path, problem: str) -> OSError:
  return OSError(f"the tokenized-data cache {cache_dir} {problem}: set config.cache_dir "
                 f"(default $CWGNC_CACHE, else {DEFAULT_CACHE_DIR}) to a folder you can "
                 "read and write")


def _load_cached(path: Path, cache_dir: Path) -> TokenizedSplit | None:
  """The split cached at ``path``, or None when there is none.

  A file that is not a cached split (cut short by a full disk, or written by hand) is
  ignored with a warning: it is made again. A cache that cannot be read raises OSError.
  """
  try:
    with open(path, "rb") as f, np.load(f) as arrays:  # np.load leaks a file it fails on
      return TokenizedSplit(**{k: arrays[k] for k in TokenizedSplit._fields})
  except FileNotFoundError:
    return None
  except NotADirectoryError:
    raise _cache_error(cache_dir, "cannot be made: a folder on its path is a file") from None
  except PermissionError as error:
    raise _cache_error(cache_dir, f"cannot be read ({error.strerror})") from None
  except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as error:
    warnings.warn(f"ignoring the unreadable cache file {path} ({type(error).__name__}: "
                  f"{error}); tokenizing again", stacklevel=3)
    return None


def load_tokenized(task_name: str, split: str, tokenizer: Any, *,
                   source: str | os.PathLike | None = None,
                   max_length: int = DEFAULT_MAX_LENGTH,
                   cache_dir: str | os.PathLike | None = None) -> TokenizedSplit:
  """The tokenized split, from the disk cache when an identical one was made before.

  Args:
    task_name: a task of ``tasks.TASKS``.
    split: 'train' or an evaluation set's (``Task.splits``).
    tokenizer: a transformers fast tokenizer.
    source: a GLUE folder or 'hub' (see ``load_examples``).
    max_length: tokens per example after truncation.
    cache_dir: default ``$CWGNC_CACHE``, else ``~/.cache/cwgnc_jax``.

  Raises OSError naming the cache when it is not a folder that can be read and written.
  """
  task = get_task(task_name)
  examples = load_examples(task_name, split, source)
  cache_dir = cache_folder(cache_dir)
  if cache_dir.is_file():
    raise _cache_error(cache_dir, "is a file, not a folder")
  path = cache_dir / f"{task.hub_config}-{split}-{max_length}-" \
                     f"{cache_key(task, split, examples, tokenizer, max_length)}.npz"
  cached = _load_cached(path, cache_dir)
  if cached is not None:
    return cached
  data = tokenize(examples, tokenizer, max_length)
  try:
    cache_dir.mkdir(parents=True, exist_ok=True)
    _save_atomically(path, data)
  except OSError as error:
    raise _cache_error(cache_dir, f"cannot be written ({error.strerror or error})") from None
  return data
