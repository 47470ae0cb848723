"""End-to-end checks of `vmllm_train`: the toy recipe from the command line and its errors (several processes:
tests/test_backends.py)."""
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
    for bad, says in [("stage1.lrate=1", "unknown option stage1.lrate"),
                      ("model.conector=mlp2x_gelu", "unknown option model.conector; model takes: mm_projector_type"),
                      ("model.connector=mlp2x_gelu", "unknown option model.connector (did you mean mm_projector_type?)"),
                      ("model.mm_projector_type=mlp3", "choose one of vmllm, mlp2x_gelu"),
                      ("stage2.lr=fast", "stage2.lr='fast': expected float"), ("stages=[1,3]", "stages: 3 is not one of 0, 1, 2"),
                      ("toy_data.categories.positon=1", "toy_data.categories: 'positon' is not one of count, small, colour"),
                      ("toy_data.categories.count=-1", "toy_data.categories.count=-1: a weight is a number >= 0")]:
        r = run(["vmllm_train", "--preset", "toy", "--output_dir", str(tmp_path / "y"), "--set", bad])
        assert r.returncode != 0 and says in r.stderr, (bad, r.stderr[-1500:])
        assert not (tmp_path / "y").exists()  # refused before any folder or data is made

def test_missing_stage2_data_is_refused_before_stage1_trains(tmp_path):
    missing = tmp_path / "mix.json"
    r = run(["vmllm_train", "--preset", "toy", "--output_dir", str(tmp_path / "toy"), "--stage2_data", str(missing), "--set", TINY])
    assert r.returncode != 0 and f"stage2.data: {missing} does not exist: pass an existing file with --stage2_data" in r.stderr, r.stderr[-1500:]
    assert not (tmp_path / "toy").exists()  # nothing generated, nothing trained
