"""The ``head-ablation`` widget on a causal LM folder of the learner's own (``qkv learn --model FOLDER``).

Ground truth: transformers' own eager model of the same folder, the head silenced apart from qkv by
zeroing that head's columns of its output projection's input (a pre-hook on ``o_proj`` / ``c_proj``).
Three ways the folder can run: a Llama through transformers on ``attn_implementation="qkv"`` (the head
scaled by the registered `qkv.interpret.sources.Source`), the same Llama on qkv's own implementation
(what `qkv.loader.load` picks for it: the ``head_mask`` of `qkv.nn.MultiHeadAttention`), and GPT-2
(transformers only).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="these tests load models through transformers")
pytest.importorskip("tokenizers", reason="the tiny tokenizers need the 'tokenizers' package")

from test_hf_tools import _bpe_tokenizer, folders  # noqa: F401 - the tiny Electra and BERT folders: encoders

import qkv.hf.loaded
import qkv.learn.widgets  # noqa: F401 - registers the widgets
import qkv.loader
from qkv.hf.record import attention_modules, head_scales
from qkv.learn.errors import LearnError
from qkv.learn.widget import WIDGETS, Env
from qkv.learn.widgets.head_ablation import causal_lm_shape

TEXT = "the cat sat on the"
WIDGET = WIDGETS["head-ablation"]
# (folder, how it loads): "transformers" always through transformers on "qkv", "loader" as qkv learn loads it
CASES = [("llama", "transformers"), ("llama", "loader"), ("gpt2", "loader")]


@pytest.fixture(scope="module")
def lms(tmp_path_factory) -> dict[str, Path]:
    """Tiny random causal LMs with a byte-level BPE tokenizer, saved as transformers saves them: a Llama
    (2 layers × 4 query heads, 2 key/value heads) and a GPT-2 (2 × 4).

    Their weights are drawn wider than transformers' default (initializer_range 0.25, not 0.02), so that
    one head moves the next token's distribution by a KL near 1 nat, not 1e-5 (below the facts' 6 decimals).
    """
    root = tmp_path_factory.mktemp("hf_lms")
    tokenizer = _bpe_tokenizer()
    ends = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    torch.manual_seed(0)
    built = {
        "llama": transformers.LlamaForCausalLM(
            transformers.LlamaConfig(
                vocab_size=300,
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                max_position_embeddings=64,
                initializer_range=0.25,
                **ends,
            )
        ),
        "gpt2": transformers.GPT2LMHeadModel(
            transformers.GPT2Config(
                vocab_size=300, n_positions=64, n_embd=32, n_layer=2, n_head=4, initializer_range=0.25, **ends
            )
        ),
    }
    for name, model in built.items():
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    return {name: root / name for name in built}


@pytest.fixture(scope="module")
def envs(lms) -> dict[tuple[str, str], tuple[Env, str]]:
    """One Env per case (its models load once), with the folder's name as the widget's ``model`` argument."""
    loaders = {"transformers": qkv.hf.loaded.load, "loader": qkv.loader.load}
    return {
        (kind, how): (Env(models=("minilm", "smollm2", str(lms[kind])), loader=loaders[how]), str(lms[kind]))
        for kind, how in CASES
    }


def _eager_next_token(folder: str, layer: int, head: int, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' eager log-probabilities (V,) of the token after ``ids``: with every head, and with ``head``
    of ``layer`` zeroed in its output projection's input, in float64 from float32 logits."""
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    config = model.config
    if config.model_type == "gpt2":
        projection, d = model.transformer.h[layer].attn.c_proj, config.n_embd // config.n_head
    else:
        projection, d = model.model.layers[layer].self_attn.o_proj, model.model.layers[layer].self_attn.head_dim

    def zero_head(module, args):
        x = args[0].clone()  # (B, N, H·D): the heads' outputs side by side
        x[..., head * d : (head + 1) * d] = 0
        return (x,)

    x = torch.tensor([ids])  # (1, N)
    with torch.no_grad():
        full = model(input_ids=x).logits[0, -1]  # (V,)
        handle = projection.register_forward_pre_hook(zero_head)
        try:
            ablated = model(input_ids=x).logits[0, -1]
        finally:
            handle.remove()
    return torch.log_softmax(full.double(), -1), torch.log_softmax(ablated.double(), -1)


def _plain_logits(loaded, ids: list[int]) -> torch.Tensor:
    """The loaded model's logits (1, N, V) for ``ids``, nothing silenced."""
    with torch.no_grad():
        out = loaded.model(torch.tensor([ids]))
    return getattr(out, "logits", out)


@pytest.mark.parametrize(("kind", "how"), CASES)
@pytest.mark.parametrize(("layer", "head"), [(0, 1), (1, 3)])
def test_the_facts_are_transformers_eager_with_that_head_zeroed(envs, kind, how, layer, head):
    env, folder = envs[(kind, how)]
    facts = WIDGET.run({"model": folder, "text": TEXT, "layer": layer, "head": head}, env).facts
    loaded = env.model(folder)
    ids = loaded.encode(TEXT)
    assert ids == transformers.AutoTokenizer.from_pretrained(folder)(TEXT)["input_ids"]
    full, ablated = _eager_next_token(folder, layer, head, ids)
    top = torch.topk(full, 5).indices
    assert facts["top_tokens"] == loaded.tokenizer.tokens(top.tolist())
    # facts carry 6 decimals: atol covers the rounding, rtol the float32 runs
    torch.testing.assert_close(torch.tensor(facts["top_probs"]).double(), full[top].exp(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.tensor(facts["ablated_probs"]).double(), ablated[top].exp(), rtol=1e-5, atol=1e-6)
    kl = float((full.exp() * (full - ablated)).sum())
    assert facts["kl"] == pytest.approx(kl, rel=1e-4, abs=1e-6)
    assert facts["kl"] > 1e-4  # the head moved the distribution: the comparison above could fail
    assert facts["top1_changed"] == (int(ablated.argmax()) != int(top[0]))


@pytest.mark.parametrize(("kind", "how"), CASES)
def test_another_head_gives_another_distribution(envs, kind, how):
    env, folder = envs[(kind, how)]
    a, b = (WIDGET.run({"model": folder, "text": TEXT, "layer": 0, "head": h}, env).facts for h in (1, 2))
    assert a["top_probs"] == b["top_probs"]  # the same full model
    assert a["ablated_probs"] != b["ablated_probs"] and a["kl"] != b["kl"]
    ids = env.model(folder).encode(TEXT)
    full, ablated = _eager_next_token(folder, 0, 2, ids)  # head 2's truth is not head 1's facts
    assert a["kl"] != pytest.approx(float((full.exp() * (full - ablated)).sum()), rel=1e-3, abs=1e-6)


@pytest.mark.parametrize(("kind", "how"), CASES)
def test_the_shared_model_is_as_it_was_after_a_call_and_after_a_failing_one(envs, kind, how):
    env, folder = envs[(kind, how)]
    loaded = env.model(folder)
    ids = loaded.encode(TEXT)
    state = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    before = _plain_logits(loaded, ids)

    def untouched() -> None:
        assert torch.equal(_plain_logits(loaded, ids), before)
        assert all(torch.equal(v, state[k]) for k, v in loaded.model.state_dict().items())
        if how == "transformers" or kind == "gpt2":
            assert all(head_scales(m) is None for _, m in attention_modules(loaded.model))
        else:
            assert not any(layer.self_attn._forward_pre_hooks for layer in loaded.model.model.layers)

    args = {"model": folder, "text": TEXT, "layer": 1, "head": 2}
    WIDGET.run(args, env)
    untouched()

    def fail(module, inputs, output):
        raise RuntimeError("the pass broke after the silenced layer ran")

    handle = loaded.model.lm_head.register_forward_hook(fail)
    try:
        with pytest.raises(RuntimeError, match="the pass broke"):
            WIDGET.run(args, env)
    finally:
        handle.remove()
    untouched()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"layer": 2}, r"layer: {folder} has layers 0 to 1, got 2"),
        ({"head": 4}, r"head: {folder} has heads 0 to 3, got 4"),
        ({"layer": 30}, r"layer: expected an integer from 0 to 29, got 30"),  # the sliders reach SmolLM2's
        ({"head": 9}, r"head: expected an integer from 0 to 8, got 9"),
    ],
)
def test_a_layer_or_head_past_the_model_names_its_range(envs, args, message):
    env, folder = envs[("llama", "transformers")]
    with pytest.raises(LearnError, match=message.format(folder=folder)):
        WIDGET.run({"model": folder, "text": TEXT, "layer": 0, "head": 0, **args}, env)


def test_a_causal_lm_folder_is_offered_with_its_shape_and_the_default_is_unchanged(envs):
    env, folder = envs[("llama", "transformers")]
    offered = {c["name"]: c for c in WIDGET.describe(env)["controls"]}
    assert offered["model"]["choices"] == ["smollm2", folder]  # minilm, an encoder, is never offered here
    assert f"{folder}: 2 × 4 heads" in offered["model"]["help"]
    assert (offered["layer"]["high"], offered["head"]["high"]) == (29, 8)
    plain = {c["name"]: c for c in WIDGET.describe(Env())["controls"]}
    assert plain["model"]["choices"] == ["smollm2"]
    assert [(plain[n]["default"], plain[n]["high"]) for n in ("layer", "head")] == [(3, 29), (4, 8)]


def test_an_encoder_or_a_broken_folder_is_named_not_offered(folders, tmp_path):  # noqa: F811
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{")
    electra, bert = str(folders["electra"]), str(folders["bert"])  # transformers' encoder, qkv's own BERT
    env = Env(models=("smollm2", electra, bert, str(broken)))
    model = next(c for c in WIDGET.describe(env)["controls"] if c["name"] == "model")
    assert model["choices"] == ["smollm2"]
    assert f"model: {electra} is not a causal language model (it loads as ElectraModel)" in model["help"]
    assert f"model: {bert} is not a causal language model (it loads as BertModel)" in model["help"]
    assert f"{broken} did not load" in model["help"]
    with pytest.raises(LearnError, match="expected one of"):
        WIDGET.run({"model": electra}, env)
    with pytest.raises(LearnError, match=f"model: {electra} is not a causal language model"):
        causal_lm_shape(env, electra)


def test_the_learn_page_silences_a_head_of_the_folder_given_to_the_server(envs, lms):
    from fastapi.testclient import TestClient

    from qkv.explorer.app import create_app

    folder = str(lms["llama"])
    app = create_app(model=folder)
    client = TestClient(app, headers={"X-QKV-Token": app.state.token})
    lessons = client.get("/api/learn/course").json()["lessons"]
    ident = next(
        les["id"]
        for les in lessons
        if "head-ablation" in client.get(f"/api/learn/lessons/{les['id']}").json()["widgets"]
    )
    controls = client.get(f"/api/learn/lessons/{ident}").json()["widgets"]["head-ablation"]["controls"]
    assert folder in next(c for c in controls if c["name"] == "model")["choices"]
    args = {"model": folder, "text": TEXT, "layer": 0, "head": 1}
    answer = client.post("/api/learn/widget", json={"widget": "head-ablation", "args": args})
    assert answer.status_code == 200, answer.text
    env, _ = envs[("llama", "loader")]  # the server loads the folder as qkv learn does
    assert answer.json()["facts"] == WIDGET.run(args, env).facts
