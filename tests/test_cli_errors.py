"""Every command answers a user error with one line on stderr that names the file or option, and exit code 2;
`--debug` shows the traceback instead."""
import os, subprocess
import pytest
import torch
from conftest import tiny_checkpoint


def run(*args, env=None):
    return subprocess.run(list(args), capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})


def assert_one_line_error(r, prog, *phrases):
    "Exit code 2 and one stderr line `prog: error: ...` (the last) holding each phrase, no traceback."
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr and sum("error" in l.lower() for l in lines) == 1, r.stderr[-2000:]
    assert lines[-1].startswith(f"{prog}: error: "), lines[-1]
    for p in phrases: assert p in lines[-1], (p, lines[-1])


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt"), "blue")


def test_train_config_errors_are_one_line(tmp_path):
    (tmp_path / "list.yaml").write_text("- stage2.lr: 1e-5\n")
    assert_one_line_error(run("vmllm_train", "--config", str(tmp_path / "list.yaml"), "--output_dir", str(tmp_path / "o")),
                          "vmllm_train", "list.yaml must hold `key: value` options")
    (tmp_path / "bad.yaml").write_text("stage2: [lr: 1\n")
    assert_one_line_error(run("vmllm_train", "--config", str(tmp_path / "bad.yaml")), "vmllm_train", "bad.yaml is not valid YAML")
    assert_one_line_error(run("vmllm_train", "--set", "stage2.lr=abc"), "vmllm_train", "stage2.lr='abc'")
    assert_one_line_error(run("vmllm_train", "--set", "stage2.batch_size=0"), "vmllm_train", "stage2.batch_size")
    assert_one_line_error(run("vmllm_train", "--stages", "one"), "vmllm_train", "--stages")
    assert not (tmp_path / "o").exists()  # refused before any folder is made


def test_train_missing_llm_is_named_not_a_hub_error(tmp_path):
    (tmp_path / "rows.json").write_text("[]")
    r = run("vmllm_train", "--preset", "clip-b32", "--llm", str(tmp_path / "no_llm"), "--stages", "1",
            "--stage1_data", str(tmp_path / "rows.json"), "--stage1_images", str(tmp_path), "--output_dir", str(tmp_path / "o"))
    assert_one_line_error(r, "vmllm_train", f"LLM directory not found: {tmp_path / 'no_llm'}")


def test_debug_shows_the_traceback(tmp_path):
    r = run("vmllm_train", "--preset", "nope", "--debug")
    assert r.returncode == 1 and "Traceback" in r.stderr and "unknown preset 'nope'" in r.stderr
    r = run("vmllm_train", "--preset", "nope", env={"VMLLM_DEBUG": "1"})
    assert r.returncode == 1 and "Traceback" in r.stderr


def test_model_commands_name_a_missing_or_refused_checkpoint(ckpt, tmp_path):
    missing = str(tmp_path / "no_model")
    assert_one_line_error(run("vmllm_eval", "--model", missing, "--questions", "q.jsonl"), "vmllm_eval", "not found")
    assert_one_line_error(run("vmllm_chat", "--model", missing), "vmllm_chat", "not found")
    assert_one_line_error(run("vmllm_convert", missing), "vmllm_convert", "not found")
    assert_one_line_error(run("vmllm_convert", str(ckpt / "model"), str(tmp_path / "out"), "--to", "llava"),
                          "vmllm_convert", "--to must be 'vmllm' or 'reference'")
    assert_one_line_error(run("vmllm_demo", "--family", "foo"), "vmllm_demo", "unknown encoder family 'foo'")
    r = run("vmllm_eval", "--model", str(ckpt / "model"), "--questions", str(tmp_path / "q.jsonl"))
    assert_one_line_error(r, "vmllm_eval", "question file not found", "q.jsonl")
    assert "Loading weights" not in r.stderr  # the question file is checked before the model is loaded


def test_a_pickle_that_runs_code_is_refused_by_name(tmp_path):
    class RunsCode:
        def __reduce__(self): return (os.system, (f"touch {tmp_path / 'ran'}",))
    released = tmp_path / "released"
    released.mkdir()
    (released / "config.json").write_text('{"model_type": "llava_llama", "mm_projector_type": "vmllm"}')
    torch.save({"model.embed_tokens.weight": torch.zeros(2, 2), "x": RunsCode()}, released / "pytorch_model.bin")
    r = run("vmllm_convert", str(released), "--inspect")
    assert_one_line_error(r, "vmllm_convert", "pytorch_model.bin: refused")
    assert not (tmp_path / "ran").exists()
