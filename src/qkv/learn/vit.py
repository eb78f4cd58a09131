"""A tiny vision transformer on scikit-learn's 8×8 digits, built from `qkv.nn`, and its training.

An image is cut into 16 patches of 2×2 pixels; each patch (4 numbers) becomes a
token by a linear map, a learned ``[CLS]`` token goes in front, learned position
vectors are added, and a pre-norm `qkv.nn.TransformerEncoder` (bidirectional
attention over the 17 tokens) runs over them. The class is read from ``[CLS]``'s
final state. Token 0 is ``[CLS]``; token ``p`` (1..16) is the patch at row
``(p - 1) // 4``, column ``(p - 1) % 4``.

The data is ``sklearn.datasets.load_digits`` (1797 images shipped with
scikit-learn, no download), split once with a fixed seed into `TEST_SIZE` test
images and the rest for training. `train` trains with a fixed seed on one thread
and returns the model with its held-out accuracy.

>>> import torch
>>> from qkv.learn.vit import TinyViT, patches
>>> images = torch.arange(64.0).reshape(1, 8, 8)
>>> patches(images)[0, 1].tolist()        # patch 1 of 16: rows 0-1, columns 2-3
[2.0, 3.0, 10.0, 11.0]
>>> TinyViT()(torch.rand(3, 8, 8)).shape  # logits (B, 10)
torch.Size([3, 10])
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qkv.experiments.common import num_threads
from qkv.nn import EncoderConfig, LayerConfig, TransformerEncoder

PATCH = 2  # pixels per patch side
GRID = 8 // PATCH  # patches per image side
TOKENS = GRID * GRID + 1  # 16 patches + [CLS]
EMBED_DIM, NUM_HEADS, NUM_LAYERS, FFN_DIM = 32, 4, 2, 64
TEST_SIZE = 360
SEED = 0
EPOCHS, BATCH, LR = 40, 64, 3e-3


def patches(images: Tensor) -> Tensor:
    """``images (B, 8, 8)`` -> ``(B, 16, 4)``: 2×2 patches in row-major order, each flattened row by row."""
    b = images.shape[0]
    x = images.reshape(b, GRID, PATCH, GRID, PATCH)  # (B, 8, 8) -> (B, gy, py, gx, px)
    x = x.permute(0, 1, 3, 2, 4)  # (B, gy, py, gx, px) -> (B, gy, gx, py, px)
    return x.reshape(b, GRID * GRID, PATCH * PATCH)  # (B, gy, gx, py, px) -> (B, 16, 4)


class TinyViT(nn.Module):
    """Patches of 2×2 pixels + ``[CLS]`` through a pre-norm `qkv.nn.TransformerEncoder`; logits from ``[CLS]``."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(PATCH * PATCH, EMBED_DIM)
        self.cls = nn.Parameter(torch.randn(1, 1, EMBED_DIM) * 0.02)
        self.positions = nn.Parameter(torch.randn(1, TOKENS, EMBED_DIM) * 0.02)
        layer = LayerConfig(embed_dim=EMBED_DIM, num_heads=NUM_HEADS, ffn_dim=FFN_DIM, norm_first=True)
        self.encoder = TransformerEncoder(EncoderConfig(layer=layer, num_layers=NUM_LAYERS))
        self.head = nn.Linear(EMBED_DIM, 10)

    def forward(self, images: Tensor) -> Tensor:
        """``images (B, 8, 8)`` with pixels in [0, 1] -> logits ``(B, 10)``."""
        x = self.embed(patches(images))  # (B, 16, 4) -> (B, 16, E)
        cls = self.cls.expand(x.shape[0], -1, -1)  # (1, 1, E) -> (B, 1, E)
        x = torch.cat([cls, x], dim=1) + self.positions  # (B, 17, E)
        return self.head(self.encoder(x)[:, 0])  # (B, 17, E) -> (B, E) -> (B, 10)


@dataclass(frozen=True)
class Digits:
    """The fixed split: images ``(N, 8, 8)`` in [0, 1] (float32) and labels ``(N,)``."""

    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor


def digits() -> Digits:
    """scikit-learn's digits, pixels scaled to [0, 1], split with seed `SEED` (`TEST_SIZE` test images)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32) / 16.0  # (1797, 8, 8), pixels 0..16 -> 0..1
    labels = torch.tensor(data.target, dtype=torch.long)  # (1797,)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(SEED))
    test, rest = order[:TEST_SIZE], order[TEST_SIZE:]
    return Digits(images[rest], labels[rest], images[test], labels[test])


@dataclass(frozen=True)
class Trained:
    """What `train` gives: the model (eval mode), the data, the held-out accuracy and the seconds it took."""

    model: TinyViT
    data: Digits
    test_accuracy: float
    train_seconds: float


def accuracy(model: nn.Module, images: Tensor, labels: Tensor) -> float:
    """Share of ``images`` whose most likely class is the label."""
    with torch.no_grad():
        return (model(images).argmax(-1) == labels).double().mean().item()


def train(epochs: int = EPOCHS) -> Trained:
    """Train a `TinyViT` with AdamW for ``epochs`` passes over the training split (fixed seed, one thread)."""
    data = digits()
    start = time.perf_counter()
    with num_threads(1), torch.random.fork_rng():  # tiny models train fastest on one thread
        torch.manual_seed(SEED)
        model = TinyViT()
        opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01)
        steps = epochs * -(-len(data.train_labels) // BATCH)
        schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=max(1, steps))
        g = torch.Generator().manual_seed(SEED + 1)
        model.train()
        for _ in range(epochs):
            order = torch.randperm(len(data.train_labels), generator=g)
            for batch in order.split(BATCH):
                loss = F.cross_entropy(model(data.train_images[batch]), data.train_labels[batch])
                opt.zero_grad()
                loss.backward()
                opt.step()
                schedule.step()
        model.eval()
    seconds = time.perf_counter() - start
    return Trained(model, data, accuracy(model, data.test_images, data.test_labels), seconds)


__all__ = ["Digits", "TinyViT", "Trained", "accuracy", "digits", "patches", "train"]
