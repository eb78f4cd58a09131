"""Look inside attention: record exact weights from any backend, measure them, rank and prune heads.

- `record` (with `Recording`): ``with record(model) as rec: model(x)`` gives
  ``rec.weights``, one ``(B, H, Nq, Nk)`` tensor per attention layer in forward
  order, exact whichever backend ran the pass; ``layers=``, ``heads=``,
  ``rows=`` restrict what is kept (and computed); ``keep="calls"`` keeps each call's
  inputs instead (`RecordedCall`), whose weights are computed when asked, a block of
  rows at a time, and `summarize_rows` reduces them to each row's top keys: long
  inputs without any ``(H, N, N)`` tensor.
- Metrics: `entropy` (nats per query row), `mean_distance` (tokens per query
  row), `rollout` (Abnar & Zuidema 2020, with the residual term).
- Heads: `head_importance` (Michel et al. 2019: ``|∂loss/∂head_mask|``),
  `rank_heads`, `prune_least_important`, and `prune_heads` (= `qkv.nn.prune_heads`).

Layer numbers are the same everywhere: the model's `qkv.nn.MultiHeadAttention`
modules in ``model.modules()`` order.

A transformers model on ``attn_implementation="qkv"`` is read too, once ``import qkv.hf``
has run (it registers them with `qkv.interpret.sources`; this package never imports it):
`record` gives the same `Recording` (``layers`` numbered as `qkv.hf.attention_modules`
lists them, ``heads`` its query heads; ``keep="calls"`` gives `qkv.hf.record.TransformersCall`,
an `AttentionCall` like `RecordedCall`), and the metrics and `summarize_rows` read it as
they read qkv's. `head_importance` reads it too: each head's output is multiplied by a mask
held at 1 inside the attention function, whose gradient is the importance.
`prune_least_important` needs qkv's own modules (heads that can be cut out of the
projections); given a transformers model it says so.
Before ``import qkv.hf``, `record` refuses a transformers model with a `qkv.ModelError`
that names the import.

>>> import torch
>>> import qkv.interpret
>>> from qkv.nn import MultiHeadAttention
>>> mha = MultiHeadAttention(16, 2, backend="sdpa").eval()
>>> x = torch.randn(1, 4, 16)
>>> with qkv.interpret.record(mha) as rec:
...     _ = mha(x, causal=True)
>>> qkv.interpret.entropy(rec.weights[0])[0, 0, 0]       # the first query sees one key
tensor(0.)
"""

from qkv.interpret.calls import AttentionCall, RecordedCall
from qkv.interpret.importance import head_importance, prune_least_important, rank_heads
from qkv.interpret.metrics import entropy, mean_distance, rollout
from qkv.interpret.record import Recording, record
from qkv.interpret.summary import RowSummary, summarize_rows
from qkv.nn.pruning import prune_heads

__all__ = [
    "AttentionCall",
    "RecordedCall",
    "Recording",
    "RowSummary",
    "entropy",
    "head_importance",
    "mean_distance",
    "prune_heads",
    "prune_least_important",
    "rank_heads",
    "record",
    "rollout",
    "summarize_rows",
]
