"""The ``"qkv"`` mask function: transformers' rules become qkv masks that keep their structure and mean the same.

Each case asks `qkv.hf.mask_interface` and transformers' own ``sdpa_mask`` (the dense bool spec)
for the same rule, sizes and offsets; the dense forms must be equal, and the structured ones
must be built from the factories a sparse plan can read.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from transformers.masking_utils import (
    and_masks,
    bidirectional_mask_function,
    causal_mask_function,
    chunked_causal_mask_function,
    or_masks,
    packed_sequence_mask_function,
    remap_positions_for_packed_sequence,
    sdpa_mask,
    sliding_window_bidirectional_mask_function,
    sliding_window_causal_mask_function,
)

import qkv
import qkv.hf
from qkv import masks

LEFT = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 1, 1]]).bool()
RIGHT = LEFT.flip(-1)
HOLES = torch.tensor([[1, 0, 1, 1, 0, 1, 1], [1, 1, 1, 1, 1, 1, 1], [0, 1, 1, 0, 0, 1, 1]]).bool()
POSITIONS = torch.tensor([[0, 1, 2, 0, 1, 2, 3], [0, 1, 0, 1, 2, 3, 4], [0, 1, 2, 3, 4, 5, 6]])
PACKED = torch.tensor([[0, 0, 0, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0, 0]])


def _every_third_key(b, h, q_idx, kv_idx):
    return kv_idx % 3 == 0


# name -> (mask_function, attention_mask, q_length, kv_length, q_offset, kv_offset, structured, repr part)
CASES = {
    "causal": (causal_mask_function, None, 7, 7, 0, 0, True, "causal()"),
    "causal_left_padding": (
        causal_mask_function,
        LEFT,
        7,
        7,
        0,
        0,
        True,
        "causal() & ~padding",
    ),
    "causal_right_padding": (
        causal_mask_function,
        RIGHT,
        7,
        7,
        0,
        0,
        True,
        "causal() & padding",
    ),
    "causal_holes": (
        causal_mask_function,
        HOLES,
        7,
        7,
        0,
        0,
        True,
        "from_function(real_keys)",
    ),
    "sliding": (
        sliding_window_causal_mask_function(3),
        None,
        7,
        7,
        0,
        0,
        True,
        "sliding_window(3)",
    ),
    "sliding_left_padding": (
        sliding_window_causal_mask_function(3),
        LEFT,
        7,
        7,
        0,
        0,
        True,
        "sliding_window(3) &",
    ),
    "chunked": (
        chunked_causal_mask_function(3, torch.tensor([2, 0, 5])),
        LEFT,
        7,
        7,
        0,
        0,
        True,
        "document(",
    ),
    "bidirectional_padding": (
        bidirectional_mask_function,
        RIGHT,
        7,
        7,
        0,
        0,
        True,
        "padding(lengths=[5, 7, 2])",
    ),
    "bidirectional_sliding": (
        sliding_window_bidirectional_mask_function(2),
        None,
        7,
        7,
        0,
        0,
        True,
        "local(2)",
    ),
    "packed": (
        and_masks(
            remap_positions_for_packed_sequence(causal_mask_function, POSITIONS),
            packed_sequence_mask_function(PACKED),
        ),
        None,
        7,
        7,
        0,
        0,
        True,
        "document(",
    ),
    "packed_sliding": (
        and_masks(
            remap_positions_for_packed_sequence(sliding_window_causal_mask_function(2), POSITIONS),
            packed_sequence_mask_function(PACKED),
        ),
        None,
        7,
        7,
        0,
        0,
        True,
        "sliding_window(2)",
    ),
    "decode_dynamic_cache": (causal_mask_function, LEFT, 1, 7, 6, 0, True, "~padding"),
    "prefill_chunk_dynamic_cache": (
        causal_mask_function,
        LEFT,
        3,
        7,
        4,
        0,
        True,
        "causal()",
    ),
    "decode_sliding_cache": (
        sliding_window_causal_mask_function(3),
        LEFT,
        1,
        3,
        6,
        4,
        True,
        "sliding_window(3)",
    ),
    "static_cache": (
        causal_mask_function,
        torch.ones(3, 4).bool(),
        2,
        9,
        2,
        0,
        False,
        "transformers_rule",
    ),
    "user_or_rule": (
        or_masks(causal_mask_function, _every_third_key),
        LEFT,
        7,
        7,
        0,
        0,
        False,
        "transformers_rule",
    ),
}


def _dense(result: object, batch: int, nq: int, nk: int) -> torch.Tensor:
    if result is None:
        return torch.ones(batch, 1, nq, nk, dtype=torch.bool)
    if isinstance(result, masks.Mask):
        return result.to_dense(batch, 1, nq, nk)
    assert isinstance(result, torch.Tensor)
    return result.expand(batch, 1, nq, nk)


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_qkv_mask_means_what_transformers_means(name: str) -> None:
    fn, padding, nq, nk, q_offset, kv_offset, structured, shown = CASES[name]
    sizes = {
        "batch_size": 3,
        "q_length": nq,
        "kv_length": nk,
        "q_offset": q_offset,
        "kv_offset": kv_offset,
    }
    ours = qkv.hf.mask_interface(mask_function=fn, attention_mask=padding, **sizes)
    spec = sdpa_mask(mask_function=fn, attention_mask=padding, allow_is_causal_skip=False, **sizes)
    assert torch.equal(_dense(ours, 3, nq, nk), spec.expand(3, 1, nq, nk)), name
    mask, was_structured = qkv.hf.structured_mask(fn, attention_mask=padding, **sizes)
    assert was_structured is structured
    assert shown in repr(mask)


def test_a_bidirectional_layer_without_padding_needs_no_mask() -> None:
    assert qkv.hf.mask_interface(3, 7, 7, mask_function=bidirectional_mask_function) is None
    assert (
        qkv.hf.mask_interface(
            3,
            7,
            7,
            mask_function=bidirectional_mask_function,
            attention_mask=torch.ones(3, 7),
        )
        is None
    )


def test_a_rule_transformers_marks_as_not_index_based_gets_its_dense_mask() -> None:
    def opaque(b, h, q_idx, kv_idx):
        return kv_idx <= q_idx

    out = qkv.hf.mask_interface(2, 5, 5, mask_function=and_masks(causal_mask_function, opaque), use_vmap=True)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.bool and out.shape == (2, 1, 5, 5)


def test_a_sliding_window_layer_runs_on_the_sparse_plan() -> None:
    mask = qkv.hf.mask_interface(1, 512, 512, mask_function=sliding_window_causal_mask_function(64))
    assert repr(mask) == "sliding_window(64)"
    q = torch.randn(1, 4, 512, 32)
    chosen = qkv.explain_dispatch(q, q, q, mask=mask)
    assert chosen.backend == "blockwise" and "key tiles" in str(chosen)


def test_a_mistral_model_hands_qkv_structured_masks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import transformers

    seen: list[object] = []
    real = qkv.attention

    def watching(*args, **kwargs):
        seen.append((kwargs.get("mask"), kwargs.get("causal")))
        return real(*args, **kwargs)

    monkeypatch.setattr(qkv, "attention", watching)
    cfg = transformers.MistralConfig(
        vocab_size=50,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        sliding_window=4,
    )
    model = transformers.MistralForCausalLM._from_config(cfg, attn_implementation="qkv").eval()
    with torch.no_grad():
        model(
            torch.randint(0, 50, (2, 8)),
            attention_mask=torch.tensor([[1] * 8, [0, 0] + [1] * 6]),
        )
    assert [repr(m) for m, _ in seen] == ["sliding_window(4) & ~padding(lengths=[0, 2])"]


def test_gemma2_alternates_window_and_causal_layers_with_soft_capping(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import transformers

    seen: list[tuple[str, str]] = []
    real = qkv.attention

    def watching(*args, **kwargs):
        seen.append((repr(kwargs.get("mask")), repr(kwargs.get("bias"))))
        return real(*args, **kwargs)

    monkeypatch.setattr(qkv, "attention", watching)
    cfg = transformers.Gemma2Config(
        vocab_size=50,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        sliding_window=4,
        attn_logit_softcapping=2.0,
    )
    model = transformers.Gemma2ForCausalLM._from_config(cfg, attn_implementation="qkv").eval()
    with torch.no_grad():
        model(
            torch.randint(0, 50, (2, 8)),
            attention_mask=torch.tensor([[1] * 8, [0, 0] + [1] * 6]),
        )
    assert seen == [
        ("sliding_window(4) & ~padding(lengths=[0, 2])", "softcap(2.0)"),
        ("causal() & ~padding(lengths=[0, 2])", "softcap(2.0)"),
    ]
