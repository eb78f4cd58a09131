"""The learner's attention inside a real model: what changes in SmolLM2's next token or MiniLM's embeddings.

``qkv learn check FILE.py --in-model smollm2|minilm`` runs, in a child process with
time and memory limits, the model once with its own attention and once with the
learner's ``attention(q, k, v, mask=None)`` swapped into every attention layer (the
``attention`` that `qkv.nn.MultiHeadAttention` calls). Grouped-query heads are
expanded and ``causal=True`` becomes a bottom-right aligned bool mask before the
learner's function sees them, so it gets exactly the exercise's arguments. The model's
own numbers are computed before the learner's file is imported.

SmolLM2: the next-token top 5 with probabilities after a prompt, the KL divergence of
the two distributions, and the perplexity of a short text. MiniLM: the cosine
similarities of sentence pairs, and how far each sentence's embedding moved.
"""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from qkv.learn.errors import LearnError

__all__ = ["MODELS", "check_model_name", "run_in_model", "show"]

MODELS = ("smollm2", "minilm")
PROMPT = "The capital of France is"
TEXT = "The quick brown fox jumps over the lazy dog. It was a sunny day, and the children played in the park."
SENTENCES = ("A cat sits on the mat.", "A kitten rests on a rug.", "The stock market fell sharply today.")


def check_model_name(model: object, exercise: str) -> None:
    """Refuse a model qkv cannot swap into, or an exercise with no attention function to swap in."""
    if model not in MODELS:
        raise LearnError(f"in_model: expected one of {list(MODELS)}, got {model!r}")
    if exercise != "attention":
        raise LearnError(
            f"in_model: a model's layers take an attention(q, k, v, mask=None) function; exercise {exercise!r} "
            "has none: use --in-model with the attention exercise"
        )


def run_in_model(file: str | os.PathLike[str], model: str, *, timeout: float = 120.0, memory_mb: int = 4096) -> dict:
    """Run the model with its own and with the learner's attention in a child process; the comparison as JSON."""
    from qkv.learn.exercises.runner import child_environment, kill_group

    with tempfile.TemporaryDirectory(prefix="qkv-in-model-") as workdir:
        Path(workdir, "request.json").write_text(json.dumps({"file": str(Path(file).resolve()), "model": model}))
        env = child_environment(workdir)
        env["HOME"] = os.environ.get("HOME", workdir)  # where the model packages' caches may live
        code = "from qkv.learn.exercises.in_model import child_main; child_main()"
        with open(Path(workdir, "stderr.txt"), "wb") as err:
            process = subprocess.Popen(
                [sys.executable, "-I", "-c", code, workdir, str(int(memory_mb)), str(int(timeout) + 5)],
                cwd=workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,
            )
            try:
                status = process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                status = None
            finally:
                kill_group(process)
        result_path = Path(workdir, "result.json")
        if status is None:
            return {"model": model, "error": {"type": "Timeout", "message": f"no result after {timeout:g} s"}}
        if not result_path.exists() or result_path.stat().st_size > 1 << 20:
            tail = Path(workdir, "stderr.txt").read_bytes()[-300:].decode("utf-8", "replace").strip()
            return {"model": model, "error": {"type": "Crash", "message": f"the model run ended ({status}): {tail}"}}
        return json.loads(result_path.read_text(encoding="utf-8"))


# -- in the child ------------------------------------------------------------------------------------


def child_main() -> None:  # pragma: no cover - runs in the child process (exercised through run_in_model)
    from qkv.learn.exercises import _child

    workdir, memory_mb, cpu_s = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    _child._limit(memory_mb, cpu_s)
    request = json.loads(Path(workdir, "request.json").read_text(encoding="utf-8"))
    result: dict[str, Any] = {"model": request["model"]}
    try:
        result.update(_compare(request["file"], request["model"]))
    except _LearnerError as error:
        result["error"] = error.info
    Path(workdir, "result.json").write_text(json.dumps(result), encoding="utf-8")


class _LearnerError(Exception):
    def __init__(self, info: dict[str, Any]) -> None:
        super().__init__(info.get("message"))
        self.info = info


def _compare(file: str, model_name: str) -> dict[str, Any]:  # pragma: no cover - in the child

    import numpy as np
    import torch

    import qkv.nn.attention as layer
    from qkv.backends.reference import causal_allowed
    from qkv.learn.exercises import _child
    from qkv.models import load

    torch.set_grad_enabled(False)
    loaded = load(model_name)
    run = _smollm2 if model_name == "smollm2" else _minilm
    own = run(loaded)  # before any of the learner's code exists in this process

    path = os.path.abspath(file)
    captured = io.StringIO()
    sys.stdout = sys.stderr = captured
    try:
        module = _child.load_learner(path)
    except BaseException as error:  # noqa: BLE001 - reported, not raised
        raise _LearnerError(_child._where(error, path)) from None
    finally:
        sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
    fn = getattr(module, "attention", None)
    if not callable(fn):
        raise _LearnerError({"type": "Missing", "message": "your file defines no function attention"})
    lib = _child._library(module)
    convert = _child._converter(lib)
    calls = [0]

    def learner_attention(q, k, v, *, mask=None, bias=None, causal=False, **_: Any):
        if bias is not None:
            raise _LearnerError(
                {
                    "type": "Unsupported",
                    "message": "this model adds a score bias, which the exercise's "
                    "attention(q, k, v, mask) has no argument for",
                }
            )
        hq, hkv = q.shape[1], k.shape[1]
        if hq != hkv:  # grouped-query attention: query head h reads kv head h // (Hq // Hkv)
            k = k.repeat_interleave(hq // hkv, dim=1)  # (B, Hkv, Nk, D) -> (B, Hq, Nk, D)
            v = v.repeat_interleave(hq // hkv, dim=1)  # (B, Hkv, Nk, Dv) -> (B, Hq, Nk, Dv)
        allowed = None
        if mask is not None:
            allowed = mask if isinstance(mask, torch.Tensor) else mask.to_dense(q.shape[0], hq, q.shape[2], k.shape[2])
            allowed = allowed.bool()
        if causal:
            c = causal_allowed(q.shape[2], k.shape[2], q.device)  # (Nq, Nk), bottom-right aligned
            allowed = c if allowed is None else allowed & c
        args = [convert(t.detach().cpu().numpy()) for t in (q, k, v)]
        kwargs = {"mask": None if allowed is None else convert(allowed.cpu().numpy())}
        sys.stdout = sys.stderr = captured
        try:
            out = fn(*args, **kwargs)
        except BaseException as error:  # noqa: BLE001
            raise _LearnerError(_child._where(error, path)) from None
        finally:
            sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
        array = _child._to_numpy(out)
        want = (*q.shape[:-1], v.shape[-1])
        if array is None or tuple(array.shape) != want:
            shape = None if array is None else tuple(array.shape)
            raise _LearnerError(
                {"type": "Shape", "message": f"inside the model your attention returned shape {shape}; expected {want}"}
            )
        calls[0] += 1
        return torch.from_numpy(np.array(array, dtype=np.float64)).to(q.dtype)

    layer.attention = learner_attention  # what every qkv.nn.MultiHeadAttention calls
    yours = run(loaded)
    return {"own": own, "yours": yours, "calls": calls[0], "library": lib, **_differences(model_name, own, yours)}


def _smollm2(lm) -> dict[str, Any]:  # pragma: no cover - in the child
    import torch

    ids = torch.tensor([lm.encode(PROMPT)])  # (1, N)
    logits = lm.model(ids)[0, -1].double()  # (V,)
    probs = torch.softmax(logits, -1)
    top = torch.topk(probs, 5)
    tokens = lm.tokenizer.tokens(top.indices.tolist())
    text = torch.tensor([lm.encode(TEXT)])  # (1, T)
    logp = torch.log_softmax(lm.model(text)[0, :-1].double(), -1)  # (T-1, V)
    nll = -logp.gather(-1, text[0, 1:, None]).mean()
    return {
        "prompt": PROMPT,
        "top5": [{"token": t, "id": int(i), "p": float(p)} for t, i, p in zip(tokens, top.indices, top.values)],
        "perplexity": float(torch.exp(nll)),
        "probs": probs.tolist(),
    }


def _minilm(enc) -> dict[str, Any]:  # pragma: no cover - in the child
    e = enc.embed(list(SENTENCES)).double()  # (3, 384), unit length
    sims = e @ e.T  # (3, 3)
    return {
        "sentences": list(SENTENCES),
        "similarity": [[float(sims[i, j]) for j in range(len(SENTENCES))] for i in range(len(SENTENCES))],
        "embeddings": e.tolist(),
    }


def _differences(model_name: str, own: dict[str, Any], yours: dict[str, Any]) -> dict[str, Any]:
    if model_name == "smollm2":
        p, q = own.pop("probs"), yours.pop("probs")
        kl = sum(
            a * (math.log(a) - math.log(b)) if a > 0 and b > 0 else (math.inf if a > 0 else 0.0) for a, b in zip(p, q)
        )
        return {"kl": kl if math.isfinite(kl) else None, "same_top1": own["top5"][0]["id"] == yours["top5"][0]["id"]}
    a, b = own.pop("embeddings"), yours.pop("embeddings")
    moved = [sum(x * y for x, y in zip(u, w)) for u, w in zip(a, b)]
    return {"embedding_cosine": moved}


def show(result: dict[str, Any], console) -> None:
    """Print the in-model comparison for people."""
    from rich.markup import escape
    from rich.table import Table

    console.print(f"\n[bold]inside {result['model']}[/bold]")
    if result.get("error"):
        e = result["error"]
        where = f" at {Path(e['file']).name}:{e['line']}" if e.get("file") else ""
        console.print(f"[red]{escape(e['type'])}{escape(where)}: {escape(e['message'])}[/red]", highlight=False)
        return
    own, yours = result["own"], result["yours"]
    if "top5" in own:
        table = Table(title=f"next token after {own['prompt']!r}", box=None)
        for column in ("#", "model's own", "p", "with yours", "p"):
            table.add_column(column)
        for i, (a, b) in enumerate(zip(own["top5"], yours["top5"])):
            mine, theirs = escape(repr(a["token"])), escape(repr(b["token"]))
            table.add_row(str(i + 1), mine, f"{a['p']:.3f}", theirs, f"{b['p']:.3f}")
        console.print(table)
        kl = "inf" if result.get("kl") is None else f"{result['kl']:.3g}"
        console.print(
            f"perplexity of a short text: {own['perplexity']:.2f} (own) vs {yours['perplexity']:.2f} (yours); "
            f"KL(own ‖ yours) of the next token: {kl} nats; "
            f"{result['calls']} attention calls went through your function",
            highlight=False,
        )
    else:
        table = Table(title="sentence-embedding cosine similarity", box=None)
        for column in ("pair", "model's own", "with yours"):
            table.add_column(column)
        s = own["sentences"]
        for i, j in ((0, 1), (0, 2), (1, 2)):
            pair = escape(f"{s[i]!r} ~ {s[j]!r}")
            table.add_row(pair, f"{own['similarity'][i][j]:.4f}", f"{yours['similarity'][i][j]:.4f}")
        console.print(table)
        moved = ", ".join(f"{c:.4f}" for c in result["embedding_cosine"])
        console.print(
            f"cosine(own embedding, yours) per sentence: {moved}; {result['calls']} attention calls", highlight=False
        )
