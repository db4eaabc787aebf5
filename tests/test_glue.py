"""GLUE tasks, loaders and cached tokenization."""

from __future__ import annotations

import collections
import errno
import re
import time
import warnings

import numpy as np
import pytest

from cwgnc_jax import files, tasks
from cwgnc_jax.data import glue

MRPC_HEADER = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
MRPC_ROWS = [
    "1\t702876\t702977\tAmrozi accused his brother , whom he called \" the witness \" , of "
    "deliberately distorting his evidence .\tReferring to him as only \" the witness \" , "
    "Amrozi accused his brother of deliberately distorting his evidence .\n",
    "0\t2108705\t2108831\tYucaipa owned Dominick 's before selling the chain to Safeway in "
    "1998 for $ 2.5 billion .\tYucaipa bought Dominick 's in 1995 for $ 693 million and sold "
    "it to Safeway for $ 1.8 billion in 1998 .\n",
    "1\t1330381\t1330521\tThey had published an advertisement on the Internet on June 10 , "
    "offering the cargo for sale , he added .\tOn June 10 , the ship 's owners had published "
    "an advertisement on the Internet , offering the explosives for sale .\n",
]


def write(path, text):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text, encoding="utf-8")
  return path


@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
  import transformers  # pylint: disable=import-outside-toplevel  # a dependency: never skip
  return transformers.AutoTokenizer.from_pretrained(minilm_dir)


class CountingTokenizer:
  """Delegates to a tokenizer and counts its calls."""

  def __init__(self, tokenizer):
    self.tokenizer = tokenizer
    self.calls = 0

  def __call__(self, *args, **kwargs):
    self.calls += 1
    return self.tokenizer(*args, **kwargs)

  def __getattr__(self, name):
    return getattr(self.tokenizer, name)


def test_registry_labels_follow_the_hub():
  assert tasks.get_task("RTE").label_names == ("entailment", "not_entailment")
  assert tasks.get_task("mrpc").label_names[1] == "equivalent"
  assert tasks.get_task("CoLA").label_names[1] == "acceptable"
  assert {tasks.get_task(n).num_labels for n in ("rte", "mrpc", "cola")} == {2}
  assert [tasks.get_task(n).metric for n in ("rte", "mrpc", "cola")] == ["accuracy", "f1", "mcc"]
  assert not tasks.get_task("cola").is_pair and tasks.get_task("rte").is_pair


def test_unknown_task_lists_the_valid_ones():
  with pytest.raises(ValueError,
                     match=r"'stsb'.*\['cola', 'mnli', 'mrpc', 'qnli', 'qqp', 'rte', 'sst2'\]"):
    tasks.get_task("stsb")


@pytest.mark.real
@pytest.mark.parametrize("task, split, counts", [
    ("rte", "train", {0: 1249, 1: 1241}),
    ("rte", "dev", {0: 146, 1: 131}),
    ("cola", "train", {1: 6023, 0: 2528}),
    ("cola", "dev", {1: 721, 0: 322}),
])
def test_real_splits_have_the_published_counts(glue_dir, task, split, counts):
  examples = glue.load_examples(task, split, glue_dir)
  assert collections.Counter(e.label for e in examples) == counts
  assert all(e.text_a for e in examples)
  assert all((e.text_b is None) == (task == "cola") for e in examples)


@pytest.mark.real
def test_real_rte_rows_keep_bare_quotes(glue_dir):
  first = glue.load_examples("rte", "train", glue_dir)[0]
  assert first == glue.Example("No Weapons of Mass Destruction Found in Iraq Yet.",
                               "Weapons of Mass Destruction Found in Iraq.", 1, "train.tsv:2")
  assert any('"' in e.text_a for e in glue.load_examples("rte", "dev", glue_dir))


def test_mrpc_reads_the_published_format_with_a_bom(tmp_path):
  write(tmp_path / "MRPC" / "dev.tsv", MRPC_HEADER + "".join(MRPC_ROWS))
  examples = glue.load_examples("mrpc", "dev", tmp_path)
  assert [e.label for e in examples] == [1, 0, 1]
  assert examples[0].text_a.startswith("Amrozi accused his brother , whom he called \" the")
  assert examples[1].text_b.endswith("for $ 1.8 billion in 1998 .")
  assert examples[2].id == "dev.tsv:4"


# The published test layouts (MRPC's file starts with a byte-order mark), with made-up rows.
TEST_FILES = {
    "rte": "index\tsentence1\tsentence2\n"
           "0\tThe museum opened in 1902 and \"houses\" paintings.\tThe museum holds art.\n"
           "1\tHe sold the farm in May.\tHe bought a farm.\n",
    "mrpc": "\ufeffindex\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
            "0\t1089874\t1089925\tThe shares rose 5 percent .\tShares gained 5 percent .\n"
            "1\t3019446\t3019327\tThe vote was delayed .\tThe council met on Tuesday .\n",
    "cola": "index\tsentence\n0\tThe book was read by Mary.\n1\tRead Mary the book was.\n",
}


@pytest.mark.parametrize("task", sorted(TEST_FILES))
def test_test_files_give_their_index_and_unlabelled_examples(tmp_path, task):
  path = write(tmp_path / "test.tsv", TEST_FILES[task])
  indices, examples = glue.read_test_tsv(tasks.get_task(task), path)
  assert indices == ["0", "1"]
  assert [e.label for e in examples] == [glue.NO_LABEL] * 2
  assert examples[1].id == "test.tsv:3"
  first = {"rte": ('The museum opened in 1902 and "houses" paintings.', "The museum holds art."),
           "mrpc": ("The shares rose 5 percent .", "Shares gained 5 percent ."),
           "cola": ("The book was read by Mary.", None)}[task]
  assert (examples[0].text_a, examples[0].text_b) == first


@pytest.mark.parametrize("text, problem", [
    ("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n",  # RTE dev layout
     ":1: header ['index', 'sentence1', 'sentence2', 'label'] is not the RTE test header "
     "['index', 'sentence1', 'sentence2']"),
    ("index\tsentence1\tsentence2\n0\tonly one\n", ":2: 2 columns, expected 3 for a RTE test"),
    ("index\tsentence1\tsentence2\nx7\ta\tb\n", ":2: index 'x7' is not a non-negative int"),
    ("index\tsentence1\tsentence2\n", " holds no examples below its header"),
])
def test_a_file_that_is_not_a_test_file_is_named(tmp_path, text, problem):
  path = write(tmp_path / "test.tsv", text)
  with pytest.raises(ValueError, match=re.escape(f"{path}{problem}")):
    glue.read_test_tsv(tasks.get_task("rte"), path)


def test_glue_dir_is_the_default_source(tmp_path, monkeypatch):
  write(tmp_path / "MRPC" / "train.tsv", MRPC_HEADER + MRPC_ROWS[0])
  monkeypatch.setenv("GLUE_DIR", str(tmp_path))
  assert [e.label for e in glue.load_examples("mrpc", "train")] == [1]


@pytest.mark.parametrize("row, problem", [
    ("1\t1\t2\tonly three strings\n", "4 columns, expected 5"),
    ("yes\t1\t2\ta\tb\n", "unknown label 'yes'"),
])
def test_malformed_row_names_file_and_line(tmp_path, row, problem):
  path = write(tmp_path / "MRPC" / "train.tsv", MRPC_HEADER + MRPC_ROWS[0] + row)
  with pytest.raises(ValueError, match=f"{path}:3: {problem}"):
    glue.load_examples("mrpc", "train", tmp_path)


def one_line_error(error_type, call, *args, **kwargs) -> str:
  """The message of the ``error_type`` that ``call`` raises, checked to be one line."""
  with pytest.raises(error_type) as error:
    call(*args, **kwargs)
  assert "\n" not in str(error.value)
  return str(error.value)


@pytest.mark.parametrize("mark", [b"", b"\xef\xbb\xbf"])
def test_text_that_is_not_utf8_names_file_and_line(tmp_path, mark):
  """A Latin-1 file (after a UTF-8 mark or none): the line of the first bad byte."""
  path = tmp_path / "MRPC" / "dev.tsv"
  path.parent.mkdir()
  text = MRPC_HEADER.lstrip("\ufeff") + MRPC_ROWS[0] + "1\t1\t2\tna\u00efve\tb\n"
  path.write_bytes(mark + text.encode("latin-1"))
  message = one_line_error(ValueError, glue.load_examples, "mrpc", "dev", tmp_path)
  assert message.startswith(f"{path}:3: not UTF-8 (byte 0xef): GLUE files are UTF-8 text; "
                            "convert the file to UTF-8")


def test_a_field_the_csv_module_refuses_names_file_and_line(tmp_path):
  path = write(tmp_path / "RTE" / "dev.tsv", "index\tsentence1\tsentence2\tlabel\n"
               "0\ta\tb\tentailment\n" f"1\t{'x' * 200_000}\tb\tentailment\n")
  message = one_line_error(ValueError, glue.load_examples, "rte", "dev", tmp_path)
  assert message.startswith(f"{path}:3: field larger than field limit")


@pytest.mark.parametrize("row, encoding, problem", [
    ("2\tna\u00efve\tb\n", "latin-1",
     "not UTF-8 (byte 0xef): GLUE files are UTF-8 text; convert the file to UTF-8 (e.g. "
     "iconv -f latin1 -t utf-8)"),
    (f"2\t{'x' * 200_000}\tb\n", "utf-8",
     "field larger than field limit (131072); expected one RTE test example per line"),
], ids=["not-utf8", "huge-field"])
def test_a_test_file_that_cannot_be_read_names_file_and_line(tmp_path, row, encoding, problem):
  """Test files are read as train and dev files are: a Latin-1 row, or a field over the csv
  module's limit, is one line naming the file and the line."""
  path = tmp_path / "test.tsv"
  path.write_bytes((TEST_FILES["rte"] + row).encode(encoding))
  assert (one_line_error(ValueError, glue.read_test_tsv, tasks.get_task("rte"), path)
          == f"{path}:4: {problem}")


def test_wrong_header_names_file(tmp_path):
  path = write(tmp_path / "RTE" / "dev.tsv", "idx\tsentence1\tsentence2\tlabel\n")
  with pytest.raises(ValueError, match=f"{path}:1: header"):
    glue.load_examples("rte", "dev", tmp_path)


def test_paths_of_the_wrong_kind_say_so(tmp_path):
  (tmp_path / "RTE" / "dev.tsv").mkdir(parents=True)
  message = one_line_error(IsADirectoryError, glue.load_examples, "rte", "dev", tmp_path)
  assert message.startswith(f"{tmp_path / 'RTE' / 'dev.tsv'} is a directory, not a file; "
                            "expected the RTE dev split as the file <GLUE_DIR>/RTE/dev.tsv")
  folder = write(tmp_path / "glue", "")
  message = one_line_error(NotADirectoryError, glue.load_examples, "rte", "dev", folder)
  assert message.startswith(f"GLUE folder {folder} is a file, not a folder")


def test_missing_folder_and_file_name_the_path(tmp_path):
  with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'nope'} does not exist.*RTE/dev.tsv"):
    glue.load_examples("rte", "dev", tmp_path / "nope")
  with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'CoLA' / 'train.tsv'} does not"):
    glue.load_examples("cola", "train", tmp_path)
  with pytest.raises(ValueError, match="unknown split 'test'"):
    glue.load_examples("cola", "test", tmp_path)


def test_empty_split_is_an_error(tmp_path):
  path = write(tmp_path / "RTE" / "train.tsv", "index\tsentence1\tsentence2\tlabel\n")
  with pytest.raises(ValueError, match="RTE train split from .* is empty"):
    glue.load_examples("rte", "train", tmp_path)
  write(path, "")
  assert one_line_error(ValueError, glue.load_examples, "rte", "train", tmp_path) == (
      f"RTE train split from {path} is empty: expected a header line, then one example per "
      "line")
  path = write(tmp_path / "CoLA" / "dev.tsv", "")
  assert one_line_error(ValueError, glue.load_examples, "cola", "dev", tmp_path) == (
      f"CoLA dev split from {path} is empty: expected one example per line")


def test_hub_offline_fails_fast_with_one_clear_error(monkeypatch):
  for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HTTPS_PROXY", "https_proxy",
              "ALL_PROXY", "all_proxy"):
    monkeypatch.delenv(var, raising=False)
  monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")
  start = time.monotonic()
  with pytest.raises(ConnectionError, match=r"nyu-mll/glue config 'rte'.*set GLUE_DIR"):
    glue.load_examples("rte", "train", "hub")
  # Fast: no retry loop. The bound is for any host: where no DNS server answers, one failed
  # lookup takes glibc's timeout, 5 s x 2 attempts per server (resolv.conf's defaults), up to
  # 3 servers, so 30 s; 60 s allows that once, and fails a second round of lookups.
  assert time.monotonic() - start < 60


def test_hub_rows_become_examples(monkeypatch):
  datasets = pytest.importorskip("datasets")
  rows = {"validation": [{"sentence": "It rained.", "label": 1, "idx": 0},
                         {"sentence": "Rained it the.", "label": 0, "idx": 1}]}
  calls = []
  monkeypatch.setattr(glue, "_hub_unreachable", lambda: False)
  monkeypatch.setattr(datasets, "load_dataset", lambda *a: calls.append(a) or rows)
  examples = glue.load_examples("cola", "dev", "hub")
  assert calls == [("nyu-mll/glue", "cola")]
  assert examples == [glue.Example("It rained.", None, 1, "0"),
                      glue.Example("Rained it the.", None, 0, "1")]

  def unavailable(*args):
    raise FileNotFoundError("no such dataset in the cache")
  monkeypatch.setattr(datasets, "load_dataset", unavailable)
  with pytest.raises(ConnectionError, match="FileNotFoundError: no such dataset.*GLUE_DIR"):
    glue.load_examples("cola", "dev", "hub")


@pytest.mark.real
def test_tokenize_pairs_and_singles(tokenizer):
  pair = glue.Example("the cat sat", "a dog ran far away", 0, "x")
  single = glue.Example("the cat sat", None, 1, "y")
  data = glue.tokenize([pair], tokenizer, max_length=128)
  ids, types = data.example(0)
  cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
  a = tokenizer("the cat sat", add_special_tokens=False)["input_ids"]
  b = tokenizer("a dog ran far away", add_special_tokens=False)["input_ids"]
  assert ids.tolist() == [cls, *a, sep, *b, sep]
  assert types.tolist() == [0] * (len(a) + 2) + [1] * (len(b) + 1)
  assert glue.tokenize([single], tokenizer).example(0)[0].tolist() == [cls, *a, sep]
  truncated = glue.tokenize([pair], tokenizer, max_length=8)
  assert truncated.lengths.tolist() == [8]
  assert truncated.input_ids[-1] == sep and truncated.labels.tolist() == [0]


@pytest.mark.real
def test_max_length_shorter_than_the_special_tokens_is_refused(tokenizer):
  """The tokenizer would return such examples whole."""
  pair = glue.Example("the cat sat", "a dog ran far away", 0, "x")
  assert glue.tokenize([pair], tokenizer, max_length=3).lengths.tolist() == [3]
  assert one_line_error(ValueError, glue.tokenize, [pair], tokenizer, max_length=2) == (
      "max_length=2 is shorter than the 3 special tokens ([CLS], [SEP]) of an example, below "
      "which the tokenizer cannot truncate")


@pytest.mark.real
def test_folders_under_home_are_expanded(tmp_path, tokenizer, monkeypatch):
  """``~`` in a GLUE folder or a cache folder is the home folder, not a folder named '~'."""
  write(tmp_path / "home" / "glue" / "MRPC" / "dev.tsv", MRPC_HEADER + "".join(MRPC_ROWS))
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  monkeypatch.chdir(tmp_path)
  data = glue.load_tokenized("mrpc", "dev", tokenizer, source="~/glue", cache_dir="~/cache")
  assert data.labels.tolist() == [1, 0, 1]
  assert len(list((tmp_path / "home" / "cache").iterdir())) == 1
  assert not (tmp_path / "~").exists()


@pytest.mark.real
def test_cache_hit_on_second_run(tmp_path, tokenizer, monkeypatch):
  write(tmp_path / "MRPC" / "train.tsv", MRPC_HEADER + "".join(MRPC_ROWS))
  monkeypatch.setenv("CWGNC_CACHE", str(tmp_path / "cache"))
  counting = CountingTokenizer(tokenizer)
  first = glue.load_tokenized("mrpc", "train", counting, source=tmp_path, max_length=32)
  second = glue.load_tokenized("mrpc", "train", counting, source=tmp_path, max_length=32)
  assert counting.calls == 1
  assert len(list((tmp_path / "cache").glob("mrpc-train-32-*.npz"))) == 1
  for x, y in zip(first, second):
    np.testing.assert_array_equal(x, y)
  glue.load_tokenized("mrpc", "train", counting, source=tmp_path, max_length=64)
  assert counting.calls == 2  # another max_length is another cache entry
  write(tmp_path / "MRPC" / "train.tsv", MRPC_HEADER + "".join(MRPC_ROWS[:2]))
  assert len(glue.load_tokenized("mrpc", "train", counting, source=tmp_path,
                                 max_length=32)) == 2
  assert counting.calls == 3  # changed file contents are a miss


@pytest.mark.real
def test_interrupted_write_leaves_no_cache(tmp_path, tokenizer, monkeypatch):
  write(tmp_path / "MRPC" / "dev.tsv", MRPC_HEADER + "".join(MRPC_ROWS))
  cache = tmp_path / "cache"

  def savez_then_crash(file, **arrays):
    file.write(b"PK\x03\x04 half an archive")
    raise KeyboardInterrupt
  with monkeypatch.context() as m:
    m.setattr(np, "savez", savez_then_crash)
    with pytest.raises(KeyboardInterrupt):
      glue.load_tokenized("mrpc", "dev", tokenizer, source=tmp_path, cache_dir=cache)
  assert list(cache.iterdir()) == []
  counting = CountingTokenizer(tokenizer)
  data = glue.load_tokenized("mrpc", "dev", counting, source=tmp_path, cache_dir=cache)
  assert counting.calls == 1 and data.labels.tolist() == [1, 0, 1]
  assert len(list(cache.iterdir())) == 1


CACHE_ADVICE = ("set config.cache_dir (default $CWGNC_CACHE, else ~/.cache/cwgnc_jax) to a "
                "folder you can read and write")


@pytest.mark.real
def test_a_cache_that_is_not_a_folder_is_named(tmp_path, tokenizer):
  write(tmp_path / "MRPC" / "dev.tsv", MRPC_HEADER + "".join(MRPC_ROWS))
  cache = write(tmp_path / "cache", "not a folder")
  message = one_line_error(OSError, glue.load_tokenized, "mrpc", "dev", tokenizer,
                           source=tmp_path, cache_dir=cache)
  assert message == f"the tokenized-data cache {cache} is a file, not a folder: {CACHE_ADVICE}"
  message = one_line_error(OSError, glue.load_tokenized, "mrpc", "dev", tokenizer,
                           source=tmp_path, cache_dir=cache / "tokens")
  assert message == (f"the tokenized-data cache {cache / 'tokens'} cannot be made: a folder "
                     f"on its path is a file: {CACHE_ADVICE}")
  assert cache.read_text() == "not a folder"


@pytest.mark.real
def test_a_cache_that_cannot_be_read_or_written_is_named(tmp_path, tokenizer, monkeypatch):
  """Permissions as a non-root user meets them (root reads and writes everything)."""
  write(tmp_path / "MRPC" / "dev.tsv", MRPC_HEADER + "".join(MRPC_ROWS))
  cache = tmp_path / "cache"

  def denied(path, *args, **kwargs):
    raise PermissionError(errno.EACCES, "Permission denied", str(path))
  with monkeypatch.context() as m:
    m.setattr(files.tempfile, "mkstemp", lambda *a, dir, **k: denied(dir))
    message = one_line_error(OSError, glue.load_tokenized, "mrpc", "dev", tokenizer,
                             source=tmp_path, cache_dir=cache)
  assert message == (f"the tokenized-data cache {cache} cannot be written (Permission "
                     f"denied): {CACHE_ADVICE}")
  glue.load_tokenized("mrpc", "dev", tokenizer, source=tmp_path, cache_dir=cache)
  with monkeypatch.context() as m:
    m.setattr(glue, "open", denied, raising=False)
    message = one_line_error(OSError, glue.load_tokenized, "mrpc", "dev", tokenizer,
                             source=tmp_path, cache_dir=cache)
  assert message == (f"the tokenized-data cache {cache} cannot be read (Permission denied): "
                     f"{CACHE_ADVICE}")


@pytest.mark.real
def test_a_corrupt_cache_file_is_made_again(tmp_path, tokenizer):
  write(tmp_path / "MRPC" / "dev.tsv", MRPC_HEADER + "".join(MRPC_ROWS))
  cache = tmp_path / "cache"
  expected = glue.load_tokenized("mrpc", "dev", tokenizer, source=tmp_path, cache_dir=cache)
  path, = cache.iterdir()
  path.write_bytes(path.read_bytes()[:100])  # cut short by a full disk
  with pytest.warns(UserWarning, match=f"ignoring the unreadable cache file {path} "
                    r"\(BadZipFile: .*\); tokenizing again"):
    data = glue.load_tokenized("mrpc", "dev", tokenizer, source=tmp_path, cache_dir=cache)
  for x, y in zip(data, expected):
    np.testing.assert_array_equal(x, y)
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # made again: read without a warning
    glue.load_tokenized("mrpc", "dev", tokenizer, source=tmp_path, cache_dir=cache)
