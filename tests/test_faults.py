"""Crash and resume, through `vmllm_train` as a user runs it: a two-stage toy run killed with SIGKILL at a
moment chosen by `VMLLM_KILL_AT` (inside a step, inside a checkpoint write, inside the final save) and then
resumed must end with the same weights, bit for bit, as a run that was never interrupted; a resume with other
settings is refused; `--init` is used. Own CI step: `pytest -m faults tests`.

Bit for bit across processes needs a reproducible BLAS: MKL picks its kernels by memory alignment, so two CPU
processes can differ in the last bit of a matrix product; `MKL_CBWR=COMPATIBLE` (set for every run here) fixes its
code path. Without it a resumed run agrees with an uninterrupted one to float rounding (about 1e-7)."""
import json, os, shutil, signal, subprocess
from pathlib import Path

import pytest
from safetensors.torch import load_file

pytestmark = pytest.mark.faults

TINY = ("toy_data.n_stage1=32 toy_data.n_stage2=32 toy_data.n_heldout=4 toy_data.image_size=32 model.image_size=32 "
        "model.encoder_layers=2 model.llm_layers=2 model.llm_width=64 model.encoder_width=48 stage0.steps=2 stage0_llm.steps=2 "
        "stage1.max_steps=2 stage1.global_batch=8 stage1.batch_size=8 stage1.save_every=1 "
        "stage2.max_steps=6 stage2.global_batch=8 stage2.batch_size=8 stage2.save_every=2")


def train(out: Path, *extra, kill_at: str | None = None, sets: str = TINY):
    env = {**os.environ, "MKL_CBWR": "COMPATIBLE", "OMP_NUM_THREADS": "1", **({"VMLLM_KILL_AT": kill_at} if kill_at else {})}
    return subprocess.run(["vmllm_train", "--preset", "toy", "--output_dir", str(out), "--set", sets, *extra],
                          capture_output=True, text=True, timeout=600, env=env)


def weights(out: Path) -> dict:
    return load_file(out / "stage2" / "final" / "model.safetensors")


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    "The uninterrupted run every crashed-and-resumed run must equal."
    out = tmp_path_factory.mktemp("straight") / "run"
    r = train(out)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


@pytest.mark.parametrize("kill_at", ["stage2:step3", "stage2:checkpoint4", "stage2:final", "stage1:final"])
def test_killed_run_resumes_to_the_same_weights(kill_at, straight, tmp_path):
    out = tmp_path / "run"
    r = train(out, kill_at=kill_at)
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr[-2000:])
    stage = kill_at.split(":")[0]
    assert not (out / stage / "final").exists()  # nothing half-written is taken for a finished stage
    assert not any(p.name.startswith(".tmp-") and (p / "trainer_state.json").exists() for p in (out / stage).iterdir())
    r = train(out, "--resume")
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = weights(straight), weights(out)
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a), kill_at
    assert json.loads((out / "stage2" / "history.json").read_text()) != []


def test_resume_with_other_settings_is_refused(straight, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(straight, out)
    before = (out / "run_config.yaml").read_text()
    r = train(out, "--resume", sets=TINY.replace("stage2.max_steps=6", "stage2.max_steps=6 stage2.lr=5e-3"))
    assert r.returncode != 0 and "started with other settings (stage2.lr: 0.001 -> 0.005)" in r.stderr, r.stderr[-2000:]
    assert (out / "run_config.yaml").read_text() == before  # the record still tells the truth
    r = train(out, "--resume", sets=TINY.replace("stage2.save_every=2", "stage2.save_every=3"))  # safe to change
    assert r.returncode == 0, r.stderr[-2000:]


def test_toy_init_is_used(straight, tmp_path):
    out = tmp_path / "run"
    r = train(out, "--init", str(straight / "stage2" / "final"), "--stages", "2")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "stage 0 skipped" in r.stdout
    first = json.loads((out / "stage2" / "history.json").read_text())[0]["loss"]
    fresh = json.loads((straight / "stage2" / "history.json").read_text())[0]["loss"]
    assert first < fresh  # it starts from the trained model, not from random weights


def test_resume_skips_a_broken_checkpoint(straight, tmp_path):
    "The newest checkpoint cut short after the crash: resuming names it, continues from the older one and ends as the straight run."
    out = tmp_path / "run"
    r = train(out, kill_at="stage2:step5")  # stage 2 has checkpoints at steps 2 and 4
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr[-2000:])
    broken = out / "stage2" / "checkpoint-4" / "trainable.safetensors"
    broken.write_bytes(broken.read_bytes()[:-100])
    r = train(out, "--resume")
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"skipping checkpoint-4, it is broken: {broken} is" in r.stdout, r.stdout[-3000:]
    assert f"resuming from {out / 'stage2' / 'checkpoint-2'} at step 2" in r.stdout, r.stdout[-3000:]
    a, b = weights(straight), weights(out)
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
