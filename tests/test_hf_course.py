"""The course's real-model widget and `qkv generate` on a model folder transformers loads (``--model PATH``)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers", reason="these tests load models through transformers: pip install transformers")
pytest.importorskip("tokenizers", reason="the tiny tokenizers need the 'tokenizers' package")

from test_hf_tools import folders  # noqa: E402, F401 - the tiny GPT-2, Electra and BERT folders

import qkv.learn.widgets  # noqa: E402, F401 - registers the widgets
import qkv.loader  # noqa: E402
from qkv.cli import main  # noqa: E402
from qkv.learn.errors import LearnError  # noqa: E402
from qkv.learn.widget import WIDGETS, Env  # noqa: E402


def _env(dirs, *names: str) -> Env:
    return Env(models=("minilm", "smollm2", *(str(dirs[n]) for n in names)))


def test_the_widget_offers_a_folder_and_its_layers_when_the_course_has_one(folders):  # noqa: F811
    widget = WIDGETS["model-attention"]
    plain = {c["name"]: c for c in widget.describe(Env())["controls"]}
    assert plain["model"]["choices"] == ["minilm", "smollm2"]
    gpt2 = str(folders["gpt2"])
    offered = {c["name"]: c for c in widget.describe(_env(folders, "gpt2"))["controls"]}
    assert offered["model"]["choices"] == ["minilm", "smollm2", gpt2]
    assert f"{gpt2}: 2 × 4 heads" in offered["model"]["help"]
    assert (offered["layer"]["high"], offered["head"]["high"]) == (29, 11)  # still SmolLM2's layers, MiniLM's heads


def test_the_widget_reads_a_folders_attention_as_transformers_eager_gives_it(folders):  # noqa: F811
    env = _env(folders, "gpt2")
    gpt2 = str(folders["gpt2"])
    result = WIDGETS["model-attention"].run(
        {"model": gpt2, "text": "the cat sat on the mat", "layer": 1, "head": 2, "query": "mat"}, env
    )
    loaded = env.model(gpt2)
    ids = loaded.encode("the cat sat on the mat")
    eager = type(loaded.model).from_pretrained(folders["gpt2"], attn_implementation="eager").eval()
    with torch.no_grad():
        expected = eager(input_ids=torch.tensor([ids]), output_attentions=True).attentions[1][0, 2]  # (N, N)
    q = result.facts["query_index"]
    row = result.views[0]["weights"]
    assert row == pytest.approx(expected[q].tolist(), abs=1e-5)
    assert result.facts["top_key"] == int(expected[q].argmax())
    with pytest.raises(LearnError, match=r"layer: .* has layers 0 to 1, got 5"):
        WIDGETS["model-attention"].run({"model": gpt2, "layer": 5, "head": 0}, env)


def test_a_folder_that_does_not_load_is_named_not_offered(folders, tmp_path):  # noqa: F811
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{")
    controls = {c["name"]: c for c in WIDGETS["model-attention"].describe(Env(models=(str(broken),)))["controls"]}
    assert controls["model"]["choices"] == ["minilm", "smollm2"]
    assert f"{broken} did not load" in controls["model"]["help"]


def test_the_learn_page_offers_the_folder_given_to_the_server(folders):  # noqa: F811
    from fastapi.testclient import TestClient

    from qkv.explorer.app import create_app

    gpt2 = str(folders["gpt2"])
    app = create_app(model=gpt2)
    client = TestClient(app, headers={"X-QKV-Token": app.state.token})
    lessons = client.get("/api/learn/course").json()["lessons"]
    ident = next(
        les["id"]
        for les in lessons
        if "model-attention" in client.get(f"/api/learn/lessons/{les['id']}").json()["widgets"]
    )
    controls = client.get(f"/api/learn/lessons/{ident}").json()["widgets"]["model-attention"]["controls"]
    assert gpt2 in next(c for c in controls if c["name"] == "model")["choices"]
    answer = client.post(
        "/api/learn/widget",
        json={
            "widget": "model-attention",
            "args": {"model": gpt2, "text": "the cat sat", "layer": 0, "head": 0, "query": "sat"},
        },
    )
    assert answer.status_code == 200, answer.text
    assert sum(answer.json()["views"][0]["weights"]) == pytest.approx(1.0, abs=1e-4)


def test_generate_continues_a_prompt_with_a_folder_as_transformers_generate_does(folders, capsys):  # noqa: F811
    gpt2 = str(folders["gpt2"])
    assert main(["generate", "the cat", "--model", gpt2, "--max-new-tokens", "6"]) == 0
    out, err = capsys.readouterr()
    expected = qkv.loader.load(gpt2).generate("the cat", max_new_tokens=6)  # transformers' generate(), greedy
    assert out == expected + "\n"
    assert "transformers' DynamicCache" in err


def test_the_stream_joined_is_the_generated_text(folders):  # noqa: F811
    model = qkv.loader.load(str(folders["gpt2"]))
    pieces = list(model.stream("the dog", 8))
    assert "".join(pieces) == model.generate("the dog", max_new_tokens=8)
    sampled = ["".join(model.stream("the dog", 8, temperature=1.0, top_p=0.9, seed=s)) for s in (1, 1)]
    assert sampled[0] == sampled[1]


@pytest.mark.parametrize(
    ("name", "extra", "message"),
    [
        ("electra", [], "loads as ElectraModel, without a language-model head"),
        ("gpt2", ["--cache", "int8"], "--cache: 'int8' is a cache of qkv's own models"),
        ("gpt2", ["--temperature", "-1", "--max-new-tokens", "4"], "temperature: expected a number >= 0"),
        ("gpt2", [], "the prompt's 2 tokens + 64 new ones exceed the model's context of 64 positions"),
    ],
)
def test_generate_refuses_what_a_folder_cannot_do_in_one_line(folders, capsys, name, extra, message):  # noqa: F811
    assert main(["generate", "the cat", "--model", str(folders[name]), *extra]) == 2
    out, err = capsys.readouterr()
    assert message in err and len(err.strip().splitlines()) == 1 and out == ""
