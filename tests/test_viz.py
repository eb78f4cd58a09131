"""qkv.viz pictures: heatmap and grid files of the right format and real content; the terminal view."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from rich.console import Console

import qkv
from qkv.viz import grid, heatmap, terminal_view

TOKENS = ["The", "cat", "sat", "on", "the", "mat", "."]
MAGIC = {"png": b"\x89PNG\r\n\x1a\n", "svg": b"<?xml", "pdf": b"%PDF-"}


def _matrix(n: int = 7, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(n, n, generator=g) * 2, dim=-1)


def _png_pixels(path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


@pytest.mark.parametrize("fmt", ["png", "svg", "pdf"])
def test_heatmap_writes_real_files(fmt, tmp_path):
    fig = heatmap(_matrix(), TOKENS, title="layer 0 · head 1")
    path = tmp_path / f"attention.{fmt}"
    fig.savefig(path)
    data = path.read_bytes()
    assert data.startswith(MAGIC[fmt])
    assert len(data) > 8_000  # a drawn matrix, labels and colour bar, not an empty canvas
    if fmt == "svg":
        assert b"<svg" in data and b"</svg>" in data
    if fmt == "pdf":
        assert data.rstrip().endswith(b"%%EOF")


def test_heatmap_png_shows_the_matrix_and_its_labels(tmp_path):
    w = torch.eye(7)
    fig = heatmap(w, TOKENS)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == TOKENS
    assert [t.get_text() for t in ax.get_xticklabels()] == TOKENS
    assert ax.get_xlabel() == "key (attended to)" and ax.get_ylabel() == "query (attending)"
    assert len(ax.texts) == 49  # small matrices print each weight
    assert np.array_equal(ax.images[0].get_array(), w.numpy())
    fig.savefig(tmp_path / "eye.png")
    pixels = _png_pixels(tmp_path / "eye.png")
    assert pixels.shape[0] > 300 and pixels.shape[1] > 300
    dark = (pixels.sum(-1) < 200).mean()  # the seven dark diagonal cells (and text)
    assert 0.01 < dark < 0.5


def test_heatmap_of_a_long_input_labels_every_kth_token_and_escapes_mathtext(tmp_path):
    n = 300
    tokens = [f"${i}" for i in range(n)]  # "$" would start matplotlib mathtext
    fig = heatmap(_matrix(n), tokens)
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels[:3] == [r"\$0", r"\$2", r"\$4"] and len(labels) == n // 2  # every other token
    assert min(t.get_fontsize() for t in fig.axes[0].get_yticklabels()) >= 5
    assert not fig.axes[0].texts  # no per-cell numbers on a large matrix
    fig.savefig(tmp_path / "long.png", dpi=40)
    assert (tmp_path / "long.png").stat().st_size > 20_000


def test_heatmap_cross_attention_labels_and_into_given_axes(tmp_path):
    from matplotlib.figure import Figure

    w = torch.softmax(torch.randn(2, 5), dim=-1)
    outer = Figure()
    ax = outer.add_subplot()
    fig = heatmap(w, ["new", "token"], key_tokens=["a", "b", "c", "new", "token"], ax=ax)
    assert fig is outer
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c", "new", "token"]


def test_heatmap_bad_input_names_the_argument():
    with pytest.raises(qkv.AttentionError, match=r"weights: expected one attention matrix \(Nq, Nk\).*rec.weights"):
        heatmap(torch.rand(2, 7, 7), TOKENS)
    with pytest.raises(qkv.AttentionError, match="tokens: 3 tokens given, but the weights have 7"):
        heatmap(_matrix(), TOKENS[:3])
    with pytest.raises(qkv.AttentionError, match="weights: expected probabilities"):
        heatmap(torch.randn(7, 7) * 3, TOKENS)
    with pytest.raises(qkv.AttentionError, match="weights: expected a torch.Tensor or numpy array"):
        heatmap([[1.0]])
    with pytest.raises(qkv.AttentionError, match="weights: expected float"):
        heatmap(torch.ones(2, 2, dtype=torch.long))


def test_grid_draws_layers_by_heads_with_blank_pruned_cells(tmp_path):
    weights = [torch.softmax(torch.randn(2, 4, 7, 7), -1), torch.softmax(torch.randn(2, 2, 7, 7), -1)]
    fig = grid(weights, TOKENS, batch=1, title="two layers")
    drawn = [ax for ax in fig.axes if ax.images]
    assert len(drawn) == 6  # 4 heads + 2 heads; the other 2 cells of layer 1 stay blank
    assert np.allclose(drawn[0].images[0].get_array(), weights[0][1, 0].numpy())
    assert fig.axes[0].get_title() == "head 0" and fig.axes[0].get_ylabel() == "layer 0"
    assert fig.get_suptitle() == "two layers"
    fig.savefig(tmp_path / "grid.png")
    pixels = _png_pixels(tmp_path / "grid.png")
    assert pixels.shape[1] > pixels.shape[0] and pixels.std() > 20  # wide (4 heads × 2 layers) and not blank
    fig.savefig(tmp_path / "grid.pdf")
    assert (tmp_path / "grid.pdf").read_bytes().startswith(b"%PDF-")


def test_grid_takes_a_stacked_recording():
    from qkv.interpret import record
    from qkv.nn import EncoderConfig, TransformerEncoder

    cfg = EncoderConfig.bert(vocab_size=30, embed_dim=16, num_layers=3, num_heads=2, ffn_dim=32)
    model = TransformerEncoder(cfg).eval()
    with record(model) as rec, torch.no_grad():
        model(torch.randint(0, 30, (1, 5)))
    fig = grid(rec.stack())  # (L, B, H, N, N)
    assert len([ax for ax in fig.axes if ax.images]) == 6
    with pytest.raises(qkv.AttentionError, match="weights: expected a list of"):
        grid(torch.rand(5, 5))


def _render(table, width: int = 100) -> str:
    out = io.StringIO()
    Console(file=out, width=width, color_system=None).print(table)
    return out.getvalue()


def test_terminal_view_names_the_top_keys_of_every_token():
    w = torch.zeros(7, 7)
    w[torch.arange(7), torch.tensor([0, 0, 1, 2, 3, 4, 5])] = 0.75  # mostly the previous token
    w[:, 0] += 0.25
    text = _render(terminal_view(w, TOKENS, top=2, title="previous token"))
    lines = text.splitlines()
    assert "previous token" in lines[0]
    row = next(line for line in lines if "│ 3 │" in line)
    assert "on" in row and "sat 0.75" in row and "The 0.25" in row
    assert "0123456" in text  # the strip's header: one column per key
    assert "█" in text


def test_terminal_view_long_inputs_masked_rows_and_errors():
    n = 80
    w = torch.softmax(torch.randn(n, n), -1)
    w[5] = 0.0  # a fully masked row
    text = _render(terminal_view(w, [f"w{i}" for i in range(n)]), width=120)
    assert "(no key allowed)" in text and "█" not in text.split("w0 ")[0]
    assert "0123456789" not in text  # no strip past 60 keys
    with pytest.raises(qkv.AttentionError, match="top: "):
        terminal_view(w, top=0)
    with pytest.raises(qkv.AttentionError, match="key_tokens: "):
        terminal_view(torch.full((2, 3), 1 / 3), ["a", "b"])
