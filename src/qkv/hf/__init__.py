"""Any transformers model on qkv attention: ``import qkv.hf`` and ``attn_implementation="qkv"``.

>>> import torch, qkv.hf
>>> from transformers import LlamaConfig, LlamaForCausalLM
>>> cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
...                   num_attention_heads=4, num_key_value_heads=2)
>>> model = LlamaForCausalLM._from_config(cfg, attn_implementation="qkv").eval()
>>> out = model(torch.tensor([[1, 5, 7, 9, 2]]), output_attentions=True)
>>> len(out.attentions), tuple(out.attentions[0].shape)      # exact probabilities, every layer
(2, (1, 4, 5, 5))

- `register` (called on import) puts `attention_forward` into transformers' ``AttentionInterface``
  and `mask_interface` into its ``AttentionMaskInterface`` under ``"qkv"``.
- `mask_interface` turns transformers' mask rules into `qkv.masks` objects that keep their
  structure (causal, sliding window, chunked, padding, packed sequences).
- ``output_attentions=True`` gives the exact probabilities of the pass; `record` keeps only the
  layers, heads and query rows asked for. Importing this module also registers transformers
  models with `qkv.interpret.record` (`qkv.hf.record.SOURCE`): ``qkv.interpret.record(model)``
  reads them as it reads qkv's own modules, with the same `Recording`.

Importing this module imports transformers; without it, it raises `qkv.hf.ModelError` saying
``pip install transformers``.
"""

from qkv.hf._transformers import ModelError, require_transformers

require_transformers()

from qkv.hf.attention import attention_forward
from qkv.hf.masks import mask_interface, structured_mask
from qkv.hf.record import SOURCE, Recording, attention_modules, record
from qkv.hf.registration import NAME, register
from qkv.interpret import sources

register()
sources.register(SOURCE)

__all__ = [
    "NAME",
    "ModelError",
    "Recording",
    "attention_forward",
    "attention_modules",
    "mask_interface",
    "record",
    "register",
    "structured_mask",
]
