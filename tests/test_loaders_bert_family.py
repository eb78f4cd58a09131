"""BERT-family safetensors folders (BERT, RoBERTa, DistilBERT) loaded by qkv's own loader, against transformers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from qkv import AttentionError  # noqa: E402
from qkv.models import BertModel, ModelError, TextEncoder, UnsupportedModelError, load, read_bert  # noqa: E402

VOCAB = 100
BERT_SIZES = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=40,
)


def _randomize_norms_and_biases(model: torch.nn.Module) -> None:
    """Norms start at 1 and biases at 0: make them random, so a lost one shows."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias") or "LayerNorm" in name or "layer_norm" in name:
                p.copy_(torch.randn_like(p) * 0.5 + (1.0 if name.endswith("weight") else 0.0))


def hf_folder(root: Path, config: object, model_class: type, *, shard: bool = False):
    torch.manual_seed(0)
    model = model_class(config).eval()
    _randomize_norms_and_biases(model)
    model.save_pretrained(root, safe_serialization=True, **({"max_shard_size": "20KB"} if shard else {}))
    return root, model.double()


def bert(root: Path, *, shard: bool = False, **settings: object):
    return hf_folder(root, transformers.BertConfig(**{**BERT_SIZES, **settings}), transformers.BertModel, shard=shard)


def ours(folder: Path) -> BertModel:
    return BertModel.from_checkpoint(read_bert(folder, dtype=torch.float64))


def batch(pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two rows of 9 ids, the second right-padded after 6 real tokens."""
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(3, VOCAB, (2, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    ids[1, 6:] = pad_id
    return ids, mask


def close(mine: torch.Tensor, theirs: torch.Tensor) -> None:
    torch.testing.assert_close(mine, theirs, rtol=1e-10, atol=1e-10)


def test_bert_hidden_states_and_pooler_output_match_transformers(tmp_path):
    folder, hf = bert(tmp_path)
    model = ours(folder)
    ids, mask = batch()
    types = torch.zeros_like(ids)
    types[:, 4:] = 1
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=mask, token_type_ids=types)
        hidden = model(ids, mask, token_type_ids=types)
        pooled = model.pool(hidden)
    real = mask.bool()
    close(hidden[real], theirs.last_hidden_state[real])
    close(pooled, theirs.pooler_output)


def test_bert_position_ids_argument_matches_transformers(tmp_path):
    """Given positions pick the position embeddings; without an attention mask a jump starts a packed sequence."""
    folder, hf = bert(tmp_path)
    model = ours(folder)
    ids, _ = batch()
    full = torch.ones_like(ids)
    positions = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12, 13], [30, 2, 9, 0, 1, 1, 4, 20, 39]])
    packed = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 0, 1]])  # (1, N): three packed sequences in every row
    with torch.no_grad():
        close(
            model(ids, full, position_ids=positions), hf(input_ids=ids, attention_mask=full, position_ids=positions)[0]
        )
        close(model(ids, position_ids=packed), hf(input_ids=ids, position_ids=packed).last_hidden_state)
        assert not torch.allclose(model(ids, full, position_ids=positions), model(ids), atol=1e-3)  # they matter
        with pytest.raises(AttentionError, match="position_ids"):
            model(ids, position_ids=torch.full_like(ids, 40))  # beyond the 40 learned positions


def test_a_sharded_bert_folder_loads_the_same_model(tmp_path):
    folder, hf = bert(tmp_path, shard=True)
    assert (folder / "model.safetensors.index.json").is_file() and not (folder / "model.safetensors").exists()
    ids, mask = batch()
    with torch.no_grad():
        close(
            ours(folder)(ids, mask)[mask.bool()], hf(input_ids=ids, attention_mask=mask).last_hidden_state[mask.bool()]
        )


def test_roberta_positions_start_after_the_padding_id(tmp_path):
    config = transformers.RobertaConfig(**{**BERT_SIZES, "max_position_embeddings": 42, "type_vocab_size": 1})
    folder, hf = hf_folder(tmp_path, config, transformers.RobertaModel)
    model = ours(folder)
    assert model.bert_config.model_type == "roberta" and model.bert_config.pad_token_id == 1
    ids, mask = batch(pad_id=1)
    left = torch.cat([torch.ones(1, 3, dtype=torch.long), ids[:1, :6]], dim=1)  # a left-padded row
    left_mask = (left != 1).long()
    with torch.no_grad():
        for x, m in ((ids, mask), (left, left_mask)):
            theirs = hf(input_ids=x, attention_mask=m)
            hidden = model(x, m)
            close(hidden[m.bool()], theirs.last_hidden_state[m.bool()])
            close(model.pool(hidden), theirs.pooler_output)


def test_distilbert_has_no_token_types_and_matches_transformers(tmp_path):
    config = transformers.DistilBertConfig(
        vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=40
    )
    folder, hf = hf_folder(tmp_path, config, transformers.DistilBertModel)
    model = ours(folder)
    assert model.embeddings.token_types is None and model.pooler is None
    ids, mask = batch()
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=mask).last_hidden_state
        close(model(ids, mask)[mask.bool()], theirs[mask.bool()])
        with pytest.raises(AttentionError, match="token_type_ids"):
            model(ids, token_type_ids=torch.zeros_like(ids))
    with pytest.raises(ModelError, match="no pooler"):
        model.pool(theirs)


def test_float32_bert_matches_within_float32_rounding(tmp_path):
    folder, hf = bert(tmp_path)
    model = BertModel.from_checkpoint(read_bert(folder))
    ids, mask = batch()
    with torch.no_grad():
        theirs = hf.float()(input_ids=ids, attention_mask=mask)
        hidden = model(ids, mask)
    torch.testing.assert_close(hidden[mask.bool()], theirs.last_hidden_state[mask.bool()], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.pool(hidden), theirs.pooler_output, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"is_decoder": True}, "is_decoder"),
        ({"add_cross_attention": True}, "add_cross_attention"),
        ({"position_embedding_type": "relative_key"}, "position_embedding_type"),
        ({"hidden_act": "swish"}, "hidden_act"),
    ],
)
def test_configs_qkv_does_not_implement_are_refused_naming_the_field(tmp_path, changes, field):
    folder, _ = bert(tmp_path)
    path = folder / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    with pytest.raises(UnsupportedModelError, match=field):
        ours(folder)


def write_wordpiece_tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + [f"w{i}" for i in range(4, VOCAB)]
    tokenizer = Tokenizer(models.WordPiece({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tokenizer.save(str(folder / "tokenizer.json"))


def test_load_gives_a_text_encoder_with_the_pooler(tmp_path):
    folder, hf = bert(tmp_path)
    write_wordpiece_tokenizer(folder)
    loaded = load(folder)
    assert isinstance(loaded, TextEncoder) and loaded.kind == "bert"
    assert (loaded.tokenizer.bos_id, loaded.tokenizer.eos_id, loaded.tokenizer.max_length) == (2, 3, 40)
    ids, mask = loaded.tokenizer.batch(["w5 w6 w7", "w9"])
    assert ids[0].tolist() == [2, 5, 6, 7, 3]
    with torch.no_grad():
        theirs = hf.float()(input_ids=ids, attention_mask=mask)
        hidden = loaded.model(ids, mask)
    torch.testing.assert_close(loaded.model.pool(hidden), theirs.pooler_output, rtol=1e-5, atol=1e-5)
    assert loaded.attentions("w5 w6 w7").weights.shape == (2, 4, 5, 5)
