"""Batches of a fixed number of examples, laid out padded or packed.

Every step sees ``batch_size`` example slots, in an order fixed by (seed, epoch) alone, so
the optimizer sees the same examples at every step whatever the layout. A batch is a dict
of numpy arrays, what the model reads (``models.bert.INPUT_KEYS``) and the loss needs:

  input_ids, token_type_ids, position_ids, segment_ids   int32 [R, T]
  cls_index      int32 [B]    flat index row * T + col of each example's [CLS]
  labels         int32 [B]
  example_mask   float32 [B]  1 for real examples, 0 for fillers

``segment_ids`` is 0 on padding and k >= 1 on the k-th example of a row; attention is
allowed from q to k iff ``segment_ids[q] == segment_ids[k] != 0``.

Layouts:
  * "padded": one example per row, R = B (the reference behaviour).
  * "packed": first-fit decreasing of the batch's examples into rows of T tokens, with
    positions and token types restarting at each example; R is the rows needed rounded
    up to a multiple of ``max(row_multiple, 2)`` (``packed_row_counts``). T is
    ``max_length``, or with ``row_length_step`` = s > 0 the row length of the fewest token
    slots R * T among ``max_length`` and the multiples of s from the batch's longest
    example up (``packed_row_lengths``): 16 CoLA sentences (~180 tokens) fill 2 rows of 96
    instead of 2 of 128. XLA compiles a program per (R, T) that occurs.

Fillers (the tail of the last batch) have no tokens. Their ``cls_index`` points at column 0
of their own empty row in the padded layout, and at the batch's last slot in the packed one
(padding, or a real token when the last row is full), so their logits are garbage that
``example_mask`` removes; the model must therefore keep rows with no real token finite (a
large finite negative attention bias, not -inf). Packed batches have such rows anyway when R
is rounded up.

The last partial batch of an epoch is kept and filled with fillers (``steps_per_epoch``
is the ceiling), as the HF Trainer keeps it: every training example is seen once per
epoch. The loss must then be the mean over real examples,
``sum(mask * loss) / sum(mask)``, which equals the HF mean over the short batch.

``inputs_from_padded`` turns a padded batch as a Hugging Face tokenizer returns it
(``input_ids``, ``attention_mask``, ``token_type_ids``) into the model's inputs.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from cwgnc_jax.data.glue import TokenizedSplit

LAYOUTS = ("padded", "packed")
Batch = dict[str, np.ndarray]


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  """ceil(num_examples / batch_size): the last partial batch is kept (filled with fillers)."""
  if num_examples <= 0 or batch_size <= 0:
    raise ValueError(f"need num_examples > 0 and batch_size > 0, got {num_examples}, "
                     f"{batch_size}")
  return -(-num_examples // batch_size)


def epoch_order(num_examples: int, *, seed: int, epoch: int) -> np.ndarray:
  """The permutation of example indices for one epoch, a function of (seed, epoch) only."""
  return np.random.default_rng([seed, epoch]).permutation(num_examples)


def packed_row_counts(batch_size: int, row_multiple: int = 1) -> list[int]:
  """Every row count R a packed batch of ``batch_size`` examples can have."""
  step = max(row_multiple, 2)
  return list(range(step, -(-batch_size // step) * step + 1, step))


def packed_row_lengths(max_length: int, row_length_step: int = 0) -> list[int]:
  """Every row length T a packed batch can have: ``max_length``, and with
  ``row_length_step`` = s > 0 also the multiples of s below it."""
  shorter = range(row_length_step, max_length, row_length_step) if row_length_step else ()
  return [*shorter, max_length]


def pack_together(batches: Sequence[np.ndarray], max_length: int, row_multiple: int = 1,
                  row_length_step: int = 0) -> list[tuple[int, int, list[list[int]]]]:
  """``(R, T, rows)`` of each batch of examples of ``batches[i]`` lengths, packed at one row
  length T so that they stack into one array (the seeds of a program, ``stack_batches``).

  ``rows`` are ``first_fit(lengths, T)``'s bins and R their count rounded up to a multiple
  of ``max(row_multiple, 2)``. T is the length of ``packed_row_lengths`` (at least the
  longest example) with the fewest slots of the stacked array, the most R of any batch times
  T, the shortest of equals: no batch is padded to another's row length (16 CoLA sentences
  in 6 rows of 32 beside 2 rows of 96 would stack as 6 rows of 96; at T = 96 both take 2).
  """
  step = max(row_multiple, 2)
  rounded = lambda bins: max(-(-len(bins) // step), 1) * step
  longest = max(int(np.max(lengths, initial=0)) for lengths in batches)
  best = None
  for length in packed_row_lengths(max_length, row_length_step):
    if length < longest:
      continue
    bins = [first_fit(lengths, length) for lengths in batches]
    slots = max(rounded(b) for b in bins) * length
    if best is None or slots < best[0]:
      best = slots, length, bins
  if best is None:
    raise ValueError(f"example of {longest} tokens does not fit max_length {max_length}")
  _, length, bins = best
  return [(rounded(rows), length, rows) for rows in bins]


def pack(lengths: np.ndarray, max_length: int, row_multiple: int = 1,
         row_length_step: int = 0) -> tuple[int, int, list[list[int]]]:
  """``(R, T, rows)``: the packed layout of examples of ``lengths`` (module docstring), the
  one batch of ``pack_together``: T of the fewest slots R * T."""
  return pack_together([lengths], max_length, row_multiple, row_length_step)[0]


def _check(layout: str, batch_size: int, max_length: int, row_multiple: int,
           row_length_step: int = 0) -> None:
  if layout not in LAYOUTS:
    raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
  if batch_size <= 0 or max_length <= 0 or row_multiple <= 0:
    raise ValueError(f"need batch_size, max_length, row_multiple > 0, got {batch_size}, "
                     f"{max_length}, {row_multiple}")
  if row_length_step < 0:
    raise ValueError(f"need row_length_step >= 0, got {row_length_step}")
  if layout == "padded" and batch_size % row_multiple:
    raise ValueError(f"padded layout: batch_size {batch_size} is not a multiple of "
                     f"row_multiple {row_multiple}")


def first_fit(lengths: np.ndarray, capacity: int) -> list[list[int]]:
  """Bins of item indices: first-fit of the items in decreasing length into bins of ``capacity``.

  Ties keep the items' order, so the result is a function of ``lengths`` alone.
  """
  bins: list[list[int]] = []
  room: list[int] = []
  for i in np.argsort(-np.asarray(lengths), kind="stable"):
    n = int(lengths[i])
    if n > capacity:
      raise ValueError(f"example of {n} tokens does not fit max_length {capacity}")
    for b, free in enumerate(room):
      if n <= free:
        bins[b].append(int(i))
        room[b] -= n
        break
    else:
      bins.append([int(i)])
      room.append(capacity - n)
  return bins


def make_batch(data: TokenizedSplit, indices: np.ndarray, batch_size: int, *, layout: str,
               max_length: int, row_multiple: int = 1, row_length_step: int = 0,
               packed: tuple[int, int, list[list[int]]] | None = None) -> Batch:
  """The batch of examples ``indices`` (at most ``batch_size``; the rest are fillers).
  ``row_length_step``: packed rows shorter than ``max_length`` where that saves slots
  (module docstring); 0 keeps every row ``max_length`` long. ``packed``: its packed layout
  when already chosen (``pack_together``), else ``pack``'s."""
  _check(layout, batch_size, max_length, row_multiple, row_length_step)
  indices = np.asarray(indices, np.int64)
  if len(indices) > batch_size:
    raise ValueError(f"{len(indices)} examples do not fit a batch of {batch_size}")
  lengths = data.lengths[indices]
  if lengths.size and lengths.max() > max_length:
    raise ValueError(f"example of {lengths.max()} tokens does not fit max_length {max_length}")
  if layout == "padded":
    rows = [[b] for b in range(len(indices))]
    num_rows, length = batch_size, max_length
    cls_index = np.arange(batch_size, dtype=np.int32) * max_length
  else:
    num_rows, length, rows = packed or pack(lengths, max_length, row_multiple,
                                            row_length_step)
    # Fillers point at the last slot of the last row: padding or some real token, either
    # way finite, and masked out of the loss and the metric.
    cls_index = np.full(batch_size, num_rows * length - 1, np.int32)

  shape = (num_rows, length)
  batch = {k: np.zeros(shape, np.int32)
           for k in ("input_ids", "token_type_ids", "position_ids", "segment_ids")}
  for r, members in enumerate(rows):
    col = 0
    for segment, b in enumerate(members, start=1):
      ids, types = data.example(indices[b])
      n = len(ids)
      batch["input_ids"][r, col:col + n] = ids
      batch["token_type_ids"][r, col:col + n] = types
      batch["position_ids"][r, col:col + n] = np.arange(n)
      batch["segment_ids"][r, col:col + n] = segment
      cls_index[b] = r * length + col
      col += n
  labels = np.zeros(batch_size, np.int32)
  labels[:len(indices)] = data.labels[indices]
  mask = np.zeros(batch_size, np.float32)
  mask[:len(indices)] = 1.0
  batch.update(cls_index=cls_index, labels=labels, example_mask=mask)
  return batch


def train_batches(data: TokenizedSplit, batch_size: int = 16, *, seed: int, epoch: int,
                  layout: str, max_length: int, row_multiple: int = 1, start_step: int = 0,
                  row_length_step: int = 0) -> Iterator[Batch]:
  """The batches of one training epoch, from ``start_step`` on (for exact resumption).

  Step s holds examples ``epoch_order(...)[s * B:(s + 1) * B]``, in either layout;
  ``row_length_step`` as for ``make_batch``.
  """
  for (batch,) in train_batches_together(
      [data], [seed], batch_size, epoch=epoch, layout=layout, max_length=max_length,
      row_multiple=row_multiple, start_step=start_step, row_length_step=row_length_step):
    yield batch


def train_batches_together(datasets: Sequence[TokenizedSplit], seeds: Sequence[int],
                           batch_size: int = 16, *, epoch: int, layout: str, max_length: int,
                           row_multiple: int = 1, start_step: int = 0, row_length_step: int = 0
                           ) -> Iterator[list[Batch]]:
  """Each step's batches of seeds trained as one program (seed ``seeds[i]`` on
  ``datasets[i]``): step s holds each seed's examples ``epoch_order(...)[s * B:(s + 1) * B]``
  (``train_batches``), packed at one row length, the one of the fewest slots once they are
  stacked (``pack_together``, once a step)."""
  _check(layout, batch_size, max_length, row_multiple, row_length_step)
  steps = steps_per_epoch(len(datasets[0]), batch_size)
  if not 0 <= start_step <= steps:
    raise ValueError(f"start_step {start_step} outside [0, {steps}] steps of the epoch")
  orders = [epoch_order(len(data), seed=seed, epoch=epoch) for data, seed in zip(datasets, seeds)]
  for step in range(start_step, steps):
    chosen = [order[step * batch_size:(step + 1) * batch_size] for order in orders]
    layouts = [None] * len(datasets)
    if layout == "packed":
      layouts = pack_together([data.lengths[indices] for data, indices in zip(datasets, chosen)],
                              max_length, row_multiple, row_length_step)
    yield [make_batch(data, indices, batch_size, layout=layout, max_length=max_length,
                      row_multiple=row_multiple, row_length_step=row_length_step, packed=packed)
           for data, indices, packed in zip(datasets, chosen, layouts)]


def eval_batches(data: TokenizedSplit, batch_size: int = 16, *, layout: str, max_length: int,
                 row_multiple: int = 1) -> Iterator[Batch]:
  """Every example exactly once, in file order; the last batch is filled with fillers.

  Predictions in file order are ``logits[example_mask == 1]`` over the batches. Packed
  batches are all padded with empty rows (``pad_rows``) to the largest one's row count, so an
  evaluation compiles one shape, not one per row count: on a small run compiling them cost
  more than evaluating.
  """
  _check(layout, batch_size, max_length, row_multiple)
  batches = [make_batch(data, np.arange(start, min(start + batch_size, len(data))), batch_size,
                        layout=layout, max_length=max_length, row_multiple=row_multiple)
             for start in range(0, len(data), batch_size)]
  rows = max((b["input_ids"].shape[0] for b in batches), default=0)
  for batch in batches:
    yield pad_rows(batch, rows)


def packing_efficiency(batch: Batch) -> float:
  """Fraction of the batch's token slots that hold real tokens."""
  return float(np.mean(batch["segment_ids"] != 0))


def padded_over_packed(data: TokenizedSplit, batch_size: int = 16, *, seed: int = 0,
                       max_length: int, row_multiple: int = 1, row_length_step: int = 0) -> float:
  """Token slots of one padded epoch over those of the same epoch packed (B*T / R*T summed).

  The compute saving of packing, up to the cost of the block-diagonal attention mask.
  """
  padded = packed = 0
  for batch in train_batches(data, batch_size, seed=seed, epoch=0, layout="packed",
                             max_length=max_length, row_multiple=row_multiple,
                             row_length_step=row_length_step):
    padded += batch_size * max_length
    packed += batch["input_ids"].size
  return padded / packed


def pad_rows(batch: Batch, num_rows: int, length: int | None = None) -> Batch:
  """``batch`` with empty rows (no tokens) appended up to ``num_rows`` rows, and each row
  padded to ``length`` tokens (default: as it is). ``cls_index`` (flat ``row * T + col``)
  follows: every token keeps its row and column."""
  rows, old_length = batch["input_ids"].shape
  length = old_length if length is None else length
  if (rows, length) == (num_rows, old_length):
    return batch
  padded = dict(batch)
  for key in ("input_ids", "token_type_ids", "position_ids", "segment_ids"):
    padded[key] = np.zeros((num_rows, length), batch[key].dtype)
    padded[key][:rows, :old_length] = batch[key]
  row, col = np.divmod(batch["cls_index"], old_length)
  padded["cls_index"] = (row * length + col).astype(batch["cls_index"].dtype)
  return padded


def stack_batches(batches: list[Batch], row_multiple: int = 1) -> Batch:
  """One batch per seed, stacked: arrays ``[S, ...]``. Packed batches of different seeds
  have different shapes, so each is padded with empty rows to the most rows (rounded up to
  ``row_multiple``) and to the longest rows: padding changes no example's logits (attention
  stays within an example's segment) but costs compute."""
  num_rows = max(b["input_ids"].shape[0] for b in batches)
  num_rows = -(-num_rows // row_multiple) * row_multiple
  length = max(b["input_ids"].shape[1] for b in batches)
  padded = [pad_rows(b, num_rows, length) for b in batches]
  return {key: np.stack([b[key] for b in padded]) for key in batches[0]}


def inputs_from_padded(encoding: Mapping[str, Any]) -> Batch:
  """The model's inputs for a right-padded batch as a Hugging Face tokenizer returns it.

  ``encoding`` holds ``input_ids`` and ``attention_mask`` [B, T] and optionally
  ``token_type_ids`` (default 0), as numpy arrays or nested lists, e.g.
  ``tokenizer(first, second, padding=True, return_tensors='np')``. The result is the padded
  layout above (without labels): ``segment_ids = attention_mask``, ``position_ids = 0 ... T-1``
  and each row's [CLS] at its column 0, as transformers' BERT computes it, so
  ``model(inputs_from_padded(encoding))`` gives the logits of
  ``BertForSequenceClassification(**encoding)``. A host-side (numpy) conversion: call it
  outside ``jax.jit``. T must not exceed the model's ``max_position_embeddings``: tokenize
  with ``truncation=True, max_length=128`` as training does (a position without an embedding
  is not an error inside JAX: its gather fills the row with NaN).

  Raises ValueError for shapes that differ, a mask that is not 0/1, or a row that is
  left-padded or empty (its [CLS] would not be at column 0).
  """
  missing = [key for key in ("input_ids", "attention_mask") if key not in encoding]
  if missing:
    raise ValueError(f"the padded batch lacks {missing}: expected input_ids, attention_mask "
                     "and optionally token_type_ids, as a tokenizer returns them")
  input_ids = np.asarray(encoding["input_ids"], np.int32)
  mask = np.asarray(encoding["attention_mask"])
  token_type_ids = encoding.get("token_type_ids")
  token_type_ids = (np.zeros_like(input_ids) if token_type_ids is None
                    else np.asarray(token_type_ids, np.int32))
  if input_ids.ndim != 2 or len({input_ids.shape, mask.shape, token_type_ids.shape}) != 1:
    raise ValueError(f"input_ids {input_ids.shape}, attention_mask {mask.shape} and "
                     f"token_type_ids {token_type_ids.shape} must share one [B, T] shape")
  if not np.isin(mask, (0, 1)).all():
    raise ValueError("attention_mask must hold only 0 and 1")
  # A signed dtype for the padding check: uint8 differences wrap (0 - 1 = 255) and bool ones
  # are xor, so either would see a right-padded row's 1 -> 0 step as a rise.
  mask = mask.astype(np.int32)
  if not (mask[:, 0] == 1).all() or (np.diff(mask, axis=1) > 0).any():
    raise ValueError("every row must start with a real token and be padded on the right "
                     "(tokenizer.padding_side = 'right')")
  rows, length = input_ids.shape
  return {"input_ids": input_ids, "token_type_ids": token_type_ids,
          "position_ids": np.tile(np.arange(length, dtype=np.int32), (rows, 1)),
          "segment_ids": mask,
          "cls_index": np.arange(rows, dtype=np.int32) * length}
