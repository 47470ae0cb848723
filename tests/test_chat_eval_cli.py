"""`vmllm_chat` and `vmllm_eval` end to end on a saved tiny checkpoint."""
import json, subprocess
from pathlib import Path
import pytest
from conftest import tiny_checkpoint

def run(*args, stdin=""):
    return subprocess.run(list(args), input=stdin, capture_output=True, text=True, timeout=300)

@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt"), "blue")

def test_chat_streams_two_turns_and_explains(ckpt):
    r = run("vmllm_chat", "--model", str(ckpt / "model"), "--image", str(ckpt / "blue.png"), "--temperature", "0",
            "--max_new_tokens", "5", "--explain", str(ckpt / "explain"), stdin="What colour is it?\nAre you sure?\n")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("ASSISTANT:") == 2
    assert sorted(p.name for p in (ckpt / "explain").iterdir()) == ["turn1_gates.png", "turn1_layers.png",
                                                                  "turn2_gates.png", "turn2_layers.png"]

def test_chat_defaults_fit_the_toy_context_and_reset(ckpt):
    r = run("vmllm_chat", "--model", str(ckpt / "model"), "--image", str(ckpt / "blue.png"), "--temperature", "0",
            stdin="What colour is it?\n" + "word " * 600 + "\n/reset\nWhat colour is it?\n")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("but the model's context is 512") == 1, r.stdout  # only the over-long question is refused
    assert "type /reset to start a new conversation" in r.stdout and "[conversation reset]" in r.stdout

def test_chat_clear_errors(ckpt, tmp_path):
    r = run("vmllm_chat", "--model", str(ckpt / "model"), "--image", str(tmp_path / "nope.png"))
    assert r.returncode != 0 and "cannot read image" in r.stderr
    (tmp_path / "half").mkdir(); (tmp_path / "half" / "config.json").write_text('{"model_type": "vmllm"}')
    r = run("vmllm_chat", "--model", str(tmp_path / "half"))
    assert r.returncode != 0 and "has no model.safetensors" in r.stderr

def test_eval_scores_good_rows_and_skips_bad_ones(ckpt):
    rows = [{"question_id": 1, "image": "blue.png", "text": "What colour?", "answer": "blue", "category": "colour"},
            {"question_id": 2, "image": "blue.png", "text": "Colour?", "options": ["red", "blue"], "answer": "B", "category": "mc"}]
    q = ckpt / "questions.jsonl"
    q.write_text("\n".join(json.dumps(r) for r in rows) + "\n{broken\n")
    r = run("vmllm_eval", "--model", str(ckpt / "model"), "--questions", str(q), "--image_folder", str(ckpt),
            "--results_file", str(ckpt / "res.json"))
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((ckpt / "res.json").read_text())
    assert (res["n"], res["answered"], res["skipped"], res["scored"]) == (3, 2, 1, 2)
    assert "questions.jsonl line 3: not valid JSON" in r.stdout and "overall" in r.stdout
    assert len((ckpt / "res.answers.jsonl").read_text().splitlines()) == 2


def test_eval_skips_bad_images_and_refuses_unwritable_output(ckpt, tmp_path):
    rows = [{"question_id": 1, "image": "blue.png", "text": "What colour?", "answer": "blue"},
            {"question_id": 2, "image": 5, "text": "What colour?"}, {"question_id": 3, "image": "../blue.png", "text": "?"}]
    q = tmp_path / "questions.jsonl"
    q.write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "a_file").write_text("")
    r = run("vmllm_eval", "--model", str(ckpt / "model"), "--questions", str(q), "--image_folder", str(ckpt),
            "--results_file", str(tmp_path / "a_file" / "res.json"))
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert f"cannot write {tmp_path / 'a_file' / 'res.json'}: {tmp_path / 'a_file'} is a file, not a folder" in r.stderr
    r = run("vmllm_eval", "--model", str(ckpt / "model"), "--questions", str(q), "--image_folder", str(ckpt))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "questions.jsonl line 2 (question_id 2): 'image' must be a path or a list of paths, not a number (5)" in r.stdout
    assert "questions.jsonl line 3 (question_id 3): image path '../blue.png' escapes the image folder" in r.stdout
    res = json.loads((tmp_path / "questions.results.json").read_text())
    assert (res["answered"], res["skipped"]) == (1, 2)
