"""Results a user can trust, through `vmllm_train` as a user runs it: the same command and seed give the same
weights bit for bit (paper preset, on tiny local stand-ins for the encoder and the LLM); one output folder has
one writer; the settings are recorded before any work, so a run stopped in stage 0 cannot be resumed with
others; a stage's record is complete whenever its final model is. The runs that train or are killed are in
the `faults` CI step (`pytest -m faults tests`); the refusals that happen before any work run with the rest."""
import json, os, signal, socket, subprocess, sys
from pathlib import Path

import pytest
from safetensors.torch import load_file
from transformers import LlamaForCausalLM
from vmllm.core import build_tokenizer, tiny_llm_config
from vmllm.encoder import build_image_processor, model_from_config, tiny_encoder_config
from vmllm.synth import make_toy_data
from vmllm.zoo import save_tower_dir

from test_faults import TINY, train

ENV = {**os.environ, "MKL_CBWR": "COMPATIBLE", "OMP_NUM_THREADS": "1"}


def paper_stand_ins(folder: Path) -> dict:
    "Toy data, a tiny local LLM and a tiny local SigLIP tower, as a user with downloaded checkpoints has them."
    data = make_toy_data(folder / "data", n_stage1=16, n_stage2=8, n_heldout=2, image_size=32)
    tok = build_tokenizer(image_token=False)
    LlamaForCausalLM(tiny_llm_config(tok)).save_pretrained(folder / "llm")
    tok.save_pretrained(folder / "llm")
    enc_tok = build_tokenizer(add_eos=True)
    enc = model_from_config(tiny_encoder_config("siglip", vocab_size=len(enc_tok)))
    save_tower_dir(enc, enc_tok, build_image_processor(enc.config), folder / "tower")
    return data


def train_paper_stage1(folder: Path, data: dict, out: Path, more_sets: str = ""):
    sets = "stage1.global_batch=4 stage1.batch_size=4 stage1.max_steps=2 stage1.num_workers=0 stage1.save_every=0 " + more_sets
    return subprocess.run(["vmllm_train", "--preset", "siglip-b16-224", "--output_dir", str(out), "--stages", "1",
                           "--llm", str(folder / "llm"), "--vision_tower", str(folder / "tower"),
                           "--stage1_data", data.get("stage1"), "--stage1_images", data["image_folder"], "--set", sets],
                          capture_output=True, text=True, timeout=600, env=ENV)


@pytest.mark.faults
def test_paper_preset_same_seed_same_weights(tmp_path):
    data = paper_stand_ins(tmp_path)
    finals = []
    for name in ("a", "b"):
        r = train_paper_stage1(tmp_path, data, tmp_path / name)
        assert r.returncode == 0, r.stderr[-3000:]
        finals.append(load_file(tmp_path / name / "stage1" / "final" / "model.safetensors"))
    a, b = finals
    assert a.keys() == b.keys()
    differ = [k for k in a if not (a[k] == b[k]).all()]
    assert differ == [], differ
    h = [json.loads((tmp_path / n / "stage1" / "history.json").read_text()) for n in ("a", "b")]
    assert [s["loss"] for s in h[0]] == [s["loss"] for s in h[1]]


@pytest.mark.faults
def test_loader_workers_name_each_bad_row_once(tmp_path):
    data = paper_stand_ins(tmp_path)
    rows = json.loads(Path(data["stage1"]).read_text())
    rows.append({**rows[0], "id": "gone", "image": "nope.png"})  # after the rows pre-flight reads
    (tmp_path / "with_bad.json").write_text(json.dumps(rows))
    r = train_paper_stage1(tmp_path, {**data, "stage1": str(tmp_path / "with_bad.json")}, tmp_path / "run",
                           "stage1.num_workers=1 stage1.max_steps=12")  # 17 rows, 4 a step: three epochs
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stderr.count("skipping") == 1, r.stderr[-3000:]
    bad = json.loads((tmp_path / "run" / "stage1" / "bad_rows.json").read_text())
    assert len(bad) == 1 and "(id gone): cannot read image" in bad[0], bad


def test_second_writer_is_refused_at_start(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    holder = dict(host=socket.gethostname(), pid=os.getpid(), started="now", command="vmllm_train --preset toy")
    (out / "vmllm.lock").write_text(json.dumps(holder))  # this live process holds the folder
    r = train(out)
    assert r.returncode != 0
    assert f"is in use by another run (process {os.getpid()} on {socket.gethostname()}" in r.stderr, r.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["vmllm.lock"]  # nothing was written
    assert json.loads((out / "vmllm.lock").read_text()) == holder  # and the other run's lock is left alone


@pytest.mark.faults
def test_two_runs_at_once_one_is_refused(tmp_path):
    out = tmp_path / "run"
    longer = TINY.replace("stage2.max_steps=6", "stage2.max_steps=300")  # still training when the second starts
    first = subprocess.Popen(["vmllm_train", "--preset", "toy", "--output_dir", str(out), "--set", longer],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    for _ in range(600):  # until the first run holds the folder
        if (out / "vmllm.lock").exists() or first.poll() is not None: break
        subprocess.run(["sleep", "0.1"])
    r = train(out, sets=longer.replace("stage2.max_steps=300", "stage2.max_steps=300 stage2.lr=5e-3"))
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-2000:]
    assert r.returncode != 0 and f"process {first.pid} on" in r.stderr, r.stderr[-2000:]
    assert "lr: 0.001" in (out / "run_config.yaml").read_text() and not (out / "vmllm.lock").exists()


@pytest.mark.faults
def test_stage0_kill_then_resume_with_other_settings_is_refused(tmp_path):
    out = tmp_path / "run"
    r = train(out, kill_at="stage0")
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert "encoder_layers: 2" in (out / "run_config.yaml").read_text()  # recorded before stage 0 started
    r = train(out, "--resume", sets=TINY.replace("model.encoder_layers=2", "model.encoder_layers=3"))
    assert r.returncode != 0 and "started with other settings (model.encoder_layers: 2 -> 3)" in r.stderr, r.stderr[-2000:]
    assert "taking over the lock of process" in r.stdout  # the killed run's lock: its process is gone
    r = train(out, "--resume")
    assert r.returncode == 0, r.stderr[-2000:]


@pytest.mark.faults
def test_kill_right_after_final_is_published_keeps_the_record(tmp_path):
    out = tmp_path / "run"
    r = train(out, kill_at="stage2:published")
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    history = json.loads((out / "stage2" / "history.json").read_text())
    assert len(history) == 6  # every step of the published model
    r = train(out, "--resume")
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads((out / "summary.json").read_text())["stages"]["2"]
    assert s["steps"] == 6 and s["final_loss"] == history[-1]["loss"] and "loaded" in s
