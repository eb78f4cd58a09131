"""Bahdanau (additive) and Luong (dot, general) attention: masked softmax, the formulas, parity with qkv.attention."""

from __future__ import annotations

import pytest
import torch

import qkv
from qkv.errors import AttentionError
from qkv.nn.additive import AdditiveAttention, GeneralAttention

B, NQ, NK, DQ, DK, DV = 3, 4, 7, 6, 5, 3


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: a second intra-op thread only adds sync cost, and on busy shared cores
    it makes these tests ~10x slower. Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _inputs(dq=DQ, dk=DK, dtype=torch.float32, requires_grad=False):
    g = torch.Generator().manual_seed(7)
    s = torch.randn(B, NQ, dq, generator=g, dtype=dtype)
    h = torch.randn(B, NK, dk, generator=g, dtype=dtype)
    v = torch.randn(B, NK, DV, generator=g, dtype=dtype)
    return tuple(t.requires_grad_(requires_grad) for t in (s, h, v))


def _row_mask(empty_rows=False):
    """(B, Nq, Nk) bool mask, random; with ``empty_rows`` some query rows allow no key."""
    g = torch.Generator().manual_seed(11)
    mask = torch.rand(B, NQ, NK, generator=g) < 0.6
    mask[..., 2] = True  # every row keeps at least one key ...
    if empty_rows:
        mask[0, 1] = False  # ... except these
        mask[2, 3] = False
    return mask


def _modules(dk=DK):
    torch.manual_seed(3)
    return {
        "additive": AdditiveAttention(DQ, dk, hidden_dim=8),
        "additive+bias": AdditiveAttention(DQ, dk, hidden_dim=8, bias=True),
        "general": GeneralAttention(DQ, dk, score="general"),
        "dot": GeneralAttention(DQ, score="dot"),
    }


MODULE_NAMES = list(_modules())


def _module_and_inputs(name, **kw):
    module = _modules()[name]
    s, h, v = _inputs(dk=DQ if name == "dot" else DK, **kw)
    return module, s, h, v


@pytest.mark.parametrize("name", MODULE_NAMES)
@pytest.mark.parametrize("mask_kind", ["padding (B, Nk)", "rows (B, Nq, Nk)"])
def test_weights_sum_to_one_over_allowed_keys_and_vanish_on_masked(name, mask_kind):
    module, s, h, v = _module_and_inputs(name)
    if mask_kind.startswith("padding"):
        lengths = torch.tensor([7, 3, 5])
        mask = torch.arange(NK)[None, :] < lengths[:, None]  # (B, Nk)
        full = mask[:, None, :].expand(B, NQ, NK)  # (B, Nk) -> (B, Nq, Nk)
    else:
        mask = full = _row_mask()
    context, weights = module(s, h, v, mask=mask)
    assert context.shape == (B, NQ, DV) and weights.shape == (B, NQ, NK)
    assert torch.all(weights[~full] == 0)
    assert torch.all(weights[full] > 0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(B, NQ))
    torch.testing.assert_close(context, weights @ v)
    # keys and values behind the mask cannot matter
    h2 = torch.where(full.any(1)[..., None], h, torch.randn_like(h) * 10)  # (B, Nk, 1) picks per key
    v2 = torch.where(full.any(1)[..., None], v, torch.randn_like(v) * 10)
    context2, weights2 = module(s, h2, v2, mask=mask)
    torch.testing.assert_close(context2, context)
    torch.testing.assert_close(weights2, weights)


@pytest.mark.parametrize("name", MODULE_NAMES)
def test_fully_masked_rows_give_zeros_and_finite_gradients(name):
    module, s, h, v = _module_and_inputs(name, requires_grad=True)
    mask = _row_mask(empty_rows=True)
    context, weights = module(s, h, v, mask=mask)
    empty = ~mask.any(-1)  # (B, Nq)
    assert empty.sum() == 2
    assert torch.all(context[empty] == 0) and torch.all(weights[empty] == 0)
    assert torch.isfinite(context).all() and torch.isfinite(weights).all()
    (context.square().sum() + weights.square().sum()).backward()
    grads = [s.grad, h.grad, v.grad] + [p.grad for p in module.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert torch.all(s.grad[empty] == 0), "a query that sees no key gets no gradient"
    assert s.grad[~empty].abs().sum() > 0


def _additive_by_hand(module: AdditiveAttention, s, h, v, mask):
    """vᵀ tanh(W₁ s + W₂ h + b), softmax over allowed keys, weighted sum: loops, float64."""
    w1 = module.query_proj.weight.detach().double()
    w2 = module.key_proj.weight.detach().double()
    b = torch.zeros(w2.shape[0], dtype=torch.float64)
    if module.key_proj.bias is not None:
        b = module.key_proj.bias.detach().double()
    va = module.v.detach().double()
    s, h, v = s.double(), h.double(), v.double()
    context = torch.zeros(B, NQ, v.shape[-1], dtype=torch.float64)
    weights = torch.zeros(B, NQ, NK, dtype=torch.float64)
    for bi in range(B):
        for i in range(NQ):
            allowed = [j for j in range(NK) if mask[bi, i, j]]
            if not allowed:
                continue
            e = {j: float(va @ torch.tanh(w1 @ s[bi, i] + w2 @ h[bi, j] + b)) for j in allowed}
            top = max(e.values())
            z = sum(torch.exp(torch.tensor(x - top, dtype=torch.float64)) for x in e.values())
            for j in allowed:
                weights[bi, i, j] = torch.exp(torch.tensor(e[j] - top, dtype=torch.float64)) / z
                context[bi, i] += weights[bi, i, j] * v[bi, j]
    return context, weights


@pytest.mark.parametrize("bias", [False, True])
def test_additive_matches_the_formula_by_hand_in_float64(bias):
    torch.manual_seed(5)
    module = AdditiveAttention(DQ, DK, hidden_dim=8, bias=bias)
    with torch.no_grad():  # make the scores large enough that tanh saturates somewhere
        module.v.mul_(4)
    s, h, v = _inputs()
    mask = _row_mask(empty_rows=True)
    want_c, want_w = _additive_by_hand(module, s, h, v, mask)
    got_c, got_w = module.double()(s.double(), h.double(), v.double(), mask=mask)
    torch.testing.assert_close(got_w, want_w, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got_c, want_c, rtol=1e-12, atol=1e-12)
    got_c32, got_w32 = module.float()(s, h, v, mask=mask)
    torch.testing.assert_close(got_w32.double(), want_w, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_c32.double(), want_c, rtol=1e-5, atol=1e-6)


def test_additive_hidden_layer_is_what_the_docstring_says():
    module = AdditiveAttention(DQ, DK)
    assert module.hidden_dim == DQ and module.query_proj.weight.shape == (DQ, DQ)
    assert module.key_proj.weight.shape == (DQ, DK) and module.v.shape == (DQ,)
    assert module.key_proj.bias is None, "Bahdanau's alignment model has no bias unless asked"


@pytest.mark.parametrize("mask_kind", [None, "padding", "rows with empty ones"])
def test_dot_equals_qkv_attention_with_scale_one(mask_kind):
    s, h, v = _inputs(dk=DQ)
    s = s * 2  # unscaled scores of size ~ sqrt(D) * 4: far from uniform weights
    mask = qmask = None
    if mask_kind == "padding":
        mask = torch.arange(NK)[None, :] < torch.tensor([7, 2, 5])[:, None]  # (B, Nk)
        qmask = mask[:, None, None, :]  # (B, Nk) -> (B, 1, 1, Nk)
    elif mask_kind is not None:
        mask = _row_mask(empty_rows=True)
        qmask = mask[:, None]  # (B, Nq, Nk) -> (B, 1, Nq, Nk)
    context, weights = GeneralAttention(DQ, score="dot")(s, h, v, mask=mask)
    one_head = lambda t: t[:, None]  # noqa: E731  (B, N, D) -> (B, 1, N, D)
    expected = qkv.attention(one_head(s), one_head(h), one_head(v), mask=qmask, scale=1.0)[:, 0]
    expected_w = qkv.attention_weights(one_head(s), one_head(h), mask=qmask, scale=1.0)[:, 0]
    torch.testing.assert_close(context, expected)
    torch.testing.assert_close(weights, expected_w)
    reference = qkv.reference.attention(one_head(s), one_head(h), one_head(v), mask=qmask, scale=1.0)[:, 0]
    torch.testing.assert_close(context, reference.to(context.dtype), rtol=1e-5, atol=1e-6)


def test_general_is_dot_attention_against_projected_keys():
    torch.manual_seed(2)
    module = GeneralAttention(DQ, DK)
    s, h, v = _inputs()
    mask = _row_mask(empty_rows=True)
    context, weights = module(s, h, v, mask=mask)
    wh = h @ module.key_proj.weight.T  # (B, Nk, Dk) @ (Dk, Dq) -> (B, Nk, Dq): W h
    expected = qkv.attention(s[:, None], wh[:, None], v[:, None], mask=mask[:, None], scale=1.0)[:, 0]
    torch.testing.assert_close(context, expected)
    # and sᵀ W h written out as one einsum
    # (B, Nq, Dq) (Dq, Dk) (B, Nk, Dk) -> (B, Nq, Nk)
    scores = torch.einsum("bid,de,bje->bij", s, module.key_proj.weight, h)
    probs = torch.softmax(scores.masked_fill(~mask, float("-inf")), -1).nan_to_num(0.0)
    torch.testing.assert_close(weights, probs)


@pytest.mark.parametrize("name", MODULE_NAMES)
def test_prepare_keys_then_attend_equals_forward(name):
    module, s, h, v = _module_and_inputs(name)
    mask = torch.arange(NK)[None, :] < torch.tensor([7, 3, 5])[:, None]  # (B, Nk)
    prepared = module.prepare_keys(h)
    for i in range(NQ):  # one query at a time, as a decoder loop does
        step_c, step_w = module.attend(s[:, i : i + 1], prepared, v, mask=mask)
        full_c, full_w = module(s, h, v, mask=mask)
        torch.testing.assert_close(step_c[:, 0], full_c[:, i])
        torch.testing.assert_close(step_w[:, 0], full_w[:, i])


def test_values_default_to_keys():
    module = GeneralAttention(DQ, score="dot")
    s, h, _ = _inputs(dk=DQ)
    torch.testing.assert_close(module(s, h)[0], module(s, h, h)[0])


def test_gradcheck_additive_with_a_mask():
    torch.manual_seed(4)
    module = AdditiveAttention(3, 2, hidden_dim=4, bias=True).double()
    g = torch.Generator().manual_seed(1)
    s = torch.randn(2, 2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    h = torch.randn(2, 4, 2, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor(
        [[[True, False, True, True], [False, False, False, False]], [[True] * 4, [False, True, False, True]]]
    )  # (B=2, Nq=2, Nk=4), one query row sees no key
    assert torch.autograd.gradcheck(lambda s, h, v: module(s, h, v, mask=mask), (s, h, v), fast_mode=True)


def _ones(*shape):
    return torch.ones(*shape, dtype=torch.bool)


BAD = {
    "query 2-D": ("query", "3-D", lambda s, h, v: dict(query=s[0], keys=h, values=v)),
    "query dim": ("query", "size 6", lambda s, h, v: dict(query=s[..., :4], keys=h, values=v)),
    "keys dim": ("keys", "size 5", lambda s, h, v: dict(query=s, keys=h[..., :4], values=v)),
    "keys batch": ("keys", "batch size 2", lambda s, h, v: dict(query=s, keys=h[:2], values=v[:2])),
    "keys dtype": ("keys", "torch.float64", lambda s, h, v: dict(query=s, keys=h.double(), values=v)),
    "no keys": ("keys", "Nk = 0", lambda s, h, v: dict(query=s, keys=h[:, :0], values=v[:, :0])),
    "values length": ("values", "(B, Nk)", lambda s, h, v: dict(query=s, keys=h, values=v[:, :5])),
    "integer query": ("query", "torch.int64", lambda s, h, v: dict(query=s.long(), keys=h, values=v)),
    "mask float": ("mask", "torch.bool", lambda s, h, v: dict(query=s, keys=h, values=v, mask=torch.ones(B, NK))),
    "mask shape": ("mask", "axis Nk has size 6", lambda s, h, v: dict(query=s, keys=h, values=v, mask=_ones(B, 6))),
    "mask rank": (
        "mask",
        "got shape (3, 1, 4, 7)",
        lambda s, h, v: dict(query=s, keys=h, values=v, mask=_ones(B, 1, NQ, NK)),
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_names_the_argument(case):
    argument, fragment, make = BAD[case]
    module = AdditiveAttention(DQ, DK)
    with pytest.raises(AttentionError) as info:
        module(**make(*_inputs()))
    message = str(info.value)
    assert message.startswith(f"{argument}:") and fragment in message, message


def test_module_dtype_mismatch_says_how_to_fix():
    s, h, v = _inputs(dtype=torch.float64)
    with pytest.raises(AttentionError, match=r"query: dtype torch.float64 differs from the module's torch.float32 "):
        AdditiveAttention(DQ, DK)(s, h, v)


def test_constructor_errors():
    with pytest.raises(AttentionError, match="score: 'concat' is Bahdanau's.*AdditiveAttention"):
        GeneralAttention(DQ, score="concat")
    with pytest.raises(AttentionError, match=r"score: expected one of \('dot', 'general'\), got 'cosine'"):
        GeneralAttention(DQ, score="cosine")
    with pytest.raises(AttentionError, match="key_dim: the 'dot' score needs key_dim == query_dim = 6, got 5"):
        GeneralAttention(DQ, DK, score="dot")
    with pytest.raises(AttentionError, match="hidden_dim: expected a positive int, got 0"):
        AdditiveAttention(DQ, hidden_dim=0)
