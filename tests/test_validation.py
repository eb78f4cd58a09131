"""qkv.validation: one set of options for every attention function, checked once, refused with the argument's name."""

from __future__ import annotations

import pytest
import torch

import qkv
from qkv import masks, mods
from qkv.validation import check_call, check_weights_call
from tests.conftest import qkv_inputs


def test_an_attention_call_without_values_is_refused_naming_v():
    q, k, _ = qkv_inputs(1, 2, 2, 5, 5, 8)
    for call in (lambda: qkv.attention(q, k, None), lambda: qkv.reference.attention(q, k, None)):
        with pytest.raises(qkv.AttentionError, match=r"^v: expected a torch.Tensor \(B, Hkv, Nk, Dv\), got NoneType"):
            call()


def test_a_weights_call_has_no_values_and_no_dropout():
    q, k, _ = qkv_inputs(1, 2, 2, 5, 5, 8)
    call = check_weights_call(q, k, mask=masks.causal(), bias=mods.alibi(2))
    assert call.v is None and call.dropout_p == 0.0 and isinstance(call.mask, masks.Mask)
    with pytest.raises(AssertionError, match="weights-only"):
        call.values  # noqa: B018


def test_every_attention_function_takes_the_same_options():
    q, k, v = qkv_inputs(2, 4, 2, 7, 9, 8, dtype=torch.float64)
    options = {
        "mask": masks.sliding_window(3) & masks.padding([9, 6]),
        "bias": mods.alibi(4),
        "causal": True,
        "scale": 0.5,
    }
    golden = qkv.reference.attention(q, k, v, **options)
    assert (qkv.attention(q, k, v, **options) - golden).abs().max() < 1e-12
    assert qkv.explain_dispatch(q, k, v, **options).backend in ("blockwise", "eager", "sdpa")
    weights = qkv.reference.attention_weights(q, k, **options)
    assert (qkv.attention_weights(q, k, **options) - weights).abs().max() < 1e-12
    assert check_call(q, k, v, **options).scale == 0.5


@pytest.mark.parametrize(
    "name, value, argument",
    [
        ("mask", torch.ones(7, 9), "mask"),
        ("bias", mods.alibi(3), "bias"),
        ("causal", 1, "causal"),
        ("scale", "0.5", "scale"),
        ("dropout_p", 1.0, "dropout_p"),
    ],
)
def test_the_options_are_checked_alike_everywhere(name, value, argument):
    q, k, v = qkv_inputs(2, 4, 2, 7, 9, 8)
    for call in (
        lambda: qkv.attention(q, k, v, **{name: value}),
        lambda: qkv.reference.attention(q, k, v, **{name: value}),
        lambda: qkv.explain_dispatch(q, k, v, **{name: value}),
    ):
        with pytest.raises(qkv.AttentionError, match=f"^{argument}:"):
            call()


def test_an_unknown_option_is_a_type_error():
    q, k, v = qkv_inputs(1, 2, 2, 5, 5, 8)
    for call in (
        lambda: qkv.explain_dispatch(q, k, v, maks=None),
        lambda: qkv.reference.attention(q, k, v, maks=None),
        lambda: qkv.reference.attention_weights(q, k, dropout_p=0.1),
    ):
        with pytest.raises(TypeError):
            call()
