"""GPU check: stage-2 training at real size, with random weights (nothing is downloaded).

    python benchmarks/gpu_check.py                            # one GPU; about 5 minutes on an H100
    python benchmarks/gpu_check.py --tiny --device cpu        # the same code path on tiny models (a smoke test)

What it measures, printed with the command and the machine:
1. stage-2 steps (connector + LLM train, towers frozen) with the SigLIP-SO400M/14-384 tower and a 1B-class Llama
   (hidden 2048, 16 layers, vocabulary 32000), fp32 weights under bf16 autocast with gradient checkpointing, for the
   vMLLM connector and the LLaVA-1.5 connector: samples/s, peak memory, model FLOPs utilisation and the connector's
   share of the step time;
2. the enhancement alone, forward+backward, reference formulation against the fast form: time and peak memory;
3. `vmllm_train` itself under the shipped accelerate configs, one process on this device (tiny toy recipe, stage 1 then
   stage 2 from the same start): FSDP2 for both stages, ZeRO-2 for stage 1 and ZeRO-3 for stage 2 (if DeepSpeed is
   installed), each against a plain run: the backend it ran, the largest relative difference of its per-step losses,
   and the final model's logits after reloading;
4. if DeepSpeed is installed: a single-process ZeRO-2 and ZeRO-3 step at real size whose gathered model is saved and
   reloads.

MFU here is the old formula, kept so that its recorded outputs can be read: FLOPs per sample = 8 * P_LLM * T (it counts
the recomputed forward and the embedding table) + 2 * P_tower * 729 (the text tower as if it read the image slots) +
6 * P_connector * 729, no attention. It overstates MFU: benchmarks/train_speed.py counts model FLOPs (MFU) and hardware
FLOPs (HFU) honestly, per stage (benchmarks/flops.py, checked against FlopCounterMode by tests/test_train_speed.py).
"""
import argparse, json, os, shlex, shutil, subprocess, sys, tempfile, time
from pathlib import Path
import torch
from transformers import AutoModelForCausalLM, LlamaConfig
from vmllm.core import IGNORE_INDEX
from vmllm.encoder import model_from_config, encoder_config, tiny_encoder_config
from vmllm.model import VmllmForCausalLM, _compose
from vmllm.train import set_trainable, token_loss_sum

sys.path.insert(0, str(Path(__file__).parent))
from enhance_speed import bench as enhance_bench  # noqa: E402


def build(connector: str, tiny: bool, device):
    "A vMLLM model from random real-size (or tiny) parts, on `device`."
    torch.manual_seed(0)
    if tiny:
        enc = model_from_config(tiny_encoder_config("siglip", vocab_size=512, image_size=32, patch_size=8))
        llm_cfg = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
    else:
        enc = model_from_config(encoder_config("siglip-so400m-384"))
        llm_cfg = LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                              num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=4096)
    llm = AutoModelForCausalLM.from_config(llm_cfg)
    model = _compose(enc, llm, image_token_index=llm_cfg.vocab_size - 1, mm_projector_type=connector)
    return model.to(device)


def batch(model, n: int, text_len: int, device):
    "A stage-2-shaped batch: one image's slots, then text, labels on the text."
    cfg, slots = model.config, model.tokens_per_image
    vocab, image_id = cfg.text_config.vocab_size, cfg.image_token_index
    text = torch.randint(3, vocab - 1, (n, text_len))
    ids = torch.cat([torch.full((n, slots), image_id), text], 1)
    labels = torch.cat([torch.full((n, slots), IGNORE_INDEX), text], 1)
    size = model.vision_tower.image_size
    tv = model.config.encoder_config.text_config.vocab_size
    return dict(input_ids=ids.to(device), attention_mask=torch.ones_like(ids).to(device), labels=labels.to(device),
                pixel_values=torch.randn(n, 3, size, size, device=device),
                prompt_input_ids=torch.randint(3, tv, (n, 16), device=device),
                prompt_attention_mask=torch.ones(n, 16, dtype=torch.long, device=device))


def sync(device):
    if device.type == "cuda": torch.cuda.synchronize()


def train_steps(model, b: dict, steps: int, device) -> tuple[float, float]:
    "(seconds per step, peak GiB) of stage-2 steps: bf16 autocast, gradient checkpointing, AdamW."
    params = set_trainable(model, 2)
    model.language_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    opt = torch.optim.AdamW(params, lr=1e-5)
    model.train()
    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out = model(**{k: v for k, v in b.items() if k != "labels"})
        loss = token_loss_sum(out.logits, b["labels"]) / (b["labels"] != IGNORE_INDEX).sum()
        loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
    step(); sync(device)  # warm-up
    if device.type == "cuda": torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    for _ in range(steps): step()
    sync(device)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return (time.perf_counter() - t) / steps, peak


def connector_seconds(model, b: dict, repeats: int, device) -> float:
    "Forward + backward of the connector alone on the step's encoder outputs."
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
        enc = model.vision_tower(b["pixel_values"], b["prompt_input_ids"], b["prompt_attention_mask"])
    def run():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            model.mm_projector(enc, model.vision_tower).float().pow(2).mean().backward()
    run(); sync(device)
    t = time.perf_counter()
    for _ in range(repeats): run()
    sync(device)
    return (time.perf_counter() - t) / repeats


def count(module) -> int: return sum(p.numel() for p in module.parameters())


def zero_step(stage: int, tiny: bool, out: Path) -> str:
    "One single-process DeepSpeed step at ZeRO `stage`, the gathered model saved and reloaded."
    import deepspeed
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("MASTER_PORT", "29531"), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    model = build("vmllm", tiny, torch.device("cpu"))
    params = set_trainable(model, 2)
    cfg = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "zero_optimization": {"stage": stage},
           "bf16": {"enabled": torch.cuda.is_available()}, "stage3_gather_16bit_weights_on_model_save": True}
    engine, *_ = deepspeed.initialize(model=model, model_parameters=params, optimizer=torch.optim.AdamW(params, lr=1e-5), config=cfg)
    b = batch(model, 1, 32, engine.device)
    loss = token_loss_sum(engine(**{k: v for k, v in b.items() if k != "labels"}).logits, b["labels"]) / (b["labels"] != IGNORE_INDEX).sum()
    engine.backward(loss); engine.step()
    sd = engine._zero3_consolidated_16bit_state_dict() if stage == 3 else engine.module.state_dict()
    engine.module.save_pretrained(out, state_dict=sd)
    again = VmllmForCausalLM.from_pretrained(out)
    return f"ZeRO-{stage}: one step, loss {loss.item():.3f}; saved model reloads ({count(again) / 1e6:.1f}M parameters)"


ROOT = Path(__file__).resolve().parents[1]
TINY_TOY = ("toy_data.n_stage1=48 toy_data.n_stage2=48 toy_data.n_heldout=4 toy_data.image_size=32 model.image_size=32 "
            "model.encoder_layers=2 model.llm_layers=2 model.llm_width=64 model.encoder_width=48 stage0.steps=2 stage0_llm.steps=2 "
            "stage1.max_steps=3 stage1.global_batch=16 stage1.batch_size=8 stage1.lr=3e-3 stage1.save_every=0 "
            "stage2.max_steps=3 stage2.global_batch=16 stage2.batch_size=8 stage2.save_every=0")


def train_command(config: str | None, port: int, tmp: Path) -> list[str]:
    "`vmllm_train` as a plain process or under `accelerate launch` with a shipped config and one process."
    script = shutil.which("vmllm_train")
    if script is None:  # the package is importable but not installed: a two-line launcher
        script = str(tmp / "vmllm_train.py")
        Path(script).write_text("from vmllm.recipes import vmllm_train\nvmllm_train()\n")
    if config is None: return [sys.executable, script]
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "configs" / "accelerate" / config),
            "--num_processes", "1", "--mixed_precision", "no", "--main_process_port", str(port), script]


def run_all(jobs: dict, env: dict) -> dict:
    "Run the commands of `jobs` side by side; their (return code, output) by name."
    procs = {k: subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) for k, c in jobs.items()}
    return {k: (p.wait(timeout=900), p.stdout.read()) for k, p in procs.items()}


def launch_check(tmp: Path) -> list[str]:
    "Section 3: the training command under each shipped accelerate config against a plain run (see the module docstring)."
    import importlib.util
    env = {**{k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")},
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    has_ds = importlib.util.find_spec("deepspeed") is not None
    def job(config, stages, name, port, init=None):
        return train_command(config, port, tmp) + ["--preset", "toy", "--stages", stages, "--output_dir", str(tmp / name),
                                                   "--set", TINY_TOY] + (["--init", str(init)] if init else [])
    first = {"plain1": job(None, "0,1", "plain1", 0), "fsdp1": job("fsdp.yaml", "0,1", "fsdp1", 29611)}
    if has_ds: first["zero2"] = job("zero2.yaml", "0,1", "zero2", 29612)
    start = tmp / "plain1" / "stage1" / "final"
    second = {"plain2": None, "fsdp2": ("fsdp.yaml", 29613)} | ({"zero3": ("zero3.yaml", 29614)} if has_ds else {})
    results = run_all(first, env)
    if results["plain1"][0] == 0:
        results |= run_all({k: job(c and c[0], "2", k, c[1] if c else 0, start) for k, c in second.items()}, env)
    lines = [] if has_ds else ["ZeRO-2/ZeRO-3 under accelerate launch: skipped, DeepSpeed is not installed"]
    from vmllm.model import VmllmForCausalLM
    from vmllm.processor import VmllmProcessor
    from PIL import Image
    def logits(name, stage):
        ckpt = tmp / name / f"stage{stage}" / "final"
        model, proc = VmllmForCausalLM.from_pretrained(ckpt), VmllmProcessor.from_pretrained(ckpt)
        with torch.no_grad(): return model(**proc("USER: <image>\nWhat colour? ASSISTANT:", images=[Image.new("RGB", (40, 30), "red")])).logits
    def losses(name, stage): return [h["loss"] for h in json.loads((tmp / name / f"stage{stage}" / "history.json").read_text())]
    for name, (stage, plain) in {"fsdp1": (1, "plain1"), "zero2": (1, "plain1"), "fsdp2": (2, "plain2"), "zero3": (2, "plain2")}.items():
        if name not in results: continue
        rc, output = results[name]
        if rc != 0 or results[plain][0] != 0:
            bad = name if rc != 0 else plain
            lines.append(f"{name}: FAILED ({bad}): " + " | ".join(results[bad][1].strip().splitlines()[-6:])[-1500:]); continue
        backend = next((l for l in output.splitlines() if l.startswith("backend: ")), "backend: ?")
        a, b = losses(name, stage), losses(plain, stage)
        dl = max(abs(x - y) / abs(y) for x, y in zip(a, b))
        la, lb = logits(name, stage), logits(plain, stage)
        lines.append(f"{name} (stage {stage}, {backend}): per-step losses {', '.join(f'{x:.4f}' for x in a)}, "
                     f"largest relative difference to one plain process {dl:.1e}; reloaded final model's logits differ by "
                     f"{((la - lb).abs().max() / lb.abs().max()).item():.1e} (relative)")
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="tiny models: check the code path anywhere")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--text", type=int, default=256, help="text tokens per sample besides the 729 image slots")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--skip-launch", action="store_true", help="skip section 3 (vmllm_train under the accelerate configs)")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="the GPU's dense bf16 peak (H100 SXM: 989)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if args.tiny: args.batch, args.text, args.steps = min(args.batch, 2), min(args.text, 16), min(args.steps, 2)
    print("command: " + " ".join(shlex.quote(c) for c in ["python", "benchmarks/gpu_check.py"] + (argv if argv is not None else sys.argv[1:])))
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {os.cpu_count()} cores"
    print(f"machine: {gpu}; torch {torch.__version__}; batch {args.batch}, {args.text} text tokens + image slots")
    for connector in ("vmllm", "mlp2x_gelu"):
        model = build(connector, args.tiny, device)
        b = batch(model, args.batch, args.text, device)
        sec, peak = train_steps(model, b, args.steps, device)
        T = b["input_ids"].shape[1]
        p_llm, p_tower, p_conn = count(model.language_model), count(model.vision_tower), count(model.mm_projector)
        flops = args.batch * (8 * p_llm * T + 2 * p_tower * model.tokens_per_image + 6 * p_conn * model.tokens_per_image)
        mfu = flops / sec / (args.peak_tflops * 1e12) if device.type == "cuda" else float("nan")
        share = connector_seconds(model, b, 3, device) / sec
        print(f"{connector:10s} stage-2 step {sec * 1e3:8.1f} ms, {args.batch / sec:6.2f} samples/s, peak {peak:6.2f} GiB, "
              f"old-formula MFU {mfu:.1%} (overstated: see train_speed.py), connector {share:.1%} of the step (LLM {p_llm / 1e9:.2f}B, tower {p_tower / 1e6:.0f}M, "
              f"connector {p_conn / 1e6:.1f}M parameters)")
        del model, b
        if device.type == "cuda": torch.cuda.empty_cache()
    e = argparse.Namespace(device=args.device, dtype="bfloat16" if device.type == "cuda" else "float32",
                           batch=args.batch, llm_width=2048 if not args.tiny else 64, repeats=3)
    for name in (["siglip-so400m-384"] if not args.tiny else ["clip-b32"]):
        row, diff = enhance_bench(name, e)
        (_, rb, *rm), (_, fb, *fm) = row["reference"], row["fast"]
        mem = f", peak {rm[0]:.2f} -> {fm[0]:.2f} GiB" if rm else ""
        print(f"enhancement {name}: forward+backward {rb * 1e3:.1f} -> {fb * 1e3:.1f} ms ({rb / fb:.1f}x){mem}, difference {diff:.1e}")
    if not args.skip_launch:  # tiny and quick: before the real-size ZeRO steps
        with tempfile.TemporaryDirectory() as d:
            for line in launch_check(Path(d)): print(line, flush=True)
    try:
        import deepspeed  # noqa: F401
        for stage in (2, 3):
            with tempfile.TemporaryDirectory() as d:
                try: print(zero_step(stage, args.tiny, Path(d)))
                except Exception as ex: print(f"ZeRO-{stage}: FAILED {ex.__class__.__name__}: {str(ex)[:300]}")
    except ImportError:
        print("ZeRO-2/ZeRO-3: skipped, DeepSpeed is not installed")


if __name__ == "__main__":
    main()
