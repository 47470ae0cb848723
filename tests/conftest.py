"""Shared test helpers."""
import pytest
from PIL import Image
from vmllm.model import tiny_vmllm


def tiny_checkpoint(folder, colour: str):
    "A saved tiny vmllm model (`folder/model`) and a picture of one colour (`folder/<colour>.png`); returns `folder`."
    model, proc = tiny_vmllm()
    model.save_pretrained(folder / "model"); proc.save_pretrained(folder / "model")
    Image.new("RGB", (40, 30), colour).save(folder / f"{colour}.png")
    return folder


SHORT_TOY = ("toy_data.n_stage1=600 toy_data.n_stage2=3000 toy_data.n_heldout=60 stage0.steps=300 stage0_llm.steps=60 "
             "stage1.epochs=1.0 stage2.epochs=1.0")


def trained_toy(folder, sets: str = SHORT_TOY):
    "A shortened run of the toy preset as shipped (its templates, prompt rule and data kinds), in `folder`; returns `folder`."
    import os, subprocess, sys
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "vmllm.recipes", "--preset", "toy", "--output_dir", str(folder), "--set", sets],
                       capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return folder


@pytest.fixture(scope="session")
def toy_run(tmp_path_factory):
    "One shortened toy run for the whole test session, in `<tmp>/runs/toy` as `vmllm_train --preset toy` lays it out."
    return trained_toy(tmp_path_factory.mktemp("toy") / "runs" / "toy")
