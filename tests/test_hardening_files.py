"""Corrupt model files are a `ModelError` naming the file and what is wrong, never a library's own error,
and the command line prints that as one line with exit status 2.

The models here are tiny ones written by the tests (a 1-layer BERT folder, a 1-layer Llama GGUF),
so nothing depends on the weight packages being installed. The helpers `bert_folder` and
`llama_gguf` are shared with the other hardening tests.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

gguf = pytest.importorskip("gguf", reason="writing GGUF files needs the 'gguf' package: pip install gguf")
pytest.importorskip("tokenizers", reason="the tokenizers need the 'tokenizers' package: pip install tokenizers")
pytest.importorskip("safetensors", reason="weights need the 'safetensors' package: pip install safetensors")

import numpy as np  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from qkv.cli import main  # noqa: E402
from qkv.models import BertConfig, LanguageModel, ModelError, TextEncoder, load  # noqa: E402
from qkv.models.safetensors_file import _expected_shapes  # noqa: E402

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "cat", "sat", "on", "mat", "."]
BPE_TOKENS = ["<|endoftext|>", "a", "b", "c", "Ġ", "ab", "ba", "Ġa"]


def bert_folder(root: Path, seed: int = 0) -> Path:
    """A 1-layer BERT folder qkv loads: config.json, model.safetensors (random weights), tokenizer.json."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    root.mkdir(parents=True, exist_ok=True)
    config = {
        "model_type": "bert",
        "vocab_size": len(WORDS),
        "hidden_size": 8,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 16,
        "max_position_embeddings": 32,
    }
    (root / "config.json").write_text(json.dumps(config))
    g = torch.Generator().manual_seed(seed)
    shapes = _expected_shapes(BertConfig.from_dict(config))
    tensors = {name: torch.randn(shape, generator=g) for name, shape in shapes.items()}
    save_file(tensors, str(root / "model.safetensors"))
    tokenizer = Tokenizer(models.WordPiece({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tokenizer.save(str(root / "tokenizer.json"))
    return root


def llama_gguf(path: Path, seed: int = 0) -> Path:
    """A 1-layer Llama GGUF qkv loads: metadata, a byte-level BPE tokenizer, float32 random weights."""
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_embedding_length(8)
    writer.add_feed_forward_length(16)
    writer.add_head_count(2)
    writer.add_head_count_kv(1)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_context_length(64)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt2")
    writer.add_token_list(BPE_TOKENS)
    writer.add_token_types([3] + [1] * (len(BPE_TOKENS) - 1))
    writer.add_token_merges(["a b", "b a", "Ġ a"])
    writer.add_eos_token_id(0)
    rng = np.random.default_rng(seed)
    shapes = {"token_embd.weight": (len(BPE_TOKENS), 8), "output_norm.weight": (8,)}
    for name, shape in {
        "attn_norm": (8,),
        "attn_q": (8, 8),
        "attn_k": (4, 8),
        "attn_v": (4, 8),
        "attn_output": (8, 8),
        "ffn_norm": (8,),
        "ffn_gate": (16, 8),
        "ffn_up": (16, 8),
        "ffn_down": (8, 16),
    }.items():
        shapes[f"blk.0.{name}.weight"] = shape
    for name, shape in shapes.items():
        writer.add_tensor(name, (rng.standard_normal(shape) + 0.5).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _tensor_data_offset(path: Path) -> int:
    """Where a GGUF file's header (metadata and tensor table) ends and the tensor bytes begin."""
    return int(gguf.GGUFReader(str(path)).data_offset)


# -- every way a file can be wrong: one ModelError naming that file -------------------------------------


def _truncate(path: Path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _spoil_bert(folder: Path, how: str) -> Path:
    """Spoil one file of a good BERT folder; returns the file that is now wrong."""
    if how == "safetensors cut short":
        _truncate(folder / "model.safetensors", 0.6)
        return folder / "model.safetensors"
    if how == "safetensors garbage header":
        (folder / "model.safetensors").write_bytes((24).to_bytes(8, "little") + b"this is no JSON header!!")
        return folder / "model.safetensors"
    if how == "config.json not JSON":
        (folder / "config.json").write_text('{"model_type": "bert", "hidden_size": 8,')
        return folder / "config.json"
    if how == "config.json a list":
        (folder / "config.json").write_text("[8, 2]")
        return folder / "config.json"
    if how == "config field of the wrong type":
        config = json.loads((folder / "config.json").read_text())
        config["hidden_size"] = "eight"
        (folder / "config.json").write_text(json.dumps(config))
        return folder / "config.json"
    if how == "tokenizer.json garbage":
        (folder / "tokenizer.json").write_text("<html>404 not found</html>")
        return folder / "tokenizer.json"
    raise AssertionError(how)


BERT_SPOILS = [
    "safetensors cut short",
    "safetensors garbage header",
    "config.json not JSON",
    "config.json a list",
    "config field of the wrong type",
    "tokenizer.json garbage",
]


@pytest.mark.parametrize("how", BERT_SPOILS)
def test_corrupt_model_files_are_model_errors_naming_the_file(tmp_path, capsys, how):
    folder = bert_folder(tmp_path / "bert")
    assert isinstance(load(folder), TextEncoder)  # the folder is good before it is spoiled
    spoiled = _spoil_bert(folder, how)
    with pytest.raises(ModelError) as caught:
        load(folder)
    message = str(caught.value)
    assert str(spoiled) in message, message  # names the file that is wrong, not just the folder
    assert not re.search(r"\b[A-Z]\w*(Error|Exception)\b", message)  # no library exception's name in it
    if how == "config field of the wrong type":
        assert "hidden_size" in message and "'eight'" in message

    code = main(["explain", "the cat sat", "--model", str(folder)])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.startswith("qkv: error: ") and err.count("\n") == 1 and str(spoiled) in err


def test_a_gguf_cut_anywhere_in_its_header_is_a_model_error(tmp_path, capsys):
    good = llama_gguf(tmp_path / "tiny.gguf")
    assert isinstance(load(good), LanguageModel)
    data = good.read_bytes()
    header = _tensor_data_offset(good)
    cut = tmp_path / "cut.gguf"
    for keep in range(4, header, 7):  # from just past the magic bytes to the last byte of the tensor table
        cut.write_bytes(data[:keep])
        with pytest.raises(ModelError, match="cut.gguf") as caught:
            load(cut)
        assert "truncated or corrupt" in str(caught.value), (keep, str(caught.value))
    cut.write_bytes(data[: header // 2])
    code = main(["generate", "ab", "--model", str(cut)])
    _, err = capsys.readouterr()
    assert code == 2 and err.startswith("qkv: error: ") and err.count("\n") == 1 and "cut.gguf" in err


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(keep=st.floats(0.0, 0.999), kind=st.sampled_from(["gguf", "safetensors"]))
def test_any_truncated_weight_file_is_a_model_error(tmp_path, keep, kind):
    """Wherever a download stops, loading says which file is wrong (or, with the whole header, still loads)."""
    if kind == "gguf":
        path = llama_gguf(tmp_path / f"t{keep}.gguf")
        target = path
    else:
        path = bert_folder(tmp_path / f"t{keep}")
        target = path / "model.safetensors"
    _truncate(target, keep)
    try:
        load(path)
    except ModelError as error:
        assert str(target) in str(error) or "neither a BERT folder" in str(error), str(error)
