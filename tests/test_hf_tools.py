"""qkv's tools on any transformers model: `qkv explain --model FOLDER`, the explorer and `qkv.hf.loaded`.

A folder of an architecture qkv does not implement itself (GPT-2, Electra) runs through
transformers on ``attn_implementation="qkv"``, and the output says so; the weights shown are
transformers' own eager attentions. Without transformers, such a folder is one line naming the
install command. A folder qkv does implement (BERT) still runs on qkv's own model.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers", reason="these tests load models through transformers: pip install transformers")
tokenizers = pytest.importorskip("tokenizers", reason="the tiny tokenizers need the 'tokenizers' package")

import qkv.hf  # noqa: E402
import qkv.loader  # noqa: E402
from qkv.cli import main  # noqa: E402
from qkv.hf.loaded import TransformersModel, wrap  # noqa: E402

TEXT = "the cat sat"
CORPUS = ["the cat sat on the mat", "the dog sat on the log", "a cat and a dog ran"] * 10


def _bpe_tokenizer():
    """A tiny byte-level BPE tokenizer (GPT-2's kind), trained on `CORPUS`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>")


def _wordpiece_tokenizer():
    """A tiny WordPiece tokenizer (BERT's kind) with ``[CLS] ... [SEP]`` around every text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(CORPUS, trainers.WordPieceTrainer(vocab_size=100, special_tokens=specials))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """Tiny random models saved as transformers saves them: GPT-2 and Electra (no qkv implementation), BERT (one)."""
    from transformers import BertConfig, BertModel, ElectraConfig, ElectraModel, GPT2Config, GPT2LMHeadModel

    root = tmp_path_factory.mktemp("hf_models")
    torch.manual_seed(0)
    bpe, wordpiece = _bpe_tokenizer(), _wordpiece_tokenizer()
    eos = bpe.eos_token_id
    small = {"num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 64}
    built = {
        "gpt2": (
            GPT2LMHeadModel(
                GPT2Config(
                    vocab_size=300, n_positions=64, n_embd=32, n_layer=2, n_head=4, bos_token_id=eos, eos_token_id=eos
                )
            ),
            bpe,
        ),
        "electra": (
            ElectraModel(
                ElectraConfig(vocab_size=100, embedding_size=32, hidden_size=32, intermediate_size=64, **small)
            ),
            wordpiece,
        ),
        "bert": (BertModel(BertConfig(vocab_size=100, hidden_size=32, intermediate_size=64, **small)), wordpiece),
    }
    out = {}
    for name, (model, tokenizer) in built.items():
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
        out[name] = root / name
    return out


def _eager_attentions(folder: Path, loaded: TransformersModel, ids: list[int]) -> tuple[torch.Tensor, ...]:
    """transformers' own eager attention probabilities of the same folder: the reference."""
    eager = type(loaded.model).from_pretrained(folder, attn_implementation="eager", dtype=torch.float32).eval()
    with torch.no_grad():
        return tuple(eager(input_ids=torch.tensor([ids]), output_attentions=True).attentions)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_explain_runs_a_gpt2_folder_through_transformers_and_says_so(folders, capsys) -> None:
    code, out, err = run(capsys, "explain", TEXT, "--model", str(folders["gpt2"]))
    assert code == 0, err
    assert "implementation: transformers GPT2LMHeadModel with attn_implementation='qkv'" in out
    assert "causal language model" in out  # the decoder is read as one: row i sees only j <= i


@pytest.mark.parametrize(("name", "cls"), [("gpt2", "GPT2LMHeadModel"), ("electra", "ElectraModel")])
def test_explain_json_weights_are_transformers_eager_attentions(folders, capsys, name: str, cls: str) -> None:
    folder = folders[name]
    code, out, err = run(
        capsys, "explain", TEXT, "--model", str(folder), "--layer", "0", "--head", "1", "--json", "--json-weights"
    )
    assert code == 0, err
    doc = json.loads(out)
    assert doc["implementation"] == f"transformers {cls} with attn_implementation='qkv'"
    loaded = qkv.loader.load(folder)
    assert isinstance(loaded, TransformersModel)
    assert doc["ids"] == loaded.encode(TEXT)
    expected = _eager_attentions(folder, loaded, doc["ids"])[0][0, 1]  # (B, H, N, N) -> (N, N)
    torch.testing.assert_close(torch.tensor(doc["weights"]), expected, atol=1e-5, rtol=0)  # JSON: 6 decimals


@pytest.mark.parametrize("name", ["gpt2", "electra"])
def test_loaded_weights_and_recorded_calls_equal_eager_in_float32(folders, name: str) -> None:
    folder = folders[name]
    loaded = qkv.loader.load(folder)
    assert isinstance(loaded, TransformersModel)
    attn = loaded.attentions(TEXT)
    expected = torch.stack([a[0] for a in _eager_attentions(folder, loaded, attn.ids)])  # (L, H, N, N)
    torch.testing.assert_close(attn.weights, expected, atol=1e-5, rtol=0)
    assert attn.causal is (name == "gpt2") and loaded.attention_shape == (2, 4)
    (call,) = loaded.record_calls(attn.ids, layers=[-1])
    assert (call.layer, call.num_queries, call.num_keys) == (1, len(attn.ids), len(attn.ids))
    torch.testing.assert_close(call.weights(heads=[2], rows=[-1])[0, 0, 0], expected[1, 2, -1], atol=1e-5, rtol=0)
    blocks = list(call.blocks(heads=[0, 3], block_elements=2 * len(attn.ids)))  # one row per block
    assert [rows.tolist() for rows, _ in blocks] == [[i] for i in range(len(attn.ids))]
    torch.testing.assert_close(torch.cat([w for _, w in blocks], dim=2)[0], expected[1, [0, 3]], atol=1e-5, rtol=0)


def test_the_tokens_read_as_qkvs_own_tokenizers_give_them(folders) -> None:
    gpt2, electra = qkv.loader.load(folders["gpt2"]), qkv.loader.load(folders["electra"])
    assert gpt2.attentions(TEXT).tokens == ["the", " cat", " sat"]  # byte-level BPE: 'Ġcat' read as ' cat'
    electra_attn = electra.attentions(TEXT)
    assert electra_attn.tokens == ["[CLS]", "the", "cat", "sat", "[SEP]"]
    assert electra_attn.special == [True, False, False, False, True]
    with pytest.raises(qkv.hf.ModelError, match="at most 64 tokens"):
        electra.encode("the cat " * 40)


def test_a_causal_lm_generates_what_transformers_generates(folders) -> None:
    loaded = qkv.loader.load(folders["gpt2"])
    assert isinstance(loaded, TransformersModel) and loaded.can_generate
    ids = torch.tensor([loaded.encode("the cat")])
    eager = type(loaded.model).from_pretrained(folders["gpt2"], attn_implementation="eager").eval()
    expected = eager.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=6,
        do_sample=False,
        pad_token_id=loaded.tokenizer.pad_id,
    )
    assert torch.equal(loaded.generate(ids, max_new_tokens=6), expected)
    with pytest.raises(qkv.hf.ModelError, match="no language-model head"):
        qkv.loader.load(folders["electra"]).generate("the cat")


def test_without_transformers_a_folder_qkv_does_not_implement_is_one_line_naming_the_install(
    folders, capsys, monkeypatch
) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` now raises ImportError
    code, out, err = run(capsys, "explain", TEXT, "--model", str(folders["gpt2"]))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("qkv: error: ")
    assert "model_type 'gpt2'" in err and "pip install transformers" in err


def test_qkvs_own_architectures_still_run_on_qkvs_own_models(folders, capsys) -> None:
    import qkv.models

    loaded = qkv.loader.load(folders["bert"])
    assert isinstance(loaded, qkv.models.TextEncoder)
    assert qkv.loader.implementation(loaded) == "qkv's own BERT"
    code, out, err = run(capsys, "explain", TEXT, "--model", str(folders["bert"]))
    assert code == 0, err
    assert "implementation: qkv's own BERT" in out and "transformers" not in out


def test_a_broken_folder_keeps_qkvs_own_error(tmp_path, capsys) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "bert", "vocab_size": 10}')
    code, _, err = run(capsys, "explain", TEXT, "--model", str(tmp_path))
    assert code == 2 and "transformers" not in err  # not an unsupported architecture: no detour


def test_the_explorer_serves_a_transformers_folder(folders) -> None:
    from qkv.explorer.models import ModelRegistry

    name = str(folders["gpt2"])
    registry = ModelRegistry([name])
    answer = registry.attention(name, TEXT)
    assert answer["causal"] is True and (answer["num_layers"], answer["num_heads"]) == (2, 4)
    (entry,) = registry.describe()
    assert entry["implementation"] == "transformers GPT2LMHeadModel with attn_implementation='qkv'"
    assert (entry["num_layers"], entry["num_heads"], entry["causal"]) == (2, 4, True)


def test_wrap_takes_a_model_you_have_and_asks_for_qkv_attention(folders) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folders["gpt2"])
    eager = AutoModelForCausalLM.from_pretrained(folders["gpt2"], attn_implementation="eager")
    with pytest.raises(qkv.hf.ModelError, match="set_attn_implementation"):
        wrap(eager, tokenizer)
    with pytest.raises(qkv.hf.ModelError, match="set_attn_implementation"):  # qkv.interpret reads it, once on qkv
        qkv.interpret.record(eager)
    eager.set_attn_implementation("qkv")
    wrapped = wrap(eager, tokenizer, name="mine")
    assert wrapped.name == "mine" and wrapped.causal and wrapped.attentions(TEXT).weights.shape == (2, 4, 3, 3)
    eager.set_attn_implementation("eager")  # switched back behind the wrapper's back: nothing would reach qkv
    with pytest.raises(qkv.hf.ModelError, match="set_attn_implementation"):
        wrapped.record_calls(wrapped.encode(TEXT))


def test_generate_with_chat_on_a_model_without_a_chat_template_says_to_leave_chat_out(folders, capsys) -> None:
    assert qkv.loader.load(str(folders["gpt2"])).tokenizer.chat_template is None  # the tiny BPE has none
    assert main(["generate", "the cat", "--model", str(folders["gpt2"]), "--chat", "--max-new-tokens", "2"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1
    assert "--chat:" in err and "carries no chat template" in err and "leave --chat out" in err
