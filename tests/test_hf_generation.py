"""`qkv.hf.generation.token_steps`: transformers causal LMs decoded one token at a time on qkv attention."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from test_loaders_llama_family import SIZES  # noqa: E402 - the tiny Llama-family sizes

import qkv.hf
from qkv.errors import ModelError
from qkv.hf.generation import token_steps

LLAMA_LIKE = {**SIZES, "initializer_range": 0.25}
VOCAB = SIZES["vocab_size"]


def _model(family: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if family == "llama":
        config = transformers.LlamaConfig(**LLAMA_LIKE)
        model = transformers.LlamaForCausalLM(config)
    elif family == "mistral":  # sliding-window layers: the cache keeps only the window
        config = transformers.MistralConfig(sliding_window=4, **LLAMA_LIKE)
        model = transformers.MistralForCausalLM(config)
    else:
        config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=4)
        model = transformers.GPT2LMHeadModel(config)
    qkv.hf.register()
    model.set_attn_implementation(qkv.hf.NAME)
    return model.eval()


@pytest.mark.parametrize("family", ["llama", "mistral", "gpt2"])
def test_greedy_steps_give_the_ids_of_transformers_generate(family):
    model = _model(family)
    prompt = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(1))
    eos = model.generation_config.eos_token_id  # generate() ends a sequence there and pads it with the same id
    steps = torch.stack(list(token_steps(model, prompt, 12, eos_id=eos, pad_id=eos or 0)), dim=1)  # (B, 12)
    with torch.no_grad():
        expected = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12, do_sample=False)
    assert torch.equal(steps, expected[:, 7:])


def test_an_end_of_sequence_pads_the_rest_and_ends_the_steps():
    model = _model("llama")
    prompt = torch.tensor([[5, 6, 7]])
    first = list(token_steps(model, prompt, 8))
    eos = int(first[2][0])  # the third new token stands in for the end of sequence
    steps = list(token_steps(model, prompt, 8, eos_id=eos, pad_id=0))
    assert [int(t[0]) for t in steps] == [int(t[0]) for t in first[: first.index(first[2]) + 1]]
    assert int(steps[-1][0]) == eos


def test_sampling_is_repeatable_with_a_seed_and_keeps_to_the_top_k():
    model = _model("llama")
    prompt = torch.tensor([[5, 6, 7]])
    kwargs = dict(temperature=1.5, top_k=3, seed=4)
    a = [int(t[0]) for t in token_steps(model, prompt, 10, **kwargs)]
    b = [int(t[0]) for t in token_steps(model, prompt, 10, **kwargs)]
    assert a == b and len(a) == 10
    ids = prompt
    with torch.no_grad():  # every sampled token is among the 3 most likely after what came before
        for token in a:
            top = model(ids).logits[0, -1].topk(3).indices.tolist()
            assert token in top
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": -1.0}, "temperature: expected a number >= 0"),
        ({"temperature": float("inf")}, "temperature: expected a number >= 0 (0 is greedy), got inf"),
        ({"top_k": 0}, "top_k: expected a positive int, got 0"),
        ({"top_p": 1.5}, "top_p: expected None or a number in (0, 1]"),
    ],
)
def test_bad_sampling_is_refused_before_any_step(kwargs, message):
    with pytest.raises(ModelError, match=message.replace("(", r"\(").replace(")", r"\)").replace("]", r"\]")):
        token_steps(_model("gpt2"), torch.tensor([[1, 2]]), 4, **kwargs)
