"""Models that handle their attention mask as a tensor, on ``"qkv"``: the mask reads as transformers' tensor.

`qkv.hf.mask_interface` answers with a `qkv.hf.masks.TransformersMask`: a qkv mask that model code
may also slice, concatenate, compare or read ``.dtype`` of, and then gets the bool ``(B, 1, Nq, Nk)``
tensor transformers' ``sdpa_mask`` builds for the same rule. The unit tests hold each way of reading
it to that spec, and the attention function to the same numbers on the structure and on the dense
form (a fully masked row: zeros); the family tests run tiny random models whose code does so (DeepSeek-V3.2's indexer
slices the mask and chooses keys, Doge adds its dynamic mask to it, T5Gemma 2 concatenates the
self- and cross-attention masks, PaliGemma hands it to its language model) on a padded batch
against ``"eager"``, on the real tokens' rows.
"""

from __future__ import annotations

import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")

from transformers.masking_utils import (
    bidirectional_mask_function,
    causal_mask_function,
    create_causal_mask,
    sdpa_mask,
    sliding_window_causal_mask_function,
)

import qkv
import qkv.hf
from qkv import masks
from qkv.hf.masks import TransformersMask

TOLERANCE = 1e-5  # float32 against float32 eager: the same function summed in another order
# left padding, as transformers passes a 2-D mask on: bool
LEFT = torch.tensor([[1, 1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 1, 1]]).bool()


def _both(fn, attention_mask=None, nq=7, nk=7, q_offset=0, kv_offset=0):
    """``(ours, spec)``: qkv's mask and transformers' dense bool ``sdpa_mask`` for the same request."""
    sizes = {"batch_size": 3, "q_length": nq, "kv_length": nk, "q_offset": q_offset, "kv_offset": kv_offset}
    ours = qkv.hf.mask_interface(mask_function=fn, attention_mask=attention_mask, **sizes)
    spec = sdpa_mask(mask_function=fn, attention_mask=attention_mask, allow_is_causal_skip=False, **sizes)
    return ours, spec.expand(3, 1, nq, nk)


# ---------------------------------------------------------------------------
# the wrapper: a qkv mask, and transformers' tensor wherever it is read as one


@pytest.mark.parametrize(
    "fn, padding, nq, nk, q_offset, kv_offset, shown",
    [
        (causal_mask_function, None, 7, 7, 0, 0, "causal()"),
        (causal_mask_function, LEFT, 7, 7, 0, 0, "causal() & ~padding(lengths=[0, 2, 5])"),
        (sliding_window_causal_mask_function(3), LEFT, 7, 7, 0, 0, "sliding_window(3) & ~padding"),
        (causal_mask_function, LEFT, 2, 7, 5, 0, "causal() & ~padding"),  # decoding with a cache
        (causal_mask_function, LEFT.flip(-1), 3, 9, 0, 0, "transformers_rule"),  # a static cache
    ],
    ids=["causal", "left_padding", "sliding_window", "cache", "static_cache"],
)
def test_the_mask_is_a_qkv_mask_and_reads_as_the_sdpa_tensor(fn, padding, nq, nk, q_offset, kv_offset, shown):
    ours, spec = _both(fn, padding, nq, nk, q_offset, kv_offset)
    assert isinstance(ours, TransformersMask) and isinstance(ours, masks.Mask)
    assert shown in repr(ours)
    assert torch.equal(ours.to_dense(3, 1, nq, nk), spec)  # as a qkv mask
    assert ours.dtype == spec.dtype == torch.bool and ours.shape == spec.shape  # as a tensor
    assert ours.ndim == ours.dim() == 4 and ours.size(-1) == nk and ours.device == spec.device
    assert torch.equal(ours[:, 0, :, :], spec[:, 0, :, :])  # an indexer's slice
    assert torch.equal(ours.dense(), spec)


def test_torch_functions_tensor_methods_and_operators_get_the_tensor() -> None:
    ours, spec = _both(causal_mask_function, LEFT)
    other = torch.rand(3, 1, 7, 4) > 0.5
    assert torch.equal(torch.cat([ours, other], dim=-1), torch.cat([spec, other], dim=-1))  # T5Gemma 2
    minimum = torch.finfo(torch.float32).min
    as_bias = torch.where(ours, torch.zeros(()), minimum)  # Doge: the bool mask as a float one
    assert torch.equal(as_bias, torch.where(spec, torch.zeros(()), minimum))
    scores = torch.randn(3, 4, 7, 7)
    assert torch.equal(scores.masked_fill(~ours.dense(), -1.0), scores.masked_fill(~spec, -1.0))
    assert torch.equal(scores.masked_fill(ours, 0.0), scores.masked_fill(spec, 0.0))  # a tensor method's argument
    assert torch.equal(ours.float(), spec.float()) and torch.equal(ours.sum(-1), spec.sum(-1))
    chosen = torch.rand(3, 1, 7, 7) > 0.3
    assert torch.equal(ours & chosen, spec & chosen) and torch.equal(chosen & ours, chosen & spec)
    assert torch.equal(ours | chosen, spec | chosen)
    assert torch.equal(scores + ours, scores + spec)
    assert torch.equal(torch.stack(list(ours)), spec)


def test_comparisons_and_arithmetic_are_the_tensors_and_the_object_stays_one_key() -> None:
    ours, spec = _both(causal_mask_function, LEFT)
    assert torch.equal(ours == 0, spec == 0) and torch.equal(ours != 0, spec != 0)  # Doge: mask != 0
    assert torch.equal(1.0 - ours.float(), 1.0 - spec.float()) and torch.equal(ours * 2.0, spec * 2.0)
    assert {ours: 1}[ours] == 1 and ours in [ours]  # hashed and found by identity, as the plan caches keep it


def test_reading_what_no_tensor_has_names_the_family_and_the_fix() -> None:
    config = transformers.LlamaConfig()
    ours = qkv.hf.mask_interface(2, 3, 3, config=config)
    with pytest.raises(AttributeError, match=r"no attribute 'spline'.*the llama model.*attn_implementation='eager'"):
        ours.spline  # noqa: B018 - the attribute read is the test
    assert not hasattr(ours, "spline")


def test_to_keeps_the_structure_where_nothing_changes_and_converts_like_a_tensor_otherwise() -> None:
    ours, spec = _both(causal_mask_function, LEFT)
    assert ours.to("cpu") is ours and ours.to(torch.bool) is ours and ours.to(spec) is ours
    assert ours._dense is None  # nothing was made dense for that
    converted = ours.to(torch.float16)
    assert type(converted) is torch.Tensor and torch.equal(converted, spec.to(torch.float16))


def test_combined_with_a_mask_it_stays_a_mask_that_reads_as_a_tensor() -> None:
    ours, spec = _both(causal_mask_function, LEFT)
    window = masks.sliding_window(2)
    both = ours & window
    assert (
        isinstance(both, TransformersMask)
        and repr(both) == "causal() & ~padding(lengths=[0, 2, 5]) & sliding_window(2)"
    )
    assert torch.equal(both.dense(), spec & window.to_dense(3, 1, 7, 7))
    assert torch.equal((~ours).dense(), ~spec)


def test_a_mask_that_allows_every_key_is_none_unless_transformers_asks_for_one() -> None:
    sizes = {"batch_size": 2, "q_length": 5, "kv_length": 5}
    assert qkv.hf.mask_interface(mask_function=bidirectional_mask_function, **sizes) is None
    kept = qkv.hf.mask_interface(mask_function=bidirectional_mask_function, allow_is_bidirectional_skip=False, **sizes)
    assert isinstance(kept, TransformersMask) and kept.mask is None
    assert kept.dense().shape == (2, 1, 5, 5) and bool(kept.dense().all())
    assert torch.equal(kept.to_dense(2, 1, 5, 5), kept.dense())


def test_a_mask_handed_on_to_a_sub_model_is_passed_through_as_transformers_passes_a_4d_tensor() -> None:
    config = transformers.LlamaConfig(vocab_size=16, hidden_size=8, num_attention_heads=2, num_hidden_layers=1)
    config._attn_implementation = "qkv"
    embeds = torch.randn(3, 7, 8)
    outer = create_causal_mask(config=config, inputs_embeds=embeds, attention_mask=LEFT, cache=None)
    assert isinstance(outer, TransformersMask)
    assert create_causal_mask(config=config, inputs_embeds=embeds, attention_mask=outer, cache=None) is outer


def _qkv_masks_seen(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The masks the attention function ran: through `qkv.attention`, or in the one pass that keeps every
    probability (``output_attentions=True``)."""
    import qkv.hf.attention

    seen: list[object] = []

    def watching(real):
        def run(*args, **kwargs):
            seen.append(kwargs.get("mask"))
            return real(*args, **kwargs)

        return run

    monkeypatch.setattr(qkv, "attention", watching(qkv.attention))
    one_pass = qkv.hf.attention.attention_with_probabilities
    monkeypatch.setattr(qkv.hf.attention, "attention_with_probabilities", watching(one_pass))
    return seen


def test_the_attention_function_runs_the_structure_and_the_dense_form_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unread, the wrapper goes to qkv as its structure; read as a tensor (bool), the same numbers,
    with a fully masked row (a left-padding query of a sliding window) zeros, weights included."""
    ours, spec = _both(
        sliding_window_causal_mask_function(2), torch.tensor([[1] * 7, [0, 0] + [1] * 5, [0] * 7]).bool()
    )
    assert not bool(spec[2].any())  # the third sequence is all padding: every row fully masked
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 4, 7, 8, generator=gen) for _ in range(3))
    module = torch.nn.Module()
    seen = _qkv_masks_seen(monkeypatch)
    out_s, w_s = qkv.hf.attention_forward(module, q, k, v, ours, output_attentions=True)
    assert ours._dense is None and seen[-1] is ours.mask  # the structure, never made dense
    out_d, w_d = qkv.hf.attention_forward(module, q, k, v, ours[:, :, :, :], output_attentions=True)
    assert isinstance(seen[-1], torch.Tensor)
    torch.testing.assert_close(out_s, out_d, rtol=0, atol=1e-6)
    torch.testing.assert_close(w_s, w_d, rtol=0, atol=1e-7)
    assert not bool(out_d[2].any()) and not bool(w_d[2].any())  # no key: zeros, not a uniform row
    scores = (q @ k.transpose(-1, -2) / 8**0.5).masked_fill(~spec, float("-inf"))  # (B, H, Nq, Nk)
    p = torch.softmax(scores, -1).nan_to_num(0.0)  # True = may attend; a row with no key: zeros
    torch.testing.assert_close(w_d, p, rtol=0, atol=1e-6)
    torch.testing.assert_close(out_d, (p @ v).transpose(1, 2), rtol=0, atol=1e-6)


def test_keys_a_layer_adds_past_its_mask_are_refused_with_the_family_and_the_fix() -> None:
    """DeepSeek-V4 appends compressed keys and extends a tensor mask to them with a bias it keeps to itself."""
    ours = qkv.hf.mask_interface(1, 4, 4, config=transformers.LlamaConfig())
    q, k = torch.randn(1, 2, 4, 8), torch.randn(1, 2, 6, 8)
    with pytest.raises(qkv.hf.ModelError, match=r"^llama: .* 4 queries and 6 keys, .* built for 4 and 4.*'eager'"):
        qkv.hf.attention_forward(torch.nn.Module(), q, k, k, ours)


def test_the_keys_an_indexer_chose_mask_the_rest() -> None:
    """DeepSeek-V3.2's sparse attention passes the indexer's choice as ``indices``, for the attention to apply."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 6, 8, generator=gen) for _ in range(3))
    ours, spec = _both(causal_mask_function, None, 6, 6)
    indices = torch.randint(0, 6, (2, 6, 3), generator=gen, dtype=torch.int32)  # (B, Nq, topk), repeats allowed
    chosen = torch.zeros(2, 6, 6, dtype=torch.bool).scatter(-1, indices.long(), True)[:, None]  # (B, 1, Nq, Nk)
    scores = (q @ k.transpose(-1, -2) / 8**0.5).masked_fill(~(spec[:2] & chosen), float("-inf"))
    p = torch.softmax(scores, -1).nan_to_num(0.0)  # a query whose chosen keys all lie ahead attends nothing
    causal_module = torch.nn.Module()
    causal_module.is_causal = True
    for given in (ours, None):  # qkv's mask, or none from a causal layer
        out, w = qkv.hf.attention_forward(causal_module, q, k, v, given, indices=indices, output_attentions=True)
        torch.testing.assert_close(w, p, rtol=0, atol=1e-6)
        torch.testing.assert_close(out, (p @ v).transpose(1, 2), rtol=0, atol=1e-6)
    with pytest.raises(qkv.hf.ModelError, match=r"indices: .*\(2, 6, topk\), got torch.float32.*'eager'"):
        qkv.hf.attention_forward(causal_module, q, k, v, ours, indices=torch.zeros(2, 6, 3))


# ---------------------------------------------------------------------------
# the families whose code reads the mask as a tensor, tiny and random, against eager

TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
TINY_TEXT = {**TINY, "vocab_size": 128, "num_key_value_heads": 2, "head_dim": 8, "initializer_range": 0.2}
CONFIGS = {
    "deepseek_v32": lambda: transformers.DeepseekV32Config(
        **{**TINY_TEXT, "num_key_value_heads": 4},
        moe_intermediate_size=32,
        n_routed_experts=4,
        num_experts_per_tok=2,
        n_group=1,
        topk_group=1,
        q_lora_rank=16,
        kv_lora_rank=16,
        qk_nope_head_dim=8,
        qk_rope_head_dim=8,
        v_head_dim=8,
        index_topk=4,  # fewer than the 9 tokens: the indexer's choice masks keys
        mlp_layer_types=["dense", "dense"],
        layer_types=["indexed_attention", "indexed_attention"],
    ),
    "doge": lambda: transformers.DogeConfig(
        **TINY_TEXT, num_experts=4, num_experts_per_tok=2, keep_window_size=4, sliding_window=None
    ),
}


def _padded(lengths: tuple[int, ...] = (9, 6, 3), *, left: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` of sequences of these lengths, padded to the longest (on the left, or right)."""
    n = max(lengths)
    ids = torch.randint(3, 120, (len(lengths), n), generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(len(lengths), n, dtype=torch.long)
    for b, length in enumerate(lengths):
        if left:
            mask[b, n - length :] = 1
        else:
            mask[b, :length] = 1
    return ids, mask


def _pair(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    ours = copy.deepcopy(model)
    ours.set_attn_implementation("qkv")
    return model, ours


def _close_on(a: torch.Tensor, b: torch.Tensor, rows: torch.Tensor, what: str) -> None:
    """``a`` and ``b`` agree on the real tokens' rows (``rows (B, N)``; rows on axis 1 of hidden states,
    axis 2 of ``(B, H, N, Nk)`` weights)."""
    keep = rows[:, :, None] if a.dim() == 3 else rows[:, None, :, None]
    diff = float(((a - b).abs() * keep).max())
    assert diff <= TOLERANCE * max(1.0, float(b.abs().max())), (what, diff)


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_a_decoder_that_reads_its_mask_as_a_tensor_matches_eager(family: str, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    eager, ours = _pair(transformers.AutoModel.from_config(CONFIGS[family](), attn_implementation="eager").eval())
    ids, mask = _padded()
    seen = _qkv_masks_seen(monkeypatch)
    with torch.no_grad():
        a = eager(input_ids=ids, attention_mask=mask, output_attentions=True)
        b = ours(input_ids=ids, attention_mask=mask, output_attentions=True)
    rows = mask.bool()
    _close_on(b.last_hidden_state, a.last_hidden_state, rows, "last_hidden_state")
    for i, (x, y) in enumerate(zip(b.attentions, a.attentions, strict=True)):
        _close_on(x, y, rows, f"attentions[{i}]")
    assert len(seen) == 2
    if family == "deepseek_v32":  # the indexer read a slice; the layer still gets the structure
        assert all(isinstance(m, masks.Mask) and "causal() & ~padding" in repr(m) for m in seen), seen
    else:  # Doge adds its dynamic mask to the tensor: what reaches qkv is dense, by the model's own design
        assert all(isinstance(m, torch.Tensor) for m in seen)


def test_t5gemma2_concatenates_its_masks_and_matches_eager() -> None:
    text = {**TINY_TEXT, "sliding_window": 4, "layer_types": ["sliding_attention", "full_attention"]}
    vision = {**TINY, "image_size": 32, "patch_size": 8}
    config = transformers.T5Gemma2Config(
        encoder={
            "text_config": text,
            "vision_config": vision,
            "boi_token_index": 127,
            "eoi_token_index": 126,
            "image_token_index": 125,
        },
        decoder=text,
        vocab_size=128,
        image_token_index=125,
        eoi_token_index=126,
        initializer_range=0.2,
    )
    torch.manual_seed(0)
    eager, ours = _pair(transformers.T5Gemma2Model._from_config(config, attn_implementation="eager").eval())
    ids, mask = _padded(left=False)  # right-padded sources
    decoder_ids, decoder_mask = _padded((5, 3, 4), left=False)
    kwargs = {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": decoder_ids}
    kwargs["decoder_attention_mask"] = decoder_mask
    with torch.no_grad():
        a = eager(**kwargs, output_attentions=True)
        b = ours(**kwargs, output_attentions=True)
    source, target = mask.bool(), decoder_mask.bool()
    _close_on(b.encoder_last_hidden_state, a.encoder_last_hidden_state, source, "encoder_last_hidden_state")
    _close_on(b.last_hidden_state, a.last_hidden_state, target, "last_hidden_state")
    for name, rows in (("encoder_attentions", source), ("decoder_attentions", target), ("cross_attentions", target)):
        for i, (x, y) in enumerate(zip(getattr(b, name), getattr(a, name), strict=True)):
            _close_on(x, y, rows, f"{name}[{i}]")


def test_paligemma_hands_its_mask_to_its_language_model_and_matches_eager() -> None:
    vision = {**TINY, "image_size": 32, "patch_size": 8, "projection_dim": 32}
    text = {**TINY_TEXT, "num_image_tokens": 16}
    config = transformers.PaliGemmaConfig(
        vision_config=vision, text_config=text, image_token_index=127, projection_dim=32, hidden_size=32
    )
    torch.manual_seed(0)
    eager, ours = _pair(transformers.PaliGemmaModel._from_config(config, attn_implementation="eager").eval())
    gen = torch.Generator().manual_seed(1)
    text_ids, text_mask = _padded((6, 4, 2))
    ids = torch.cat([torch.full((3, 16), 127), text_ids], dim=1)  # 16 image tokens, then the text
    mask = torch.cat([torch.ones(3, 16, dtype=torch.long), text_mask], dim=1)
    kwargs = {"input_ids": ids, "attention_mask": mask, "pixel_values": torch.randn(3, 3, 32, 32, generator=gen)}
    kwargs["token_type_ids"] = (torch.arange(22) >= 16).long().expand(3, -1)  # the image is a bidirectional prefix
    with torch.no_grad():
        a = eager(**kwargs, output_attentions=True)
        b = ours(**kwargs, output_attentions=True)
    rows = mask.bool()
    _close_on(b.last_hidden_state, a.last_hidden_state, rows, "last_hidden_state")
    for i, (x, y) in enumerate(zip(b.attentions, a.attentions, strict=True)):
        _close_on(x, y, rows, f"attentions[{i}]")
