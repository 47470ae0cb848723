"""The analytic FLOPs of benchmarks/flops.py against torch's FlopCounterMode on the same small training step."""
import re, sys
from pathlib import Path
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from vmllm.core import IGNORE_INDEX
from vmllm.model import tiny_vmllm
from vmllm.train import set_trainable, token_loss_sum

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from flops import step_flops  # noqa: E402

TEXT, PROMPT, BATCH = 96, 12, 3


def small_model(family, connector):
    model, _ = tiny_vmllm(family, connector, llm_width=128, llm_layers=3)
    for m in (model.language_model, model.vision_tower.model):  # eager attention: FlopCounterMode counts its products on CPU
        m.set_attn_implementation("eager")
    return model


def small_batch(model):
    g = torch.Generator().manual_seed(0)
    slots, image_id = model.tokens_per_image, model.config.image_token_index
    text = torch.randint(image_id + 1, model.config.text_config.vocab_size, (BATCH, TEXT), generator=g)
    ids = torch.cat([torch.full((BATCH, slots), image_id), text], 1)
    labels = torch.cat([torch.full((BATCH, slots + TEXT // 2), IGNORE_INDEX), text[:, TEXT // 2:]], 1)
    size = model.vision_tower.image_size
    tv = model.config.encoder_config.text_config.vocab_size
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=torch.randn(BATCH, 3, size, size, generator=g),
                prompt_input_ids=torch.randint(5, tv, (BATCH, PROMPT), generator=g),
                prompt_attention_mask=torch.ones(BATCH, PROMPT, dtype=torch.long)), labels


def counted_flops(model, stage):
    "FLOPs FlopCounterMode sees in one forward + backward of the training loss."
    set_trainable(model, stage)
    model.train()
    inputs, labels = small_batch(model)
    with FlopCounterMode(display=False) as fc:
        token_loss_sum(model(**inputs).logits, labels).backward()
    return fc.get_total_flops(), inputs


def analytic(model, stage, inputs, **kw):
    T = inputs["input_ids"].shape[1]
    return step_flops(model, stage, [T] * BATCH, BATCH, [PROMPT] * BATCH, head_tokens=BATCH * T, recompute_llm=False, **kw)


@pytest.mark.parametrize("stage", [1, 2])
@pytest.mark.parametrize("family,connector", [("clip", "vmllm"), ("siglip", "vmllm"), ("siglip", "mlp2x_gelu")])
def test_analytic_flops_match_the_counter(family, connector, stage):
    model = small_model(family, connector)
    counted, inputs = counted_flops(model, stage)
    fl = analytic(model, stage, inputs)
    assert abs(fl.model / counted - 1) < 0.05, f"analytic {fl.model:.4e} vs counted {counted:.4e}\n{fl.table()}"


def test_the_comparison_fails_without_the_attention_term():
    "The negative control: an analytic count that forgets attention's products is off by more than the tolerance."
    model = small_model("siglip", "vmllm")
    counted, inputs = counted_flops(model, 2)
    fl = analytic(model, 2, inputs)
    fwd, bwd, _ = fl.parts.pop("LLM attention")
    assert abs(fl.model / counted - 1) > 0.05


def test_the_benchmark_runs_on_tiny_models(capsys):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import train_speed
    train_speed.main(["--tiny", "--device", "cpu", "--steps", "2", "--connectors", "vmllm", "--stages", "1"])
    out = capsys.readouterr().out
    assert "stage 1 recompute full" in out and "LLM decoder layers" in out and "model FLOPs" in out
    saved = {m[1]: float(m[2]) for m in re.finditer(r"recompute (\w+) .*?([\d.]+) MiB saved for backward", out)}
    assert list(saved) == ["none", "selective", "full"] and saved["none"] > saved["selective"] > saved["full"], saved
    hw = {m[1]: float(m[2]) for m in re.finditer(r"recompute (\w+) .*?hardware ([\d.e+]+) FLOPs per step", out)}
    assert hw["none"] < hw["selective"] < hw["full"], hw  # recomputing costs hardware FLOPs, never model FLOPs


def test_the_labelled_head_is_counted_too():
    "vmllm_train's step runs the LM head on the positions that predict a label: the count follows it."
    from vmllm.train import loss_sum_on_labels, predicting_positions
    model = small_model("clip", "vmllm")
    set_trainable(model, 2)
    model.train()
    inputs, labels = small_batch(model)
    with FlopCounterMode(display=False) as fc:
        loss_sum_on_labels(model, inputs, labels).backward()
    T = inputs["input_ids"].shape[1]
    fl = step_flops(model, 2, [T] * BATCH, BATCH, [PROMPT] * BATCH, BATCH * len(predicting_positions(labels)), False)
    assert abs(fl.model / fc.get_total_flops() - 1) < 0.05
    assert fl.model < analytic(model, 2, inputs).model  # fewer FLOPs than with the head on every position
