"""A paper preset end to end on tiny local stand-ins for the real encoder and LLM directories:
the path a user with downloaded checkpoints takes (`--llm`, `--vision_tower`, LLaVA data)."""
import json, subprocess
from pathlib import Path
from transformers import LlamaForCausalLM
from vmllm.core import build_tokenizer, tiny_llm_config
from vmllm.encoder import model_from_config, build_image_processor, tiny_encoder_config
from vmllm.synth import make_toy_data
from vmllm.zoo import save_tower_dir

def test_siglip_preset_trains_both_stages_from_local_directories(tmp_path):
    data = make_toy_data(tmp_path / "data", n_stage1=24, n_stage2=24, n_heldout=2, image_size=32)
    tok = build_tokenizer(image_token=False)  # like Vicuna's: no <image>, vmllm adds it
    LlamaForCausalLM(tiny_llm_config(tok)).save_pretrained(tmp_path / "llm"); tok.save_pretrained(tmp_path / "llm")
    enc_tok = build_tokenizer(add_eos=True)
    enc = model_from_config(tiny_encoder_config("siglip", vocab_size=len(enc_tok)))
    save_tower_dir(enc, enc_tok, build_image_processor(enc.config), tmp_path / "tower")
    small = ("stage1.global_batch=4 stage1.batch_size=4 stage1.max_steps=2 stage1.num_workers=0 stage1.save_every=0 "
             "stage2.global_batch=4 stage2.batch_size=2 stage2.max_steps=2 stage2.num_workers=0 stage2.save_every=0")
    r = subprocess.run(["vmllm_train", "--preset", "siglip-b16-224", "--output_dir", str(tmp_path / "run"),
                        "--llm", str(tmp_path / "llm"), "--vision_tower", str(tmp_path / "tower"),
                        "--stage1_data", data["stage1"], "--stage1_images", data["image_folder"],
                        "--stage2_data", data["stage2"], "--stage2_images", data["image_folder"], "--set", small],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "stage 1: 2 steps" in r.stdout and "stage 2: 2 steps" in r.stdout
    cfg = json.loads((tmp_path / "run" / "stage2" / "final" / "config.json").read_text())
    assert cfg["encoder_config"]["model_type"] == "siglip" and cfg["text_config"]["vocab_size"] == len(tok) + 1
    assert json.loads((tmp_path / "run" / "stage2" / "final" / "train_config.json").read_text())["grad_accum"] == 2
