"""A Llama decoder built from `qkv.nn` blocks, loaded from a `LlamaCheckpoint` (a GGUF file read whole).

The names and layout are HF transformers': `LlamaModel` (a `qkv.nn.TransformerDecoder`)
returns the last hidden states ``(B, N, E)``; `LlamaForCausalLM` (a
`qkv.nn.TransformerForCausalLM`) holds one as ``.model`` and an ``lm_head`` (tied
to the token embeddings when the file has no ``output.weight``, as SmolLM2) and
returns logits ``(B, N, V)``. The decoder: pre-norm RMSNorm, half-split RoPE (the
checkpoint's q/k rows are already in that order), grouped-query attention (query
head ``h`` reads kv head ``h // (Hq // Hkv)``), SwiGLU ``down(silu(gate) * up)``, no
biases, a final RMSNorm.

Both take ``forward(input_ids, attention_mask=None, *, cache=None)``.
``attention_mask (B, past + N)`` (True / 1 at real tokens, HF's meaning) masks
padded keys, e.g. a left-padded batch.

>>> import torch
>>> from qkv.models.gguf_file import LlamaConfig
>>> from qkv.models.llama import LlamaForCausalLM
>>> config = LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
...                      num_kv_heads=2, head_dim=8, rope_theta=1e4, rope_dim=8, rms_norm_eps=1e-5,
...                      context_length=64, tie_word_embeddings=True)
>>> lm = LlamaForCausalLM(config).eval()
>>> ids = torch.tensor([[3, 1, 4, 1, 5]])
>>> lm(ids).shape                                                   # (B, N, V)
torch.Size([1, 5, 40])
>>> lm.model(ids).shape                                             # LlamaModel: (B, N, E)
torch.Size([1, 5, 32])
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from qkv import masks
from qkv.cache import ModelCache
from qkv.models._build import build_with_weights, renamed
from qkv.models._inputs import key_mask
from qkv.models.gguf_file import LlamaCheckpoint, LlamaConfig
from qkv.models.packages import ModelError, UnsupportedModelError
from qkv.nn import DecoderConfig, TransformerDecoder, TransformerForCausalLM

__all__ = ["LlamaForCausalLM", "LlamaModel", "llama_state_dict"]


def _decoder_config(c: LlamaConfig) -> DecoderConfig:
    if c.rope_dim != c.head_dim:
        raise UnsupportedModelError(
            f"config: RoPE on {c.rope_dim} of {c.head_dim} head dims (partial rotary) is not supported; "
            "qkv's Llama rotates every dim of each head"
        )
    if c.rope_scaling:
        raise UnsupportedModelError(
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
    """HF ``LlamaForCausalLM`` tensors renamed to `LlamaForCausalLM`'s (qkv's) parameter names.

    >>> sorted(llama_state_dict({"model.layers.0.self_attn.o_proj.weight": 0, "model.norm.weight": 1}, 1))
    ['model.layers.0.self_attn.out_proj.weight', 'model.norm.weight']
    """
    names = {
        "model.embed_tokens.weight": "model.embeddings.tokens.weight",
        "model.norm.weight": "model.norm.weight",
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
    return renamed(
        tensors,
        names,
        per_layer,
        num_layers,
        theirs="model.layers.{}.",
        ours="model.layers.{}.",
        kinds=("weight", "bias"),
    )


def _add_biases(decoder: TransformerDecoder, config: LlamaConfig) -> None:
    """Give the projections ``config`` says have biases (Qwen2's q/k/v, Llama's attention_bias / mlp_bias) one."""
    wanted = {
        "self_attn.q_proj": config.qkv_bias,
        "self_attn.k_proj": config.qkv_bias,
        "self_attn.v_proj": config.qkv_bias,
        "self_attn.out_proj": config.o_bias,
        "ffn.gate_proj": config.mlp_bias,
        "ffn.up_proj": config.mlp_bias,
        "ffn.down_proj": config.mlp_bias,
    }
    for layer in decoder.layers:
        for name, present in wanted.items():
            if present:
                owner_name, attr = name.split(".")
                owner = layer.get_submodule(owner_name)
                old = getattr(owner, attr)
                weight = old.weight
                new = nn.Linear(old.in_features, old.out_features, bias=True, device=weight.device, dtype=weight.dtype)
                setattr(owner, attr, new)


def _within_window(window: int, mask: Tensor | masks.Mask | None, num_queries: int, num_keys: int) -> object:
    """``mask`` and the sliding window: the structured mask alone, or the window's dense form and a key mask."""
    sliding = masks.sliding_window(window)
    if mask is None:
        return sliding
    if isinstance(mask, masks.Mask):
        return sliding & mask
    return sliding.to_dense(1, 1, num_queries, num_keys, device=mask.device) & mask  # (1, 1, Nq, Nk) & (B, 1, 1, Nk)


class LlamaModel(TransformerDecoder):
    """A Llama-family decoder (HF ``LlamaModel``): token ids -> the last hidden states ``(B, N, E)``.

    ``forward(input_ids, attention_mask=None, *, cache=None)``; `LlamaForCausalLM`
    adds the LM head. ``llama_config`` is the checkpoint's `LlamaConfig`,
    ``context_length`` the most positions the model was trained for.
    """

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__(_decoder_config(config))
        _add_biases(self, config)
        self.llama_config = config
        self.context_length = config.context_length

    def hidden_states(
        self,
        input_ids: Tensor,
        *,
        mask: Tensor | None = None,
        bias: Tensor | None = None,
        cache: ModelCache | None = None,
        **options: Any,
    ) -> Tensor:
        """`TransformerDecoder.hidden_states`, with the sliding window (Mistral) in ``mask`` where the config sets one.

        Every path to the decoder (``forward``, generation, `qkv.interpret.record`) comes through here.
        """
        window = self.llama_config.sliding_window
        if window is not None and isinstance(input_ids, Tensor) and input_ids.dim() == 2:
            nq = input_ids.shape[1]
            mask = _within_window(window, mask, nq, nq + (cache.length if cache is not None else 0))  # type: ignore[assignment]
        return super().hidden_states(input_ids, mask=mask, bias=bias, cache=cache, **options)

    def forward(  # type: ignore[override]
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        *,
        cache: ModelCache | None = None,
    ) -> Tensor:
        """Hidden states ``(B, N, E)``; ``attention_mask (B, past + N)`` covers the cached and the new tokens."""
        mask = None
        if attention_mask is not None:
            if not isinstance(input_ids, Tensor) or input_ids.dim() != 2:
                raise ModelError(f"input_ids: expected an integer tensor (B, N), got {type(input_ids).__name__}")
            b, n = input_ids.shape[0], input_ids.shape[1] + (cache.length if cache is not None else 0)
            mask = key_mask(attention_mask, (b, n), f"(B={b}, past + N={n}) covering the cached and the new tokens")
        return self.hidden_states(input_ids, mask=mask, cache=cache)


class LlamaForCausalLM(TransformerForCausalLM):
    """A Llama-family causal language model (HF ``LlamaForCausalLM``): ``.model`` (a `LlamaModel`) and ``lm_head``.

    ``forward(input_ids, attention_mask=None, *, cache=None)`` gives logits ``(B, N, V)``:
    ``lm_head(model(...))``. Build it from a checkpoint with `from_checkpoint`; its parameter names are HF's
    prefixes with qkv's module names (``model.layers.0.self_attn.q_proj.weight``).
    Decode with a cache from ``new_cache(kind, batch=..., max_length=...)``;
    `qkv.models.generate` does the whole loop.
    """

    model: LlamaModel

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__(LlamaModel(config))

    @property
    def llama_config(self) -> LlamaConfig:
        """The checkpoint's `LlamaConfig` (the decoder's)."""
        return self.model.llama_config

    @property
    def context_length(self) -> int:
        """The most positions the model was trained for (the decoder's)."""
        return self.model.context_length

    @classmethod
    def from_checkpoint(cls, checkpoint: LlamaCheckpoint) -> LlamaForCausalLM:
        """The language model with the checkpoint's weights, in their dtype, in eval mode."""
        c = checkpoint.config
        state = llama_state_dict(checkpoint.tensors, c.num_layers)
        if c.tie_word_embeddings:
            state["lm_head.weight"] = state["model.embeddings.tokens.weight"]
        return build_with_weights(lambda: cls(c), state, where=str(checkpoint.path or "checkpoint"))

    def num_parameters(self) -> int:
        """Distinct parameters (a tied LM head counts once)."""
        return sum(p.numel() for p in self.parameters())
