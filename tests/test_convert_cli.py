"""`vmllm_convert` end to end on a released-layout directory built from tiny random weights."""
import subprocess
from pathlib import Path
from vmllm.core import IMAGE_TOKEN, build_tokenizer
from vmllm.model import diff_state_dicts, tiny_vmllm
from vmllm.zoo import read_state_dict, save_tower_dir, write_reference_dir

def run(*args):
    return subprocess.run(list(args), capture_output=True, text=True, timeout=300)

def released(tmp: Path, include_tower: bool):
    tok = build_tokenizer(image_token=False)
    llm_tok = build_tokenizer(image_token=False); llm_tok.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    model, proc = tiny_vmllm("siglip", tokenizers=(llm_tok, build_tokenizer(add_eos=True)))
    d = write_reference_dir(model, tok, tmp / "released", include_tower, fmt="bin", max_tensors=30)
    tower = save_tower_dir(model.vision_tower.model, proc.encoder_tokenizer, proc.image_processor, tmp / "tower")
    return d, tower

def test_inspect_convert_and_back_bit_identical(tmp_path):
    d, tower = released(tmp_path, include_tower=False)
    r = run("vmllm_convert", "--inspect", str(d))
    assert r.returncode == 0, r.stderr
    assert "reference checkpoint" in r.stdout and "connector: vmllm" in r.stdout and "vision tower weights" in r.stdout
    r = run("vmllm_convert", str(d), str(tmp_path / "ours"))  # no tower anywhere: a clear error
    assert r.returncode != 0 and "pass --vision_tower PATH" in r.stderr
    r = run("vmllm_convert", str(d), str(tmp_path / "ours"), "--vision_tower", str(tower))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "vmllm checkpoint" in r.stdout and "nothing missing" in r.stdout
    r = run("vmllm_convert", str(tmp_path / "ours"), str(tmp_path / "back"), "--to", "reference")
    assert r.returncode == 0, r.stderr[-2000:]
    assert diff_state_dicts(read_state_dict(tmp_path / "back"), read_state_dict(d)) == []

def test_inspect_names_what_a_directory_lacks(tmp_path):
    (tmp_path / "empty").mkdir()
    r = run("vmllm_convert", "--inspect", str(tmp_path / "empty"))
    assert r.returncode != 0 and "unknown checkpoint" in r.stdout and "missing: config.json" in r.stdout
    assert "is not a checkpoint vmllm knows" in r.stderr and "Traceback" not in r.stderr
    r = run("vmllm_convert", "--inspect", str(tmp_path / "absent"))
    assert r.returncode != 0 and "directory not found" in r.stderr


def test_a_trained_model_round_trips_both_ways_without_flags(tmp_path):
    "A model whose tower is none of the presets (as the toy's): to the released layout and back, every tensor kept."
    for family in ("clip", "siglip"):
        model, proc = tiny_vmllm(family)
        ours = tmp_path / family / "ours"
        model.save_pretrained(ours); proc.save_pretrained(ours)
        r = run("vmllm_convert", str(ours), str(tmp_path / family / "released"), "--to", "reference")
        assert r.returncode == 0, r.stderr[-2000:]
        r = run("vmllm_convert", str(tmp_path / family / "released"), str(tmp_path / family / "back"))
        assert r.returncode == 0, r.stderr[-2000:]
        assert diff_state_dicts(read_state_dict(tmp_path / family / "back"), read_state_dict(ours)) == [], family
        (tmp_path / family / "released" / "encoder_config.json").unlink()  # without the tower's own config: one line, no traceback
        r = run("vmllm_convert", str(tmp_path / family / "released"), str(tmp_path / family / "again"))
        last = r.stderr.strip().splitlines()[-1]
        assert r.returncode != 0 and "Traceback" not in r.stderr and last.startswith("vmllm_convert: "), r.stderr[-2000:]
        assert "tensor shapes disagree with its config" in last and "pass --vision_tower PATH" in last
