"""Shared defaults of every training config, and the Table 1 rows.

The paper's setting (SPEC section 2): BERT-large-uncased, maximum length 128, batch 16,
dropout 0.1. ``table1(task, method)`` is one row of Table 1 on one task: the method's whole
row (optimizer, epochs, evaluation, Mixout p) comes from ``cwgnc_jax.methods``.

Batches are packed by default (several examples per row, block-diagonal attention,
positions restarting per example): the same computation as padding each example to 128
tokens, without the padding (RTE 1.9x fewer tokens, CoLA 11x), in rows of 128 tokens or of
the shorter multiple of ``row_length_step`` that takes the fewest slots. ``layout='padded'``
gives the reference layout.
"""

from ml_collections import config_dict

from cwgnc_jax import metrics, methods


def get_config() -> config_dict.ConfigDict:
  """Every key a run reads, at the paper's values (CWGNC on RTE)."""
  # A new key that is not operational enters the run identity: its value before it existed
  # goes in ``cwgnc_jax.identity.LATER_KEYS``, or every earlier run directory is refused.
  config = config_dict.ConfigDict()
  # What is trained, on what.
  config.model = "google-bert/bert-large-uncased"  # a short name, a folder or a hub id
  config.task = "rte"
  config.glue_dir = config_dict.placeholder(str)  # None: $GLUE_DIR, else the hub
  config.train_limit = config_dict.placeholder(int)  # first N train examples (trials)
  config.max_length = 128
  config.dtype = "float32"  # compute dtype; parameters stay float32 (docs/performance.md: bfloat16)
  # How: the method's row (methods.apply sets these five together).
  config.method = ""
  config.optimizer = config_dict.ConfigDict()
  config.num_epochs = 0
  config.evals_per_epoch = 1
  config.keep_best = False  # True: the result is the best dev evaluation (Mosbach et al.)
  config.seed = 1
  config.batch_size = 16
  config.eval_batch_size = 32
  config.layout = "packed"
  # Packed rows are max_length long, or a shorter multiple of this where that takes fewer
  # token slots (16 CoLA sentences: 2 rows of 96, not of 128); 0: always max_length. Each
  # row length is a batch shape of its own, compiled once: a small step compiles many.
  config.row_length_step = 32
  # Dropout's keep masks: 'hash' (a keyed integer hash; a MiniLM step in 0.95x the time) or
  # 'threefry' (jax.random.bernoulli's masks, bit for bit). Same distribution, other masks.
  config.dropout_bits = "hash"
  # The last layer computes the [CLS] tokens alone, all the head reads (a MiniLM-L6 RTE step
  # in 0.88x the time); False: every token, as HF does. The same logits up to float rounding.
  config.cls_only_last_layer = True
  # The exact GELU: 'erf' (PyTorch's form, HF BERT's 'gelu'; 0.64x the time on XLA:CPU) or
  # 'erfc' (jax.nn.gelu's). The same function up to float rounding.
  config.gelu = "erf"
  # A failed run: dev score <= the majority classifier's ('majority', the paper) or <= the
  # released code's fixed thresholds ('released': RTE 53, MRPC 75, CoLA 0).
  config.failure_rule = metrics.FAILURE_RULES[0]
  # Gradual unfreezing (cwgnc_jax/unfreezing.py): 'none', 'gu' or 'gu_restart'. Under GU the
  # run trains iterations x epochs_per_iteration epochs, and num_epochs must be None.
  config.unfreezing = config_dict.ConfigDict({
      "mode": "none",
      "iterations": config_dict.placeholder(int),  # None: L + 1 (the last one trains all)
      "epochs_per_iteration": 3,  # Fig. 1
  })
  # Mixout (cwgnc_jax/models/mixout.py): p > 0 mixes every dense layer toward its pretrained
  # weight and sets every dropout rate to 0; gradient 'reference' (bloodwass/mixout) or
  # 'autodiff' (1/(1-p) times larger).
  config.mixout = config_dict.ConfigDict({"p": 0.0, "gradient": "reference"})
  # Where it runs and what it saves (may change when a run is resumed).
  # seeds: groups of devices that seeds trained together are split over (a study's
  # --seeds-per-program); data, fsdp: within each group; -1: the remaining devices.
  config.mesh = config_dict.ConfigDict({"seeds": 1, "data": -1, "fsdp": 1})
  config.fsdp_min_size = 2**18  # parameters with fewer entries are replicated
  config.distributed = False  # jax.distributed.initialize() (also on $JAX_COORDINATOR_ADDRESS)
  config.checkpoint_every = 500  # steps; 0 = only at evaluations (each epoch's end by default)
  config.keep_checkpoints = 2
  config.resume_step = config_dict.placeholder(int)  # None: the latest checkpoint
  config.log_every = 10
  config.diagnostics_every = 10  # steps between gradient-norm records (grad_norms.npz); 0: off
  config.progress = True
  # Tokenized data (and compiled steps, below); None: $CWGNC_CACHE, else ~/.cache/cwgnc_jax.
  config.cache_dir = config_dict.placeholder(str)
  # Compiled steps kept in <cache_dir>/xla (or $JAX_COMPILATION_CACHE_DIR): a run whose batch
  # shapes an earlier run compiled loads them (run.use_compilation_cache); False: compile all.
  config.compilation_cache = True
  methods.apply(config, "cwgnc")
  return config


def gradual_unfreezing(task: str, mode: str) -> config_dict.ConfigDict:
  """The paper's Fig. 1 setting on ``task``: ``mode`` 'gu' or 'gu_restart' with AdamW with
  bias correction (the paper's strong Devlin et al. baseline), 3 epochs per iteration and
  ``L + 1`` iterations (the last trains everything)."""
  config = table1(task, "adamw")
  config.num_epochs = None
  config.unfreezing.mode = mode
  return config


def table1(task: str, method: str) -> config_dict.ConfigDict:
  """The Table 1 row ``method`` (a name of ``cwgnc_jax.methods``) on ``task``."""
  config = get_config()
  config.task = task
  methods.apply(config, method)
  return config
