"""The paper's Table 1, for the report to show beside ours (never to compare number for number).

Yang and Ma, "Improving Stability of Fine-Tuning Pretrained Language Models via Component-Wise
Gradient Norm Clipping", Table 1 (``../shared/paper/cwgnc-paper.md``; SPEC section 3): dev-set
Std / Mean / Max (x100) of BERT-large-uncased (335M parameters), RTE accuracy, MRPC F1, CoLA
MCC. CWGNC's row is over 25 runs (the paper's section 4); the baselines' run counts are not
stated, and no failed-run rates are given. Our runs fine-tune another model at another scale
(MiniLM-L6, 22.7M parameters, at the learning rates of ``table1.LEARNING_RATES``).
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

MODEL = "BERT-large-uncased"
SOURCE = "Yang and Ma, Table 1"

# Method (``cwgnc_jax.methods``) -> task -> (Std, Mean, Max).
TABLE1: Mapping[str, Mapping[str, tuple[float, float, float]]] = MappingProxyType({
    "bertadam": {"rte": (4.5, 50.9, 67.5), "mrpc": (3.9, 84.0, 91.2),
                 "cola": (25.6, 45.6, 64.6)},
    "adamw": {"rte": (4.0, 70.6, 75.5), "mrpc": (2.1, 89.2, 92.2), "cola": (11.1, 59.2, 64.1)},
    "mixout": {"rte": (7.9, 65.3, 74.4), "mrpc": (3.8, 87.8, 91.8), "cola": (20.9, 51.9, 64.0)},
    "mosbach": {"rte": (2.7, 67.3, 71.1), "mrpc": (0.8, 90.3, 91.7), "cola": (1.8, 62.1, 65.3)},
    "cwgnc": {"rte": (1.3, 73.1, 75.1), "mrpc": (0.6, 90.5, 91.5), "cola": (1.7, 62.2, 65.0)},
})
# The paper's CWGNC threshold: only CWGNC rows at it stand beside the paper's CWGNC row.
CLIP_NORM = 0.05
