"""Bad input raises qkv.AttentionError (a ValueError) that names the argument and what was given."""

from __future__ import annotations

import pytest
import torch

import qkv
from tests.conftest import qkv_inputs


def _base():
    q, k, v = qkv_inputs(b=2, hq=4, hkv=2, nq=5, nk=6, d=8)
    return {"q": q, "k": k, "v": v}


def _case(**change):
    def make():
        args = _base()
        for name, fn in change.items():
            args[name] = fn(args)
        return args

    return make


BAD = {
    "q wrong rank": ("q", "(2, 5, 8)", _case(q=lambda a: a["q"][:, 0])),
    "k wrong rank": ("k", "4-D", _case(k=lambda a: a["k"][None])),
    "v not a tensor": ("v", "list", _case(v=lambda a: a["v"].tolist())),
    "integer dtype": ("q", "torch.int64", _case(q=lambda a: a["q"].long())),
    "head dims differ": ("k", "D = 7", _case(k=lambda a: a["k"][..., :7], v=lambda a: a["v"][..., :7])),
    "heads not divisible": (
        "k",
        "Hkv = 3",
        _case(k=lambda a: torch.randn(2, 3, 6, 8), v=lambda a: torch.randn(2, 3, 6, 8)),
    ),
    "key/value length mismatch": ("v", "(2, 2, 5, 8)", _case(v=lambda a: a["v"][:, :, :5])),
    "batch mismatch": ("k", "batch size 1", _case(k=lambda a: a["k"][:1], v=lambda a: a["v"][:1])),
    "no keys": ("k", "Nk = 0", _case(k=lambda a: a["k"][:, :, :0], v=lambda a: a["v"][:, :, :0])),
    "mixed dtypes": ("k", "torch.float64", _case(k=lambda a: a["k"].double())),
    "v dtype": ("v", "torch.float16", _case(v=lambda a: a["v"].half())),
    "mask not bool": ("mask", "torch.float32", _case(mask=lambda a: torch.ones(5, 6))),
    "mask not broadcastable": (
        "mask",
        "shape (5, 5) does not broadcast",
        _case(mask=lambda a: torch.ones(5, 5, dtype=torch.bool)),
    ),
    "mask 3-D is ambiguous": ("mask", "(2, 5, 6)", _case(mask=lambda a: torch.ones(2, 5, 6, dtype=torch.bool))),
    "mask wrong batch": ("mask", "axis B has size 3", _case(mask=lambda a: torch.ones(3, 1, 5, 6, dtype=torch.bool))),
    "bias not broadcastable": ("bias", "axis Hq has size 3", _case(bias=lambda a: torch.zeros(1, 3, 5, 6))),
    "bias dtype": ("bias", "torch.float64", _case(bias=lambda a: torch.zeros(5, 6, dtype=torch.float64))),
    "bias bool": ("bias", "torch.bool", _case(bias=lambda a: torch.ones(5, 6, dtype=torch.bool))),
    "dropout negative": ("dropout_p", "-0.1", _case(dropout_p=lambda a: -0.1)),
    "dropout one": ("dropout_p", "1.0", _case(dropout_p=lambda a: 1.0)),
    "unknown backend": ("backend", "'flash'", _case(backend=lambda a: "flash")),
    "scale nan": ("scale", "nan", _case(scale=lambda a: float("nan"))),
    "scale inf": ("scale", "inf", _case(scale=lambda a: float("inf"))),
    "scale string": ("scale", "str", _case(scale=lambda a: "0.5")),
    "causal not bool": ("causal", "str", _case(causal=lambda a: "yes")),
    "return_lse not bool": ("return_lse", "int", _case(return_lse=lambda a: 1)),
    "sdpa asked for lse": ("backend", "log-sum-exp", _case(backend=lambda a: "sdpa", return_lse=lambda a: True)),
}


@pytest.mark.parametrize("name", BAD)
def test_bad_input_names_the_argument(name):
    argument, given, make = BAD[name]
    args = make()
    q, k, v = args.pop("q"), args.pop("k"), args.pop("v")
    with pytest.raises(qkv.AttentionError) as info:
        qkv.attention(q, k, v, **args)
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert message.startswith(f"{argument}:"), message
    assert given in message, message


def test_rows_must_be_valid_query_indices():
    q, k, _ = qkv_inputs(b=1, hq=1, nq=4, d=8)
    for rows, given in [
        ([4], "max 4"),
        ([-1], "min -1"),
        (torch.tensor([[0]]), "shape (1, 1)"),
        (torch.tensor([0.5]), "torch.float32"),
        ("0", "str"),
    ]:
        with pytest.raises(qkv.AttentionError, match="^rows:") as info:
            qkv.attention_weights(q, k, rows=rows)
        assert given in str(info.value)


def test_devices_must_match():
    q, k, v = qkv_inputs(b=1, hq=1, nq=4, d=8)
    with pytest.raises(qkv.AttentionError, match="^k: on meta"):
        qkv.attention(q, k.to("meta"), v)


def test_reference_rejects_other_backends_and_checks_like_attention():
    q, k, v = qkv_inputs(b=1, hq=1, nq=4, d=8)
    with pytest.raises(qkv.AttentionError, match="^backend:"):
        qkv.reference.attention(q, k, v, backend="eager")
    with pytest.raises(qkv.AttentionError, match="^mask:"):
        qkv.reference.attention(q, k, v, mask=torch.ones(4, 4))
