"""A GRU encoder–decoder over token ids: the fixed-vector bottleneck, or attention over all encoder states.

One model, three ways for the decoder to see the source (``attention=``)::

    encoder:  E x_1..x_S -> (bi)GRU -> annotations h_1..h_S (B, S, H) and summary h (B, H)
              (summary = the final hidden state of each direction, concatenated)
    decoder:  s_0 = tanh(W_init · summary); at step i, with y_{i-1} the previous target token:
        c_i = summary                                  attention=None       the bottleneck (Cho et al. 2014)
        c_i = Σ_j a_ij h_j,  a_i = attn(s_{i-1}, h)    attention="additive" Bahdanau et al. 2014
                                                       attention="general" | "dot"  Luong et al. 2015 scores
        s_i = GRUCell([E y_{i-1}; c_i], s_{i-1})
        logits_i = W_out [s_i; c_i; E y_{i-1}]

Only where ``c_i`` comes from differs, so the variants compare fairly: the bottleneck
squeezes a source of any length through one ``H``-vector, the attention models re-read
every encoder state at every step. The Luong scores plug into Bahdanau's data flow
(query ``s_{i-1}``, context fed to the GRU), not Luong's (query ``s_i``, output from
``tanh(W_c [c_i; s_i])``, input feeding). Source padding is handled by
``src_lengths``: the encoder never reads past a sequence's end (packed GRU) and
attention never attends there (mask).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from qkv.errors import AttentionError
from qkv.nn.additive import AdditiveAttention, GeneralAttention

ATTENTIONS = (None, "additive", "general", "dot")


@dataclass
class Encoded:
    """What the encoder hands the decoder."""

    annotations: Tensor  # (B, S, H): one state per source position (0 past a sequence's end)
    summary: Tensor  # (B, H): the final state of each direction, concatenated
    mask: Tensor | None  # (B, S) bool, True = a real token; None = no padding


def _check_ids(name: str, ids: object, vocab: int, layout: str) -> Tensor:
    if not isinstance(ids, Tensor):
        raise AttentionError(f"{name}: expected a LongTensor of token ids {layout}, got {type(ids).__name__}")
    if ids.dim() != 2 or ids.shape[1] == 0:
        raise AttentionError(
            f"{name}: expected a 2-D tensor of token ids {layout} with N >= 1, got shape {tuple(ids.shape)}"
        )
    if ids.dtype not in (torch.int64, torch.int32):
        raise AttentionError(
            f"{name}: expected integer token ids (torch.int64), got {ids.dtype}; convert with {name}.long()"
        )
    if ids.numel() and (ids.min() < 0 or ids.max() >= vocab):
        raise AttentionError(
            f"{name}: token ids must lie in [0, {vocab}) (the vocabulary size), got min {ids.min().item()} "
            f"and max {ids.max().item()}"
        )
    return ids.long()


def _check_lengths(src_lengths: object, src: Tensor) -> Tensor | None:
    if src_lengths is None:
        return None
    b, s = src.shape
    if isinstance(src_lengths, (list, tuple)):
        src_lengths = torch.tensor(src_lengths)
    if not isinstance(src_lengths, Tensor) or src_lengths.dtype.is_floating_point or src_lengths.dtype == torch.bool:
        raise AttentionError(f"src_lengths: expected None or integer lengths (B={b},), got {src_lengths!r}")
    if src_lengths.shape != (b,):
        raise AttentionError(f"src_lengths: expected shape (B={b},), got {tuple(src_lengths.shape)}")
    if src_lengths.min() < 1 or src_lengths.max() > s:
        raise AttentionError(
            f"src_lengths: every length must lie in [1, S={s}], got min {src_lengths.min().item()} "
            f"and max {src_lengths.max().item()}"
        )
    return src_lengths.to(device=src.device, dtype=torch.long)


class GRUSeq2Seq(nn.Module):
    """GRU encoder–decoder over token ids; ``attention`` picks how the decoder sees the source.

    Args:
        src_vocab: source vocabulary size.
        tgt_vocab: target vocabulary size; defaults to ``src_vocab``.
        embed_dim: token embedding size (source and target each have their own table).
        hidden_dim: ``H``, the decoder state and the annotation size. A bidirectional
            encoder runs ``H/2`` per direction, so it must be even.
        attention: ``None`` (fixed-vector bottleneck), ``"additive"`` (Bahdanau),
            ``"general"`` or ``"dot"`` (Luong scores). See the module docstring.
        bidirectional: a bidirectional encoder, as Bahdanau et al. used.

    >>> import torch
    >>> from qkv.nn.seq2seq import GRUSeq2Seq
    >>> _ = torch.manual_seed(0)
    >>> model = GRUSeq2Seq(src_vocab=10, tgt_vocab=12, attention="additive")
    >>> src = torch.randint(3, 10, (2, 7))                          # (B, S)
    >>> tgt_in = torch.randint(3, 12, (2, 5))                       # (B, T): BOS then the target, shifted
    >>> model(src, tgt_in, src_lengths=torch.tensor([7, 4])).shape  # logits (B, T, V)
    torch.Size([2, 5, 12])
    >>> ids, weights = model.greedy_decode(src, max_len=6, bos_id=1, return_weights=True)
    >>> ids.shape, weights.shape                                    # (B, T), (B, T, S)
    (torch.Size([2, 6]), torch.Size([2, 6, 7]))
    """

    def __init__(
        self,
        src_vocab: int,
        tgt_vocab: int | None = None,
        *,
        embed_dim: int = 32,
        hidden_dim: int = 64,
        attention: str | None = "additive",
        bidirectional: bool = True,
    ):
        super().__init__()
        tgt_vocab = src_vocab if tgt_vocab is None else tgt_vocab
        sizes = {"src_vocab": src_vocab, "tgt_vocab": tgt_vocab, "embed_dim": embed_dim, "hidden_dim": hidden_dim}
        for name, value in sizes.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise AttentionError(f"{name}: expected a positive int, got {value!r}")
        if attention not in ATTENTIONS:
            raise AttentionError(f"attention: expected one of {ATTENTIONS}, got {attention!r}")
        directions = 2 if bidirectional else 1
        if hidden_dim % directions:
            raise AttentionError(
                "hidden_dim: a bidirectional encoder runs hidden_dim/2 per direction, so hidden_dim must be "
                f"even, got {hidden_dim}; or pass bidirectional=False"
            )
        self.src_vocab, self.tgt_vocab, self.hidden_dim = src_vocab, tgt_vocab, hidden_dim
        self.attention_kind = attention
        self.src_embed = nn.Embedding(src_vocab, embed_dim)
        self.tgt_embed = nn.Embedding(tgt_vocab, embed_dim)
        self.encoder = nn.GRU(embed_dim, hidden_dim // directions, batch_first=True, bidirectional=bidirectional)
        self.init_state = nn.Linear(hidden_dim, hidden_dim)
        self.attention: AdditiveAttention | GeneralAttention | None
        if attention == "additive":
            self.attention = AdditiveAttention(hidden_dim, hidden_dim, hidden_dim)
        elif attention in ("general", "dot"):
            self.attention = GeneralAttention(hidden_dim, hidden_dim, score=attention)
        else:
            self.attention = None
        self.cell = nn.GRUCell(embed_dim + hidden_dim, hidden_dim)
        self.out = nn.Linear(2 * hidden_dim + embed_dim, tgt_vocab)

    def encode(self, src: Tensor, src_lengths: Tensor | None = None) -> Encoded:
        """Run the encoder over ``src (B, S)``; positions at or past ``src_lengths`` are never read."""
        src = _check_ids("src", src, self.src_vocab, "(B, S)")
        lengths = _check_lengths(src_lengths, src)
        b, s = src.shape
        x = self.src_embed(src)  # (B, S) -> (B, S, E)
        if lengths is None:
            annotations, h_n = self.encoder(x)  # (B, S, H), (dirs, B, H/dirs)
            mask = None
        else:
            packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
            out, h_n = self.encoder(packed)  # h_n (dirs, B, H/dirs): each direction's state at its sequence's end
            annotations, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=s)  # (B, S, H)
            mask = torch.arange(s, device=src.device)[None, :] < lengths[:, None]  # (1, S) < (B, 1) -> (B, S)
        # (dirs, B, H/dirs) -> (B, dirs, H/dirs) -> (B, H): forward final state, then backward final state
        summary = h_n.transpose(0, 1).reshape(b, self.hidden_dim)
        return Encoded(annotations, summary, mask)

    def _step(
        self, y_prev: Tensor, state: Tensor, enc: Encoded, prepared: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """One decoder step from ``y_prev (B,)``: ``logits (B, V)``, new ``state (B, H)``, ``weights (B, S) | None``."""
        e = self.tgt_embed(y_prev)  # (B,) -> (B, E)
        if self.attention is None:
            context, weights = enc.summary, None  # (B, H): the same vector at every step
        else:
            assert prepared is not None, "_start prepares the keys whenever there is attention"
            context, weights = self.attention.attend(state[:, None, :], prepared, enc.annotations, mask=enc.mask)
            context, weights = context[:, 0], weights[:, 0]  # (B, 1, H) -> (B, H), (B, 1, S) -> (B, S)
        state = self.cell(torch.cat([e, context], dim=-1), state)  # (B, E + H) -> (B, H)
        logits = self.out(torch.cat([state, context, e], dim=-1))  # (B, 2H + E) -> (B, V)
        return logits, state, weights

    def _start(self, enc: Encoded) -> tuple[Tensor, Tensor | None]:
        state = torch.tanh(self.init_state(enc.summary))  # (B, H)
        prepared = None if self.attention is None else self.attention.prepare_keys(enc.annotations)
        return state, prepared

    def teacher_forced(
        self, src: Tensor, tgt_in: Tensor, src_lengths: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """``logits (B, T, V)`` and attention ``weights (B, T, S)`` (``None`` for the bottleneck)."""
        enc = self.encode(src, src_lengths)
        tgt_in = _check_ids("tgt_in", tgt_in, self.tgt_vocab, "(B, T)")
        if tgt_in.shape[0] != src.shape[0]:
            raise AttentionError(f"tgt_in: batch size {tgt_in.shape[0]} differs from src's {src.shape[0]}")
        state, prepared = self._start(enc)
        logits: list[Tensor] = []
        weights: list[Tensor] = []  # empty without attention
        for i in range(tgt_in.shape[1]):
            step_logits, state, w = self._step(tgt_in[:, i], state, enc, prepared)
            logits.append(step_logits)
            if w is not None:
                weights.append(w)
        logits_t = torch.stack(logits, dim=1)  # T × (B, V) -> (B, T, V)
        if self.attention is None:
            return logits_t, None
        return logits_t, torch.stack(weights, dim=1)  # T × (B, S) -> (B, T, S)

    def forward(self, src: Tensor, tgt_in: Tensor, src_lengths: Tensor | None = None) -> Tensor:
        """Teacher forcing: ``src (B, S)``, ``tgt_in (B, T)`` (BOS + target[:-1]) -> ``logits (B, T, V)``."""
        return self.teacher_forced(src, tgt_in, src_lengths)[0]

    def attention_weights(self, src: Tensor, tgt_in: Tensor, src_lengths: Tensor | None = None) -> Tensor:
        """Teacher-forced attention weights ``(B, T, S)``: row ``i`` is where output ``i`` looked."""
        if self.attention is None:
            raise AttentionError(
                "attention: this model was built with attention=None (the bottleneck); it has no weights"
            )
        weights = self.teacher_forced(src, tgt_in, src_lengths)[1]
        assert weights is not None, "a model with attention returns its weights"
        return weights

    @torch.no_grad()
    def greedy_decode(
        self,
        src: Tensor,
        max_len: int,
        bos_id: int,
        eos_id: int | None = None,
        *,
        src_lengths: Tensor | None = None,
        return_weights: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Greedy decoding: ``ids (B, T)``, ``T <= max_len``, BOS not included.

        With ``eos_id`` decoding stops once every sequence has emitted it; a finished
        sequence is filled with ``eos_id``. With ``return_weights`` also the attention
        ``weights (B, T, S)`` of each emitted token (not for ``attention=None``).
        """
        if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
            raise AttentionError(f"max_len: expected a positive int, got {max_len!r}")
        for name, value in (("bos_id", bos_id), ("eos_id", eos_id)):
            if value is not None and not 0 <= value < self.tgt_vocab:
                raise AttentionError(f"{name}: expected a token id in [0, {self.tgt_vocab}), got {value!r}")
        if return_weights and self.attention is None:
            raise AttentionError(
                "return_weights: this model was built with attention=None (the bottleneck); it has no weights"
            )
        enc = self.encode(src, src_lengths)
        state, prepared = self._start(enc)
        y = torch.full((src.shape[0],), bos_id, dtype=torch.long, device=src.device)  # (B,)
        done = torch.zeros_like(y, dtype=torch.bool)  # (B,)
        ids: list[Tensor] = []
        weights: list[Tensor] = []  # empty without attention
        for _ in range(max_len):
            logits, state, w = self._step(y, state, enc, prepared)
            y = logits.argmax(dim=-1)  # (B, V) -> (B,)
            if eos_id is not None:
                y = y.masked_fill(done, eos_id)
                done = done | (y == eos_id)
            ids.append(y)
            if w is not None:
                weights.append(w)
            if eos_id is not None and bool(done.all()):
                break
        ids_t = torch.stack(ids, dim=1)  # T × (B,) -> (B, T)
        if not return_weights:
            return ids_t
        return ids_t, torch.stack(weights, dim=1)  # T × (B, S) -> (B, T, S)

    def extra_repr(self) -> str:
        return f"attention={self.attention_kind!r}"


__all__ = ["GRUSeq2Seq", "Encoded"]
