"""Llama-family safetensors folders (Llama, Qwen2, Mistral) loaded by qkv's own loader, against transformers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from qkv.models import (  # noqa: E402
    LanguageModel,
    LlamaForCausalLM,
    ModelError,
    UnsupportedModelError,
    load,
    read_llama_folder,
)

SIZES = dict(
    vocab_size=100,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
)
FAMILIES = {
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
    "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
}


def hf_folder(root: Path, family: str, *, shard: bool = False, seed: int = 0, **settings: object):
    """A random tiny HF model of ``family`` saved as safetensors in ``root``; returns (folder, the HF model)."""
    config_class, model_class = FAMILIES[family]
    torch.manual_seed(seed)
    config = config_class(**{**SIZES, "rope_theta": 50000.0, "rms_norm_eps": 1e-5, **settings})
    model = model_class(config).eval()
    with torch.no_grad():  # norms and biases start at 1 and 0: make them random so a lost one shows
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith(".bias"):
                p.copy_(torch.randn_like(p) * 0.5 + (1.0 if name.endswith("norm.weight") else 0.0))
    model.save_pretrained(root, safe_serialization=True, **({"max_shard_size": "20KB"} if shard else {}))
    return root, model


def ours(folder: Path, dtype: torch.dtype = torch.float64) -> LlamaForCausalLM:
    return LlamaForCausalLM.from_checkpoint(read_llama_folder(folder, dtype=dtype))


def ids(batch: int = 2, n: int = 12, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, SIZES["vocab_size"], (batch, n), generator=torch.Generator().manual_seed(seed))


def assert_logits_match(lm: LlamaForCausalLM, hf: torch.nn.Module, x: torch.Tensor, mask=None, **tol: float) -> None:
    with torch.no_grad():
        theirs = hf(input_ids=x, attention_mask=mask).logits
        mine = lm(x, mask)
    if mask is not None:  # padded query rows are computed and ignored: compare real tokens
        mine, theirs = mine[mask.bool()], theirs[mask.bool()]
    torch.testing.assert_close(mine, theirs, **(tol or {"rtol": 1e-10, "atol": 1e-10}))


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
def test_logits_match_transformers_in_float64(tmp_path, family):
    folder, hf = hf_folder(tmp_path, family)
    lm = ours(folder)
    assert_logits_match(lm, hf.double(), ids())


def test_float32_logits_match_within_float32_rounding(tmp_path):
    folder, hf = hf_folder(tmp_path, "llama")
    assert_logits_match(ours(folder, torch.float32), hf, ids(), rtol=1e-5, atol=1e-5)


def test_qwen2_q_k_v_biases_are_built_and_used(tmp_path):
    folder, hf = hf_folder(tmp_path, "qwen2")
    lm = ours(folder)
    attn = lm.model.layers[0].self_attn
    assert attn.q_proj.bias is not None and attn.k_proj.bias is not None and attn.v_proj.bias is not None
    assert attn.out_proj.bias is None  # Qwen2's o_proj has none
    torch.testing.assert_close(attn.q_proj.bias, hf.model.layers[0].self_attn.q_proj.bias.double())


def test_llama_attention_and_mlp_biases_and_explicit_head_dim(tmp_path):
    folder, hf = hf_folder(tmp_path, "llama", attention_bias=True, mlp_bias=True, head_dim=16)
    lm = ours(folder)
    assert lm.model.layers[1].self_attn.out_proj.bias is not None
    assert lm.model.layers[1].ffn.down_proj.bias is not None
    assert lm.llama_config.head_dim == 16
    assert_logits_match(lm, hf.double(), ids())


def test_tied_embeddings_share_the_lm_head(tmp_path):
    folder, hf = hf_folder(tmp_path, "qwen2", tie_word_embeddings=True)
    lm = ours(folder)
    assert lm.lm_head.weight is lm.model.embeddings.tokens.weight
    assert_logits_match(lm, hf.double(), ids())


def test_sharded_folder_with_an_index_loads_the_same_model(tmp_path):
    folder, hf = hf_folder(tmp_path / "sharded", "mistral", shard=True)
    assert (folder / "model.safetensors.index.json").is_file() and not (folder / "model.safetensors").exists()
    assert len(list(folder.glob("model-*.safetensors"))) > 1
    assert_logits_match(ours(folder), hf.double(), ids())


def test_mistral_sliding_window_is_honoured(tmp_path):
    """A window of 3 over 12 tokens: qkv matches transformers, and differs from plain causal attention."""
    folder, hf = hf_folder(tmp_path / "w3", "mistral", sliding_window=3)
    lm = ours(folder)
    assert lm.llama_config.sliding_window == 3
    x = ids()
    assert_logits_match(lm, hf.double(), x)
    from qkv.interpret import record

    hf.set_attn_implementation("eager")
    with torch.no_grad(), record(lm) as rec:
        lm(x)
        theirs = hf.double()(input_ids=x, output_attentions=True).attentions
    for mine, their in zip(rec.weights, theirs, strict=True):  # zero outside the window
        torch.testing.assert_close(mine, their, rtol=0, atol=1e-6)  # HF's eager softmax runs in float32
    assert (rec.weights[0][:, :, 5, :3] == 0).all() and (rec.weights[0][:, :, 5, 3:6] > 0).all()
    wide, _ = hf_folder(tmp_path / "wide", "mistral", sliding_window=None)
    with torch.no_grad():
        assert not torch.allclose(lm(x)[:, 5:], ours(wide)(x)[:, 5:], atol=1e-3)  # same weights, no window


def test_sliding_window_with_left_padding_and_a_cache_matches_transformers_generation(tmp_path):
    folder, hf = hf_folder(tmp_path, "mistral", sliding_window=4, pad_token_id=0)
    lm = ours(folder)
    hf = hf.double()
    x = ids(2, 7)
    mask = torch.ones_like(x)
    mask[1, :2] = 0  # row 1 is left-padded
    x[1, :2] = 0
    assert_logits_match(lm, hf, x, mask)
    from qkv.models.generate import generate

    with torch.no_grad():
        theirs = hf.generate(
            input_ids=x, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0, eos_token_id=None
        )
    mine = generate(lm, x, attention_mask=mask, max_new_tokens=8)
    assert torch.equal(mine, theirs)


def test_qwen2_with_use_sliding_window_over_every_layer(tmp_path):
    folder, hf = hf_folder(tmp_path, "qwen2", use_sliding_window=True, sliding_window=3, max_window_layers=0)
    lm = ours(folder)
    assert lm.llama_config.sliding_window == 3
    assert_logits_match(lm, hf.double(), ids())


def _edit_config(folder: Path, **changes: object) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


@pytest.mark.parametrize(
    ("family", "changes", "field"),
    [
        ("llama", {"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "rope_scaling"),
        ("llama", {"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}}, "rope_parameters"),
        ("llama", {"rope_parameters": {"rope_type": "yarn", "factor": 4.0}}, "rope_parameters"),
        ("llama", {"partial_rotary_factor": 0.5}, "partial_rotary_factor"),
        ("llama", {"hidden_act": "gelu"}, "hidden_act"),
        (
            "qwen2",
            {"use_sliding_window": True, "sliding_window": 3, "max_window_layers": 1, "layer_types": None},
            "max_window_layers",
        ),
        ("qwen2", {"layer_types": ["full_attention", "sliding_attention"], "sliding_window": 3}, "layer_types"),
        ("mistral", {"sliding_window": 0}, "sliding_window"),
        ("mistral", {"num_key_value_heads": 3}, "num_key_value_heads"),
    ],
)
def test_configs_qkv_does_not_implement_are_refused_naming_the_field(tmp_path, family, changes, field):
    folder, _ = hf_folder(tmp_path, family)
    _edit_config(folder, **changes)
    with pytest.raises(ModelError, match=field) as info:
        read_llama_folder(folder)
    # a setting qkv lacks is an UnsupportedModelError (run the model some other way); a broken value is not
    assert isinstance(info.value, UnsupportedModelError) == (field not in ("sliding_window", "num_key_value_heads"))


def test_an_unknown_model_type_is_an_unsupported_model_error_naming_it(tmp_path):
    folder, _ = hf_folder(tmp_path, "llama")
    _edit_config(folder, model_type="gpt_neox", architectures=["GPTNeoXForCausalLM"])
    with pytest.raises(UnsupportedModelError, match="model_type 'gpt_neox'.*GPTNeoXForCausalLM"):
        load(folder)
    assert issubclass(UnsupportedModelError, ModelError)


def test_a_missing_tensor_names_the_weights_and_the_tensor(tmp_path):
    from safetensors.torch import load_file, save_file

    folder, _ = hf_folder(tmp_path, "llama")
    tensors = load_file(str(folder / "model.safetensors"))
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(ModelError, match=r"model\.safetensors: lacks 1 tensors .*mlp\.up_proj"):
        read_llama_folder(folder)


def write_word_tokenizer(folder: Path) -> None:
    """A word-level tokenizer.json over the model's 100 ids ("w0" ... "w99"), with eos "w1"."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel({f"w{i}": i for i in range(SIZES["vocab_size"])}, unk_token="w0"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "w1", "bos_token": "w2"}))


def test_load_gives_a_language_model_that_generates_as_transformers(tmp_path):
    folder, hf = hf_folder(tmp_path, "qwen2")
    write_word_tokenizer(folder)
    loaded = load(folder)
    assert isinstance(loaded, LanguageModel) and loaded.kind == "llama"
    assert loaded.tokenizer.eos_id == 1 and loaded.tokenizer.max_length == SIZES["max_position_embeddings"]
    prompt = "w5 w17 w42 w8"
    x = torch.tensor([loaded.encode(prompt)])
    assert x.tolist() == [[5, 17, 42, 8]]
    with torch.no_grad():
        theirs = hf.generate(input_ids=x, max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert torch.equal(loaded.generate(x, max_new_tokens=6, eos_id=None), theirs)
    attentions = loaded.attentions(prompt)
    assert attentions.weights.shape == (2, 4, 4, 4) and attentions.causal
