"""End-to-end checks of `vmllm_train`: the toy recipe from the command line, and two CPU
processes (gloo, through `torchrun`) training like one process with the same global batch."""
import json, shutil, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ("toy_data.n_stage1=48 toy_data.n_stage2=48 toy_data.n_heldout=8 toy_data.image_size=32 model.image_size=32 "
        "model.encoder_layers=2 model.llm_layers=2 model.llm_width=64 model.encoder_width=48")

def run(args, **kw):
    return subprocess.run(args, capture_output=True, text=True, timeout=600, **kw)

def test_toy_recipe_runs_every_stage_and_reports_accuracy(tmp_path):
    r = run(["vmllm_train", "--preset", "toy", "--output_dir", str(tmp_path / "toy"), "--set",
             TINY + " stage0.steps=3 stage0_llm.steps=3 stage1.max_steps=2 stage2.max_steps=2 "
                    "stage1.global_batch=8 stage1.batch_size=8 stage2.global_batch=8 stage2.batch_size=8"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resolved config:" in r.stdout and "held-out accuracy" in r.stdout, r.stdout[-2000:]
    summary = json.loads((tmp_path / "toy" / "summary.json").read_text())
    assert summary["heldout"]["n"] == 8 and 0 <= summary["heldout"]["accuracy"] <= 1
    assert (tmp_path / "toy" / "stage2" / "loss.png").exists()

def test_bad_flags_give_clear_errors(tmp_path):
    r = run(["vmllm_train", "--preset", "siglip-so400m-384", "--output_dir", str(tmp_path / "x")])
    assert r.returncode != 0 and "no LLM given: pass --llm PATH" in r.stderr
    r = run(["vmllm_train", "--preset", "toy", "--output_dir", str(tmp_path / "y"), "--set", "stage1.lrate=1"])
    assert r.returncode != 0 and "unknown option(s) ['lrate']" in r.stderr
    assert not (tmp_path / "y").exists()  # refused before any folder or data is made

def test_two_cpu_processes_train_like_one(tmp_path):
    common = ["--preset", "toy", "--stages", "1"]
    extra = TINY + " stage1.max_steps=4 stage1.global_batch=8 stage1.lr=3e-3"
    one = run(["vmllm_train", *common, "--output_dir", str(tmp_path / "one"), "--set", extra + " stage1.batch_size=8"])
    assert one.returncode == 0, one.stderr[-3000:]
    two = run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", shutil.which("vmllm_train"),
               *common, "--output_dir", str(tmp_path / "two"), "--set", extra + " stage1.batch_size=4"])
    assert two.returncode == 0, two.stderr[-3000:]
    h1 = json.loads((tmp_path / "one" / "stage1" / "history.json").read_text())
    h2 = json.loads((tmp_path / "two" / "stage1" / "history.json").read_text())
    assert [h["step"] for h in h1] == [h["step"] for h in h2] == [1, 2, 3, 4]
    for a, b in zip(h1, h2): assert abs(a["loss"] - b["loss"]) < 1e-4 * abs(a["loss"]), (h1, h2)
    assert h1[-1]["loss"] < h1[0]["loss"]  # it trained
