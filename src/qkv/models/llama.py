"""A Llama decoder built from `qkv.nn` blocks, loaded from a `LlamaCheckpoint` (a GGUF file read whole).

`LlamaModel` is a `qkv.nn.TransformerDecoder`: pre-norm RMSNorm, half-split RoPE
(the checkpoint's q/k rows are already in that order), grouped-query attention
(query head ``h`` reads kv head ``h // (Hq // Hkv)``), SwiGLU ``down(silu(gate) * up)``,
no biases, a final RMSNorm and an LM head (tied to the token embeddings when the
file has no ``output.weight``, as SmolLM2).

``forward(input_ids, attention_mask=None, *, cache=None)`` returns logits
``(B, N, V)``, HF ``LlamaForCausalLM(...).logits``. ``attention_mask (B, past + N)``
(True / 1 at real tokens, HF's meaning) masks padded keys, e.g. a left-padded batch.

>>> import torch
>>> from qkv.models.gguf_file import LlamaConfig
>>> from qkv.models.llama import LlamaModel
>>> config = LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
...                      num_kv_heads=2, head_dim=8, rope_theta=1e4, rope_dim=8, rms_norm_eps=1e-5,
...                      context_length=64, tie_word_embeddings=True)
>>> lm = LlamaModel(config).eval()
>>> lm(torch.tensor([[3, 1, 4, 1, 5]])).shape                       # (B, N, V)
torch.Size([1, 5, 40])
"""

from __future__ import annotations

from torch import Tensor

from qkv.cache import ModelCache
from qkv.models._build import build_with_weights
from qkv.models.gguf_file import LlamaCheckpoint, LlamaConfig
from qkv.models.packages import ModelError
from qkv.nn import DecoderConfig, TransformerDecoder

__all__ = ["LlamaModel", "llama_state_dict"]


def _decoder_config(c: LlamaConfig) -> DecoderConfig:
    if c.rope_dim != c.head_dim:
        raise ModelError(
            f"config: RoPE on {c.rope_dim} of {c.head_dim} head dims (partial rotary) is not supported; "
            "qkv's Llama rotates every dim of each head"
        )
    if c.rope_scaling:
        raise ModelError(
            f"config: RoPE scaling {c.rope_scaling} is not supported; qkv's Llama uses plain RoPE (no scaling)"
        )
    return DecoderConfig.llama(
        vocab_size=c.vocab_size,
        embed_dim=c.hidden_size,
        num_layers=c.num_layers,
        num_heads=c.num_heads,
        num_kv_heads=c.num_kv_heads,
        head_dim=c.head_dim,
        ffn_dim=c.intermediate_size,
        rope_base=c.rope_theta,
        rope_interleaved=False,
        norm_eps=c.rms_norm_eps,
        tie_embeddings=c.tie_word_embeddings,
    )


def llama_state_dict(tensors: dict[str, Tensor], num_layers: int) -> dict[str, Tensor]:
    """HF ``LlamaForCausalLM`` tensors renamed to `LlamaModel`'s (qkv's) parameter names.

    >>> sorted(llama_state_dict({"model.layers.0.self_attn.o_proj.weight": 0, "model.norm.weight": 1}, 1))
    ['layers.0.self_attn.out_proj.weight', 'norm.weight']
    """
    names = {
        "model.embed_tokens.weight": "embeddings.tokens.weight",
        "model.norm.weight": "norm.weight",
        "lm_head.weight": "lm_head.weight",
    }
    per_layer = {
        "input_layernorm": "attn_norm",
        "self_attn.q_proj": "self_attn.q_proj",
        "self_attn.k_proj": "self_attn.k_proj",
        "self_attn.v_proj": "self_attn.v_proj",
        "self_attn.o_proj": "self_attn.out_proj",
        "post_attention_layernorm": "ffn_norm",
        "mlp.gate_proj": "ffn.gate_proj",
        "mlp.up_proj": "ffn.up_proj",
        "mlp.down_proj": "ffn.down_proj",
    }
    for i in range(num_layers):
        for theirs, ours in per_layer.items():
            names[f"model.layers.{i}.{theirs}.weight"] = f"layers.{i}.{ours}.weight"
    return {names[name]: t for name, t in tensors.items() if name in names}


class LlamaModel(TransformerDecoder):
    """A Llama-family causal language model (HF ``LlamaForCausalLM``) made of `qkv.nn` blocks.

    Build it from a checkpoint with `from_checkpoint`. ``context_length`` is the
    most positions the model was trained for. Decode with a cache from
    ``new_cache(kind, batch=..., max_length=...)``; `qkv.models.generate` does
    the whole loop.
    """

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__(_decoder_config(config))
        self.llama_config = config
        self.context_length = config.context_length

    @classmethod
    def from_checkpoint(cls, checkpoint: LlamaCheckpoint) -> LlamaModel:
        """The decoder with the checkpoint's weights, in their dtype, in eval mode."""
        c = checkpoint.config
        state = llama_state_dict(checkpoint.tensors, c.num_layers)
        if c.tie_word_embeddings:
            state["lm_head.weight"] = state["embeddings.tokens.weight"]
        return build_with_weights(lambda: cls(c), state, where=str(checkpoint.path or "checkpoint"))

    def forward(  # type: ignore[override]
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        *,
        cache: ModelCache | None = None,
    ) -> Tensor:
        """Logits ``(B, N, V)``; ``attention_mask (B, past + N)`` covers the cached and the new tokens."""
        past = cache.length if cache is not None else 0
        mask = None
        if attention_mask is not None:
            if not isinstance(input_ids, Tensor) or input_ids.dim() != 2:
                raise ModelError(f"input_ids: expected an integer tensor (B, N), got {type(input_ids).__name__}")
            n = past + input_ids.shape[1]
            if not isinstance(attention_mask, Tensor) or tuple(attention_mask.shape) != (input_ids.shape[0], n):
                given = tuple(attention_mask.shape) if isinstance(attention_mask, Tensor) else type(attention_mask)
                raise ModelError(
                    f"attention_mask: expected shape (B={input_ids.shape[0]}, past + N={n}) covering the cached "
                    f"and the new tokens (1 / True at real tokens), got {given}"
                )
            mask = attention_mask.bool()[:, None, None, :]  # (B, past + N) -> (B, 1, 1, past + N)
        hidden = self.hidden_states(input_ids, mask=mask, cache=cache)  # (B, N, E)
        return self.lm_head(hidden)  # (B, N, E) -> (B, N, V)

    def num_parameters(self) -> int:
        """Distinct parameters (a tied LM head counts once)."""
        return sum(p.numel() for p in self.parameters())
