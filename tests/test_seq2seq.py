"""The GRU encoder–decoder: shapes, source padding, greedy decoding, the bottleneck, and that it learns."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from qkv.errors import AttentionError
from qkv.nn.seq2seq import GRUSeq2Seq

VARIANTS = [None, "additive", "general", "dot"]
SRC_V, TGT_V, B, S, T = 11, 13, 3, 7, 5
PAD, BOS = 0, 1


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: a second intra-op thread only adds sync cost, and on busy shared cores
    it makes these tests ~10x slower. Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model(attention, bidirectional=True, seed=0):
    torch.manual_seed(seed)
    return GRUSeq2Seq(SRC_V, TGT_V, embed_dim=8, hidden_dim=12, attention=attention, bidirectional=bidirectional)


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(2, SRC_V, (B, S), generator=g)
    tgt_in = torch.randint(2, TGT_V, (B, T), generator=g)
    tgt_in[:, 0] = BOS
    lengths = torch.tensor([S, 3, 5])
    src = src.masked_fill(torch.arange(S)[None, :] >= lengths[:, None], PAD)  # (1, S) >= (B, 1) -> (B, S)
    return src, tgt_in, lengths


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("attention", VARIANTS)
def test_shapes(attention, bidirectional):
    model = _model(attention, bidirectional)
    src, tgt_in, lengths = _batch()
    logits, weights = model.teacher_forced(src, tgt_in, lengths)
    assert logits.shape == (B, T, TGT_V) and torch.isfinite(logits).all()
    ids = model.greedy_decode(src, max_len=4, bos_id=BOS, src_lengths=lengths)
    assert ids.shape == (B, 4) and ids.dtype == torch.long
    if attention is None:
        assert weights is None
    else:
        assert weights.shape == (B, T, S)
        torch.testing.assert_close(weights.sum(-1), torch.ones(B, T))
        ids2, w = model.greedy_decode(src, max_len=4, bos_id=BOS, src_lengths=lengths, return_weights=True)
        assert torch.equal(ids2, ids) and w.shape == (B, 4, S)


@pytest.mark.parametrize("attention", VARIANTS)
def test_padded_source_positions_change_nothing(attention):
    model = _model(attention)
    src, tgt_in, lengths = _batch()
    pad = torch.arange(S)[None, :] >= lengths[:, None]  # (B, S): True past each sequence's end
    noisy = torch.where(pad, torch.randint(2, SRC_V, src.shape, generator=torch.Generator().manual_seed(9)), src)
    assert not torch.equal(noisy, src)
    logits, weights = model.teacher_forced(src, tgt_in, lengths)
    logits2, weights2 = model.teacher_forced(noisy, tgt_in, lengths)
    torch.testing.assert_close(logits2, logits, rtol=0, atol=1e-6)
    greedy = model.greedy_decode(src, 6, BOS, src_lengths=lengths)
    assert torch.equal(model.greedy_decode(noisy, 6, BOS, src_lengths=lengths), greedy)
    if attention is not None:
        assert torch.all(weights[pad[:, None, :].expand(B, T, S)] == 0)
        torch.testing.assert_close(weights2, weights, rtol=0, atol=1e-6)
    # and a padded sequence decodes exactly as it does alone, unpadded
    for b in range(B):
        n = int(lengths[b])
        alone = model(src[b : b + 1, :n], tgt_in[b : b + 1])
        torch.testing.assert_close(alone[0], logits[b], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("attention", VARIANTS)
def test_full_lengths_equal_no_lengths(attention):
    model = _model(attention)
    src, tgt_in, _ = _batch(seed=1)
    src = torch.randint(2, SRC_V, src.shape, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(model(src, tgt_in, torch.full((B,), S)), model(src, tgt_in), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("attention", VARIANTS)
def test_greedy_decode_is_argmax_of_teacher_forcing_on_its_own_output(attention):
    model = _model(attention, seed=3)
    src, _, lengths = _batch(seed=3)
    ids = model.greedy_decode(src, max_len=6, bos_id=BOS, src_lengths=lengths)
    tgt_in = torch.cat([torch.full((B, 1), BOS), ids[:, :-1]], dim=1)  # (B, 1) + (B, 5) -> (B, 6)
    assert torch.equal(model(src, tgt_in, lengths).argmax(-1), ids)
    if attention is not None:
        _, w = model.greedy_decode(src, max_len=6, bos_id=BOS, src_lengths=lengths, return_weights=True)
        torch.testing.assert_close(model.attention_weights(src, tgt_in, lengths), w)


def test_greedy_decode_stops_at_eos_and_fills_with_it():
    model = _model("additive", seed=4)
    src, _, lengths = _batch(seed=4)
    free = model.greedy_decode(src, max_len=8, bos_id=BOS, src_lengths=lengths)
    eos = int(free[0, 0])  # the first sequence "ends" at once; would go on with other tokens
    assert not torch.all(free[0, 1:] == eos), "the fill must matter for this test to mean anything"
    first = [int((row == eos).nonzero()[0]) if (row == eos).any() else None for row in free]
    ids = model.greedy_decode(src, max_len=8, bos_id=BOS, eos_id=eos, src_lengths=lengths)
    assert ids.shape[1] == (8 if None in first else max(first) + 1), "stops once every sequence has ended"
    for b, row in enumerate(ids):
        stop = first[b]
        if stop is None:
            assert torch.equal(row, free[b]) and eos not in row
        else:
            assert torch.equal(row[: stop + 1], free[b, : stop + 1])
            assert torch.all(row[stop:] == eos)
    alone = model.greedy_decode(src[:1], max_len=8, bos_id=BOS, eos_id=eos, src_lengths=lengths[:1])
    assert alone.shape == (1, first[0] + 1) and int(alone[0, -1]) == eos


def test_bottleneck_decoder_sees_only_the_final_state():
    """attention=None: scrambling every encoder state but the summary changes nothing."""

    class Scrambled(GRUSeq2Seq):
        def encode(self, src, src_lengths=None):
            enc = super().encode(src, src_lengths)
            enc.annotations = torch.randn_like(enc.annotations) * 100
            return enc

    src, tgt_in, lengths = _batch()
    for attention, same in [(None, True), ("additive", False)]:
        model = _model(attention)
        scrambled = _model(attention)
        scrambled.__class__ = Scrambled
        equal = torch.allclose(scrambled(src, tgt_in, lengths), model(src, tgt_in, lengths))
        assert equal == same


def test_bottleneck_has_no_weights():
    model = _model(None)
    src, tgt_in, _ = _batch()
    with pytest.raises(AttentionError, match="attention=None"):
        model.attention_weights(src, tgt_in)
    with pytest.raises(AttentionError, match="return_weights"):
        model.greedy_decode(src, 3, BOS, return_weights=True)


def _reverse_task(n, generator, vocab=10, length=6):
    src = torch.randint(2, vocab, (n, length), generator=generator)
    tgt = src.flip(1)
    tgt_in = torch.cat([torch.full((n, 1), BOS), tgt[:, :-1]], dim=1)  # (n, 1) + (n, L-1) -> (n, L)
    return src, tgt_in, tgt


def _train(attention, steps, lr, seed=0):
    torch.manual_seed(seed)
    model = GRUSeq2Seq(10, embed_dim=16, hidden_dim=32, attention=attention)
    test_src, test_tgt_in, test_tgt = _reverse_task(512, torch.Generator().manual_seed(99))

    def accuracy():
        return (model.greedy_decode(test_src, 6, BOS) == test_tgt).float().mean().item()

    before = accuracy()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        src, tgt_in, tgt = _reverse_task(64, g)
        loss = F.cross_entropy(model(src, tgt_in).flatten(0, 1), tgt.flatten())  # (B*T, V), (B*T,)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model, before, accuracy(), (test_src, test_tgt_in)


@pytest.mark.parametrize("attention, steps, lr", [("additive", 200, 2e-2), ("general", 150, 1e-2)])
def test_attention_model_learns_to_reverse_and_its_weights_show_the_alignment(attention, steps, lr):
    """Reverse 6 tokens over 8 symbols: ~1-2 s of CPU training."""
    model, before, after, (src, tgt_in) = _train(attention, steps, lr)
    assert before < 0.3, "an untrained model is near chance (1/8)"
    assert after > 0.85, f"token accuracy {after:.3f} after {steps} steps"
    # Output i should look at source position 5 - i. Querying with the previous decoder
    # state (Bahdanau's s_{i-1}) lets a model learn the alignment one step early or late,
    # so allow ±1: chance is 16/36 ≈ 0.44.
    w = model.attention_weights(src[:256], tgt_in[:256])  # (256, T=6, S=6)
    near_antidiagonal = ((w.argmax(-1) - torch.arange(5, -1, -1)).abs() <= 1).float().mean().item()
    assert near_antidiagonal > 0.9, near_antidiagonal


BAD = {
    "float src": ("src", "torch.int64", lambda src, tgt, n: dict(src=src.float(), tgt_in=tgt)),
    "1-D src": ("src", "2-D", lambda src, tgt, n: dict(src=src[0], tgt_in=tgt)),
    "src out of vocab": ("src", "[0, 11)", lambda src, tgt, n: dict(src=src + 20, tgt_in=tgt)),
    "tgt out of vocab": ("tgt_in", "[0, 13)", lambda src, tgt, n: dict(src=src, tgt_in=tgt - 5)),
    "tgt batch": ("tgt_in", "batch size 2", lambda src, tgt, n: dict(src=src, tgt_in=tgt[:2])),
    "zero length": ("src_lengths", "[1, S=7]", lambda src, tgt, n: dict(src=src, tgt_in=tgt, src_lengths=[7, 0, 3])),
    "too long": ("src_lengths", "max 8", lambda src, tgt, n: dict(src=src, tgt_in=tgt, src_lengths=[7, 8, 3])),
    "lengths shape": ("src_lengths", "(B=3,)", lambda src, tgt, n: dict(src=src, tgt_in=tgt, src_lengths=[7, 3])),
    "float lengths": ("src_lengths", "integer", lambda src, tgt, n: dict(src=src, tgt_in=tgt, src_lengths=n.float())),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_names_the_argument(case):
    argument, fragment, make = BAD[case]
    src, tgt_in, lengths = _batch()
    with pytest.raises(AttentionError) as info:
        _model("additive")(**make(src, tgt_in, lengths))
    message = str(info.value)
    assert message.startswith(f"{argument}:") and fragment in message, message


def test_constructor_and_decode_errors():
    with pytest.raises(AttentionError, match=r"attention: expected one of \(None, 'additive', 'general', 'dot'\)"):
        GRUSeq2Seq(10, attention="luong")
    with pytest.raises(AttentionError, match="hidden_dim: .* must be even, got 7"):
        GRUSeq2Seq(10, hidden_dim=7)
    GRUSeq2Seq(10, hidden_dim=7, bidirectional=False)  # fine with one direction
    model = _model("dot")
    src, _, _ = _batch()
    with pytest.raises(AttentionError, match="max_len: expected a positive int, got 0"):
        model.greedy_decode(src, 0, BOS)
    with pytest.raises(AttentionError, match=r"bos_id: expected a token id in \[0, 13\), got 13"):
        model.greedy_decode(src, 3, 13)
