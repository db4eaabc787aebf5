"""Padded and packed batches: content, structure, order, resumption, coverage, efficiency."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from cwgnc_jax.data import batching, glue

CLS, SEP = 101, 102
T = 64


def synthetic(num_examples, *, seed=0, max_len=T):
  """Example i is [CLS] a.. [SEP] b.. [SEP] with the token 1000 + i inside, types 0 / 1."""
  rng = np.random.default_rng(seed)
  ids, types = [], []
  for i in range(num_examples):
    a, b = rng.integers(1, max_len // 2 - 2, size=2)
    ids.append([CLS] + [1000 + i] * a + [SEP] + [1000 + i] * b + [SEP])
    types.append([0] * (a + 2) + [1] * (b + 1))
  offsets = np.concatenate([[0], np.cumsum([len(x) for x in ids])])
  return glue.TokenizedSplit(np.concatenate(ids).astype(np.int32),
                             np.concatenate(types).astype(np.int32), offsets,
                             rng.integers(0, 2, num_examples).astype(np.int32))


def unpack(batch):
  """Per real example of the batch: (input_ids, token_type_ids) read through cls_index."""
  seq_len = batch["input_ids"].shape[1]
  examples = []
  for b in np.flatnonzero(batch["example_mask"]):
    row, col = divmod(int(batch["cls_index"][b]), seq_len)
    where = batch["segment_ids"][row] == batch["segment_ids"][row, col]
    assert batch["segment_ids"][row, col] > 0 and batch["position_ids"][row, col] == 0
    examples.append((tuple(batch["input_ids"][row, where]),
                     tuple(batch["token_type_ids"][row, where])))
  return examples


def sequences(data, indices):
  return [tuple(map(tuple, data.example(i))) for i in indices]


def test_steps_per_epoch_keeps_the_last_partial_batch():
  assert batching.steps_per_epoch(32, 16) == 2
  assert batching.steps_per_epoch(33, 16) == 3
  with pytest.raises(ValueError, match="batch_size > 0"):
    batching.steps_per_epoch(10, 0)


@pytest.mark.parametrize("row_multiple", [1, 4])
def test_packed_batch_holds_each_example_once_with_correct_structure(row_multiple):
  data = synthetic(40)
  indices = np.array([7, 3, 30, 12, 0, 25, 19, 8, 33, 5, 11, 21, 39, 2, 16, 27])
  batch = batching.make_batch(data, indices, 16, layout="packed", max_length=T,
                              row_multiple=row_multiple)
  rows = batch["input_ids"].shape[0]
  assert batch["input_ids"].shape[1] == T
  assert rows in batching.packed_row_counts(16, row_multiple)
  assert rows % max(row_multiple, 2) == 0 and rows < 16
  assert unpack(batch) == sequences(data, indices)  # example b at slot b, exactly once
  np.testing.assert_array_equal(batch["labels"], data.labels[indices])
  np.testing.assert_array_equal(batch["example_mask"], np.ones(16))
  assert (batch["segment_ids"] > 0).sum() == data.lengths[indices].sum()
  for r in range(rows):
    seg, pos = batch["segment_ids"][r], batch["position_ids"][r]
    real = seg[seg > 0]
    # Segments 1..k lie end to end from column 0, each with positions 0..n-1.
    assert (seg[:len(real)] > 0).all() and (seg[len(real):] == 0).all()
    assert np.array_equal(np.unique(real), np.arange(1, real.max() + 1 if real.size else 1))
    assert (np.diff(real) >= 0).all()
    for k in np.unique(real):
      np.testing.assert_array_equal(pos[seg == k], np.arange((seg == k).sum()))
      assert batch["input_ids"][r][seg == k][0] == CLS
    assert (batch["input_ids"][r][seg == 0] == 0).all()


def test_padded_batch_is_one_example_per_row():
  data = synthetic(20)
  indices = np.arange(5, 12)
  batch = batching.make_batch(data, indices, 8, layout="padded", max_length=T)
  assert batch["input_ids"].shape == (8, T)
  np.testing.assert_array_equal(batch["cls_index"], np.arange(8) * T)
  np.testing.assert_array_equal(batch["example_mask"], [1] * 7 + [0])
  np.testing.assert_array_equal((batch["segment_ids"] > 0).sum(1),
                                [*data.lengths[indices], 0])
  assert set(np.unique(batch["segment_ids"])) == {0, 1}
  assert unpack(batch) == sequences(data, indices)


def test_bad_batches_are_refused():
  data = synthetic(20)
  with pytest.raises(ValueError, match="does not fit max_length 16"):
    batching.make_batch(data, np.arange(4), 4, layout="packed", max_length=16)
  with pytest.raises(ValueError, match="unknown layout 'ragged'"):
    batching.make_batch(data, np.arange(4), 4, layout="ragged", max_length=T)
  with pytest.raises(ValueError, match="not a multiple of row_multiple 3"):
    batching.make_batch(data, np.arange(4), 4, layout="padded", max_length=T, row_multiple=3)


def tokenizer_padded(data, indices):
  """What a tokenizer returns for ``padding=True``: the examples right-padded with 0 to the
  longest, an attention mask, token types."""
  length = data.lengths[indices].max()
  encoding = {key: np.zeros((len(indices), length), np.int64)
              for key in ("input_ids", "token_type_ids", "attention_mask")}
  for row, i in enumerate(indices):
    ids, types = data.example(i)
    encoding["input_ids"][row, :len(ids)] = ids
    encoding["token_type_ids"][row, :len(ids)] = types
    encoding["attention_mask"][row, :len(ids)] = 1
  return encoding


def test_inputs_from_padded_is_the_padded_layout():
  data = synthetic(20)
  indices = np.arange(3, 9)
  encoding = tokenizer_padded(data, indices)
  length = encoding["input_ids"].shape[1]
  inputs = batching.inputs_from_padded({k: v.tolist() for k, v in encoding.items()})
  padded = batching.make_batch(data, indices, len(indices), layout="padded", max_length=length)
  assert set(inputs) == {"input_ids", "token_type_ids", "position_ids", "segment_ids",
                         "cls_index"}
  for key in ("input_ids", "token_type_ids", "segment_ids", "cls_index"):
    np.testing.assert_array_equal(inputs[key], padded[key], err_msg=key)
    assert inputs[key].dtype == np.int32
  real = encoding["attention_mask"] == 1
  np.testing.assert_array_equal(inputs["position_ids"][real], padded["position_ids"][real])
  np.testing.assert_array_equal(inputs["position_ids"][1], np.arange(length))  # as HF BERT
  del encoding["token_type_ids"]  # optional, 0 as in HF
  np.testing.assert_array_equal(batching.inputs_from_padded(encoding)["token_type_ids"], 0)


@pytest.mark.parametrize("dtype", [np.uint8, np.bool_])
def test_inputs_from_padded_takes_unsigned_and_bool_masks(dtype):
  """A right-padded mask of any 0/1 dtype gives the inputs an int64 mask gives (uint8's
  differences wrap and bool's are xor: neither may read the 1 -> 0 step as a rise)."""
  encoding = tokenizer_padded(synthetic(20), np.arange(3, 9))
  assert not encoding["attention_mask"].all()  # some rows are padded
  expected = batching.inputs_from_padded(encoding)
  inputs = batching.inputs_from_padded(
      {**encoding, "attention_mask": encoding["attention_mask"].astype(dtype)})
  assert set(inputs) == set(expected)
  for key, value in expected.items():
    np.testing.assert_array_equal(inputs[key], value, err_msg=key)
    assert inputs[key].dtype == np.int32, key


@pytest.mark.parametrize("change, problem", [
    (lambda e: e.pop("attention_mask"), r"lacks \['attention_mask'\]"),
    (lambda e: e.update(attention_mask=e["attention_mask"][:, 1:]), "must share one"),
    (lambda e: e.update(attention_mask=2 * e["attention_mask"]), "only 0 and 1"),
    (lambda e: e.update(attention_mask=e["attention_mask"][:, ::-1]), "padded on the right"),
])
def test_inputs_from_padded_refuses_other_batches(change, problem):
  encoding = tokenizer_padded(synthetic(4), np.arange(4))
  change(encoding)
  with pytest.raises(ValueError, match=problem):
    batching.inputs_from_padded(encoding)


def test_order_depends_on_seed_and_epoch_only():
  first = batching.epoch_order(100, seed=1, epoch=0)
  np.testing.assert_array_equal(first, batching.epoch_order(100, seed=1, epoch=0))
  assert sorted(first) == list(range(100))
  assert not np.array_equal(first, batching.epoch_order(100, seed=1, epoch=1))
  assert not np.array_equal(first, batching.epoch_order(100, seed=2, epoch=0))
  # The orders themselves, printed once (numpy 2's PCG64 seeded with [seed, epoch]): a run
  # resumes from a checkpoint by replaying them, so a change of shuffle, which would make old
  # runs resume on other batches, fails here.
  assert first[:12].tolist() == [48, 8, 16, 81, 6, 99, 38, 5, 55, 34, 20, 67]
  assert batching.epoch_order(100, seed=1, epoch=1)[:12].tolist() == [
      64, 9, 16, 11, 44, 78, 41, 10, 4, 32, 52, 91]
  assert batching.epoch_order(100, seed=2, epoch=0)[:12].tolist() == [
      90, 92, 7, 14, 47, 10, 52, 56, 91, 84, 69, 34]
  assert batching.epoch_order(10, seed=1, epoch=0).tolist() == [8, 4, 7, 0, 1, 2, 5, 9, 6, 3]


def test_start_step_resumes_the_same_sequence():
  data = synthetic(50)
  kwargs = dict(seed=3, epoch=2, layout="packed", max_length=T, row_multiple=2)
  full = list(batching.train_batches(data, 8, **kwargs))
  resumed = list(batching.train_batches(data, 8, start_step=4, **kwargs))
  assert len(full) == 7 and len(resumed) == 3
  for x, y in zip(full[4:], resumed):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])
  with pytest.raises(ValueError, match="start_step 8 outside"):
    next(batching.train_batches(data, 8, start_step=8, **kwargs))


@pytest.mark.parametrize("batch_size", [1, 7, 16, 64])
@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_eval_covers_every_example_once_in_order(batch_size, layout):
  data = synthetic(37)
  batches = list(batching.eval_batches(data, batch_size, layout=layout, max_length=T))
  assert len(batches) == batching.steps_per_epoch(37, batch_size)
  assert all(len(b["labels"]) == batch_size for b in batches)
  assert [s for b in batches for s in unpack(b)] == sequences(data, range(37))
  labels = np.concatenate([b["labels"][b["example_mask"] == 1] for b in batches])
  np.testing.assert_array_equal(labels, data.labels)
  assert sum(b["example_mask"].sum() for b in batches) == 37
  # One shape for the whole evaluation: a packed batch is padded to the largest's rows.
  assert len({b["input_ids"].shape for b in batches}) == 1
  if layout == "packed" and batch_size == 16:
    rows = [len(batching.first_fit(data.lengths[i:i + 16], T)) for i in range(0, 37, 16)]
    assert len(set(rows)) > 1  # the batches alone would have had several shapes


def test_packing_efficiency_counts_real_tokens():
  data = synthetic(16)
  batch = batching.make_batch(data, np.arange(16), 16, layout="padded", max_length=T)
  assert batching.packing_efficiency(batch) == pytest.approx(data.lengths.sum() / (16 * T))


@pytest.fixture(scope="module")
def real_train(glue_dir, minilm_dir, tmp_path_factory):
  import transformers  # pylint: disable=import-outside-toplevel  # a dependency: never skip
  tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_dir)
  cache = tmp_path_factory.mktemp("cache")
  return {task: glue.load_tokenized(task, "train", tokenizer, source=glue_dir, cache_dir=cache)
          for task in ("rte", "cola")}


@pytest.mark.real
def test_real_rte_epoch_same_examples_per_step_in_both_layouts(real_train):
  data = real_train["rte"]
  kwargs = dict(seed=5, epoch=1, max_length=128)
  padded = list(batching.train_batches(data, 16, layout="padded", **kwargs))
  packed = list(batching.train_batches(data, 16, layout="packed", row_multiple=2, **kwargs))
  assert len(padded) == len(packed) == 156  # 2490 / 16 = 155.6
  for p, q in zip(padded, packed):
    assert unpack(p) == unpack(q)
    np.testing.assert_array_equal(p["labels"], q["labels"])
    assert q["input_ids"].shape[0] <= 16
  seen = collections.Counter(s for b in packed for s in unpack(b))
  assert seen == collections.Counter(sequences(data, range(len(data))))


@pytest.mark.real
@pytest.mark.parametrize("task, step, min_gain, min_efficiency",
                         [("rte", 0, 1.6, 0.8), ("cola", 0, 7.9, 0.65),
                          ("rte", 32, 1.6, 0.8), ("cola", 32, 9.7, 0.85)])
def test_real_packing_gain(real_train, task, step, min_gain, min_efficiency):
  """Measured (batches of 16, max_length 128, rows rounded to even), rows of 128: RTE 1.65x,
  CoLA 8.0x (CoLA's 16 examples hold ~180 tokens, so two rows of 128 is the floor). Rows
  of the fewest slots (``row_length_step`` 32, the config default): RTE 1.66x (its batches
  hold a 128-token example), CoLA 9.8x, 88% real tokens (mostly 2 rows of 96)."""
  data = real_train[task]
  kwargs = dict(max_length=128, row_length_step=step)
  assert batching.padded_over_packed(data, 16, seed=0, **kwargs) >= min_gain
  batches = batching.train_batches(data, 16, seed=0, epoch=0, layout="packed", **kwargs)
  assert np.mean([batching.packing_efficiency(b) for b in batches]) >= min_efficiency


def test_packed_rows_take_the_length_of_fewest_slots():
  """With ``row_length_step`` the row length is the candidate (a multiple of the step from
  the longest example up, or max_length) whose packing has the fewest slots R * T, the
  shortest of equals; the content and structure are those of any packed batch."""
  data = synthetic(64, seed=3, max_len=24)  # examples of 5-25 tokens, rows of up to 64
  shapes = set()
  for start in range(0, 64, 16):
    indices = np.arange(start, start + 16)
    lengths = data.lengths[indices]
    batch = batching.make_batch(data, indices, 16, layout="packed", max_length=T,
                                row_length_step=16)
    rows, length = batch["input_ids"].shape
    shapes.add((rows, length))
    slots = {t: -(-len(batching.first_fit(lengths, t)) // 2) * 2 * t
             for t in (16, 32, 48, 64) if t >= lengths.max()}
    assert rows * length == min(slots.values())
    assert length == min(t for t, n in slots.items() if n == rows * length)
    fixed = batching.make_batch(data, indices, 16, layout="packed", max_length=T)
    assert fixed["input_ids"].shape[1] == T and rows * length <= fixed["input_ids"].size
    assert unpack(batch) == sequences(data, indices)
    assert (batch["segment_ids"] > 0).sum() == lengths.sum()
  assert any(length < T for _, length in shapes)
  assert batching.packed_row_lengths(T, 16) == [16, 32, 48, 64]
  assert batching.packed_row_lengths(T) == [T]
  with pytest.raises(ValueError, match="row_length_step >= 0"):
    batching.make_batch(data, np.arange(4), 4, layout="packed", max_length=T, row_length_step=-1)


def test_stacked_batches_of_different_row_lengths_keep_every_example():
  data = synthetic(32, seed=4, max_len=24)
  short = batching.make_batch(data, np.arange(8), 8, layout="packed", max_length=T,
                              row_length_step=16)
  long = batching.make_batch(data, np.arange(8, 16), 8, layout="packed", max_length=T)
  assert short["input_ids"].shape[1] < long["input_ids"].shape[1]
  stacked = batching.stack_batches([short, long])
  assert stacked["input_ids"].shape[1:] == (max(short["input_ids"].shape[0],
                                               long["input_ids"].shape[0]), T)
  for s, original in enumerate((short, long)):
    seed_batch = {key: value[s] for key, value in stacked.items()}
    assert unpack(seed_batch) == unpack(original)


def test_seeds_stacked_together_are_packed_at_the_row_length_of_fewest_stacked_slots():
  """``train_batches_together``: each seed's step holds the examples ``train_batches`` gives
  it, all at one row length, the candidate whose stacked array (the most rows any seed needs
  at that length, rounded to even, times the length) is smallest; so never more slots than
  stacking batches packed alone, and fewer where their lengths differ."""
  data = synthetic(96, seed=6, max_len=32)  # examples of 5-33 tokens, rows of up to 64
  seeds, kwargs = (1, 2, 3), dict(epoch=0, layout="packed", max_length=T, row_length_step=16)
  alone = {seed: list(batching.train_batches(data, 16, seed=seed, **kwargs)) for seed in seeds}
  gained = 0
  for step, batches in enumerate(batching.train_batches_together([data] * 3, seeds, 16,
                                                                 **kwargs)):
    lengths = {batch["input_ids"].shape[1] for batch in batches}
    assert len(lengths) == 1
    for seed, batch in zip(seeds, batches):
      assert unpack(batch) == unpack(alone[seed][step])  # the same examples, in slot order
    per_seed = [data.lengths[batching.epoch_order(96, seed=seed, epoch=0)[16 * step:
                                                                        16 * (step + 1)]]
                for seed in seeds]
    slots = {t: max(-(-len(batching.first_fit(l, t)) // 2) * 2 for l in per_seed) * t
             for t in (16, 32, 48, 64) if t >= max(l.max() for l in per_seed)}
    stacked = batching.stack_batches(batches)["input_ids"][0].size
    assert stacked == min(slots.values())
    separately = batching.stack_batches([alone[seed][step] for seed in seeds])
    assert stacked <= separately["input_ids"][0].size
    gained += separately["input_ids"][0].size - stacked
  assert gained > 0
