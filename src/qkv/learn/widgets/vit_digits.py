"""Attention beyond language: where a tiny vision transformer looks in an 8×8 digit.

`qkv.learn.vit.TinyViT` (16 patches of 2×2 pixels + ``[CLS]``, a two-layer pre-norm
`qkv.nn.TransformerEncoder` with four heads) is trained once per process on
scikit-learn's bundled digits (fixed seed, fixed split, a few seconds on one
thread; cached with ``functools.lru_cache``, one training at a time). A call
runs the trained model, in ``env.dtype`` (a copy), on test image ``index`` and
records, with `qkv.interpret.record`, the attention of query token ``patch``
(0 = ``[CLS]``, 1..16 the patches in row-major order) in ``layer`` and ``head``.

Facts: ``test_accuracy`` (share of the held-out split classified right),
``prediction`` and ``label`` of the image, ``top_patch`` (1..16: the patch the
query gives the most weight; ``[CLS]``'s own weight is in the caption) and
``train_seconds`` (how long the training took in this process).

Caveats: a small model on small images, trained for seconds; one head's
attention is where it reads from, not a proof of what decided the class.
"""

from __future__ import annotations

import copy
import functools
import threading
from typing import Any

import torch

from qkv.interpret import record
from qkv.learn.vit import GRID, NUM_HEADS, NUM_LAYERS, TOKENS, Trained, accuracy, train
from qkv.learn.widget import Control, Env, Result, Widget, register

TEST_IMAGES = 100  # the images a learner can pick (of the held-out split)

_LOCK = threading.Lock()  # one training
_COPY_LOCK = threading.Lock()  # one copy per dtype


@functools.lru_cache(maxsize=1)
def _trained() -> Trained:
    return train()


def trained() -> Trained:
    """The trained `TinyViT` of this process (trained on the first call)."""
    with _LOCK:
        return _trained()


@functools.lru_cache(maxsize=4)
def _model_in(dtype: torch.dtype) -> tuple[torch.nn.Module, float]:
    run = trained()
    model = copy.deepcopy(run.model).to(dtype)
    return model, accuracy(model, run.data.test_images.to(dtype), run.data.test_labels)


def model_in(dtype: torch.dtype) -> tuple[torch.nn.Module, float]:
    """A copy of the trained model in ``dtype`` and its held-out accuracy in that precision (cached)."""
    with _COPY_LOCK:
        return _model_in(dtype)


def _label(token: int) -> str:
    return "CLS" if token == 0 else f"patch {token} (row {(token - 1) // GRID}, col {(token - 1) % GRID})"


@register
class VitDigits(Widget):
    """A tiny ViT's attention over the patches of an 8×8 digit, from `qkv.interpret.record`."""

    name = "vit-digits"
    title = "Attention over image patches"
    controls = (
        Control("index", "slider", "test image", 0, low=0, high=TEST_IMAGES - 1, step=1),
        Control("layer", "slider", "layer", 0, low=0, high=NUM_LAYERS - 1, step=1),
        Control("head", "slider", "head", 0, low=0, high=NUM_HEADS - 1, step=1),
        Control("patch", "slider", "query token (0 = CLS)", 0, low=0, high=TOKENS - 1, step=1),
    )
    facts = ("test_accuracy", "prediction", "label", "top_patch", "train_seconds")

    def compute(self, args: dict[str, Any], env: Env) -> Result:
        run = trained()
        model, test_accuracy = model_in(env.dtype)
        index, layer, head, query = args["index"], args["layer"], args["head"], args["patch"]
        image = run.data.test_images[index].to(env.dtype)  # (8, 8)
        with torch.no_grad(), record(model, layers=[layer], heads=[head], rows=[query]) as rec:
            logits = model(image[None])  # (1, 8, 8) -> (1, 10)
        weights = rec.weights[0][0, 0, 0]  # (1, 1, 1, 17) -> (17,)
        patch_weights = weights[1:].reshape(GRID, GRID)  # (16,) -> (4, 4), row-major like the patches
        top = int(weights[1:].argmax().item()) + 1
        label = int(run.data.test_labels[index].item())
        prediction = int(logits.argmax(-1).item())
        facts = {
            "test_accuracy": test_accuracy,
            "prediction": prediction,
            "label": label,
            "top_patch": top,
            "train_seconds": round(run.train_seconds, 3),
        }
        pixels = {
            "kind": "matrix",
            "title": f"Test image {index}: label {label}, predicted {prediction}",
            "rows": [str(r) for r in range(8)],
            "cols": [str(c) for c in range(8)],
            "values": [[round(float(p), 4) for p in row] for row in image.tolist()],
            "caption": "pixel intensity 0..1; the model sees 16 patches of 2×2 pixels",
        }
        attention = {
            "kind": "matrix",
            "title": f"Where {_label(query)} looks: layer {layer}, head {head}",
            "rows": [str(r) for r in range(GRID)],
            "cols": [str(c) for c in range(GRID)],
            "values": [[round(float(w), 5) for w in row] for row in patch_weights.tolist()],
            "caption": (
                f"attention weights over the 16 patches; the weight on CLS is {weights[0].item():.3f} "
                f"(all 17 sum to 1); most weight on {_label(top)}"
            ),
        }
        text = (
            f"The model classifies **{test_accuracy:.1%}** of the {len(run.data.test_labels)} held-out images "
            f"right after {run.train_seconds:.0f} s of training in this process. This image is a {label}; the model "
            f"says {prediction}. In layer {layer}, head {head}, {_label(query)} puts the most weight on "
            f"{_label(top)} ({weights[top].item():.0%}).\n\n"
            "The same attention as in a language model: tokens are patches instead of words, and every patch may "
            "attend to every other. A small model on small images trained for seconds; a head's weights show where "
            "it reads from, not what decided the class."
        )
        return Result(views=[pixels, attention, {"kind": "text", "text": text}], facts=facts)
