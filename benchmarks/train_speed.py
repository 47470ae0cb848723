"""Training speed, honestly counted: model FLOPs utilisation (MFU) and hardware FLOPs utilisation (HFU), stage 1 and 2.

    python benchmarks/train_speed.py                              # one GPU, real sizes (random weights, nothing downloaded)
    python benchmarks/train_speed.py --tiny --device cpu          # the same code path on tiny models
    python benchmarks/train_speed.py --old-figures                # honest MFU of the step times in results/gpu_check_h100.txt

What it measures, printed with the command and the machine:
- for each stage (1: connector trains, the LLM is frozen but passes gradients; 2: connector + LLM train) and each
  recomputation policy of the LLM's decoder layers (none / selective: every other layer / full), the median step time
  over --steps steps after two warm-up steps, samples/s, peak memory (CUDA only), the bytes autograd keeps for the
  backward pass (any device), model FLOPs and hardware FLOPs per step (benchmarks/flops.py),
  MFU and HFU over --peak-tflops;
- a profiler table of where one stage's step time goes (module groups, then the heaviest kernels).
Batches follow a length mix like LLaVA-665K's (see `length_mix`), padded on the right to the longest row; model FLOPs
count the real tokens only, so padding shows up as lost utilisation (the padding share is printed).
"""
from __future__ import annotations
import argparse, os, platform, shlex, statistics, sys, time
from pathlib import Path
import torch
from transformers import AutoModelForCausalLM, LlamaConfig
from vmllm.core import IGNORE_INDEX
from vmllm.encoder import encoder_config, model_from_config, tiny_encoder_config
from vmllm.model import VmllmForCausalLM, _compose
from vmllm.train import (adamw_options, loss_sum_on_labels, predicting_positions, saved_for_backward, set_recompute,
                         set_trainable, token_loss_sum)

sys.path.insert(0, str(Path(__file__).parent))
from flops import step_flops  # noqa: E402

PROMPT_LEN = 16  # text-tower tokens of a typical LLaVA question


def build(connector: str, tiny: bool, device, meta: bool = False):
    "A vMLLM model from random parts: SigLIP-SO400M/14-384 + a 1.1B Llama (or tiny ones)."
    torch.manual_seed(0)
    if tiny:
        enc_cfg = tiny_encoder_config("siglip", vocab_size=512, image_size=32, patch_size=8)
        llm_cfg = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096)
    else:
        enc_cfg = encoder_config("siglip-so400m-384")
        llm_cfg = LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                              num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=4096)
    with torch.device("meta" if meta else "cpu"):
        enc, llm = model_from_config(enc_cfg), AutoModelForCausalLM.from_config(llm_cfg)
        model = _compose(enc, llm, image_token_index=llm_cfg.vocab_size - 1, mm_projector_type=connector)
    return model if meta else model.to(device)


def length_mix(n: int, seed: int, max_text: int) -> list[tuple[int, bool]]:
    """(text tokens, has an image) of `n` rows drawn like LLaVA-665K's: image rows' text (question + answer turns)
    log-normal around 110 tokens (most 40-400), and 3% text-only rows (ShareGPT-like) of 500-`max_text` tokens. An
    approximation of the published mix's shape, not a sample of the file."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        if torch.rand((), generator=g) < 0.03:
            rows.append((int(torch.randint(500, max(max_text, 501), (), generator=g)), False))
        else:
            t = float((4.7 + 0.7 * torch.randn((), generator=g)).exp())  # log-normal, median e^4.7 = 110
            rows.append((int(min(max(t, 8), max_text)), True))
    return rows


def make_batch(model, rows: list, device) -> tuple[dict, dict]:
    "A right-padded batch of `rows` (image slots first, then text; labels on the second half of the text) and its sizes."
    slots, image_id = model.tokens_per_image, model.config.image_token_index
    vocab = model.config.text_config.vocab_size
    seqs, labs = [], []
    for text, has_image in rows:
        t = torch.randint(3, vocab - 1, (text,))
        lab = t.clone()
        lab[: text // 2] = IGNORE_INDEX
        head = torch.full((slots if has_image else 0,), image_id)
        seqs.append(torch.cat([head, t]))
        labs.append(torch.cat([torch.full_like(head, IGNORE_INDEX), lab]))
    width = max(len(s) for s in seqs)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    labels = torch.full_like(ids, IGNORE_INDEX)
    mask = torch.zeros_like(ids)
    for i, (s, l) in enumerate(zip(seqs, labs)):
        ids[i, : len(s)], labels[i, : len(s)], mask[i, : len(s)] = s, l, 1
    n_img = sum(h for _, h in rows)
    size, tv = model.vision_tower.image_size, model.config.encoder_config.text_config.vocab_size
    b = dict(input_ids=ids, attention_mask=mask, labels=labels)
    if n_img:
        b |= dict(pixel_values=torch.randn(n_img, 3, size, size), prompt_input_ids=torch.randint(3, tv, (len(rows), PROMPT_LEN)),
                  prompt_attention_mask=torch.ones(len(rows), PROMPT_LEN, dtype=torch.long))
    sizes = dict(lengths=[len(s) for s in seqs], n_images=n_img, prompts=[PROMPT_LEN] * len(rows) if n_img else [],
                 head_all=ids.numel(), head_labelled=len(rows) * len(predicting_positions(labels)), padded=ids.numel())
    return {k: v.to(device) for k, v in b.items()}, sizes


def sync(device):
    if device.type == "cuda": torch.cuda.synchronize()


def make_step(model, stage: int, device, head: str = "labelled"):
    """One optimizer step of `stage` on a batch: bf16 autocast on CUDA, AdamW (fused on CUDA); the LM head on the
    positions that predict a label (vmllm_train's step) or, `head='all'`, on every position (the step before)."""
    params = set_trainable(model, stage)
    opt = torch.optim.AdamW(params, lr=1e-5, **(adamw_options(device) if head == "labelled" else {}))
    model.train()
    def step(b):
        inputs = {k: v for k, v in b.items() if k != "labels"}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            if head == "labelled": loss = loss_sum_on_labels(model, inputs, b["labels"])
            else: loss = token_loss_sum(model(**inputs).logits, b["labels"])
        loss = loss / (b["labels"] != IGNORE_INDEX).sum()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def add_unneeded_head(fl, model, stage: int, tokens: int):
    "Hardware FLOPs, not model FLOPs: the LM head's forward and backward on positions whose logits no label reads."
    w = model.get_output_embeddings().weight.numel()
    fl.add("LM head, unneeded", recompute=2.0 * tokens * w * (2 + (stage == 2)))


def time_stage(model, stage: int, policy: str, batches: list, device, head: str = "labelled") -> dict:
    "Median step time over `batches` (after two warm-up steps), peak memory and FLOPs per step."
    share = set_recompute(model, policy) / len(model.language_model.model.layers)  # of the decoder layers recomputed
    step = make_step(model, stage, device, head)
    for b, _ in batches[:2]: step(b)
    sync(device)
    if device.type == "cuda": torch.cuda.reset_peak_memory_stats()
    _, saved = saved_for_backward(lambda: step(batches[2][0]))  # what the policy keeps for the backward pass, any device
    times, model_fl, hw_fl, real, padded = [], [], [], 0, 0
    for b, s in batches[2:]:
        t = time.perf_counter()
        step(b)
        sync(device)
        times.append(time.perf_counter() - t)
        fl = step_flops(model, stage, s["lengths"], s["n_images"], s["prompts"], s["head_labelled"], share)
        if head == "all": add_unneeded_head(fl, model, stage, s["head_all"] - s["head_labelled"])
        model_fl.append(fl.model); hw_fl.append(fl.hardware)
        real += sum(s["lengths"]); padded += s["padded"]
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return dict(sec=statistics.median(times), model=statistics.median(model_fl), hw=statistics.median(hw_fl),
                flops_per_s=sum(model_fl) / sum(times), hw_per_s=sum(hw_fl) / sum(times), peak=peak, saved=saved,
                padding=1 - real / padded, samples=len(batches[2][0]["input_ids"]), table=fl.table())


def profile_table(model, stage: int, batches: list, device, rows: int = 12) -> str:
    "Where a step's time goes: the model's parts (forward and backward under record_function labels), then kernels."
    from torch.profiler import ProfilerActivity, profile, record_function
    step = make_step(model, stage, device)
    groups = {"vision+text towers": [model.vision_tower], "connector": [model.mm_projector],
              "LLM decoder layers": list(model.language_model.model.layers),
              "LM head": [model.language_model.get_output_embeddings()]}
    handles, ctx = [], {}
    for name, mod in ((n, m) for n, ms in groups.items() for m in ms):
        handles.append(mod.register_forward_pre_hook(lambda m, a, n=name, c=ctx: c.setdefault(id(m), []).append(record_function("## " + n).__enter__())))
        handles.append(mod.register_forward_hook(lambda m, a, o, c=ctx: c[id(m)].pop().__exit__(None, None, None)))
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    step(batches[0][0])
    with profile(activities=acts) as prof:
        for b, _ in batches[1:4]:
            with record_function("## whole step"): step(b)
        sync(device)
    for h in handles: h.remove()
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    ev = prof.key_averages()
    lines = ["forward time by part (record_function, CPU side): " + ", ".join(
        f"{e.key[3:]} {e.cpu_time_total / 3e3:.1f} ms" for e in ev if e.key.startswith("## "))]
    lines.append(ev.table(sort_by=key, row_limit=rows))
    return "\n".join(lines)


def old_figures(peak_tflops: float):
    "Honest MFU of the step times recorded in results/gpu_check_h100.txt (same sizes, its fixed 256 text tokens)."
    recorded = {"vmllm": 0.3321, "mlp2x_gelu": 0.2689}  # seconds per stage-2 step, as that file prints them
    print("old figures (results/gpu_check_h100.txt): stage 2, batch 8 of 729 image slots + 256 text tokens, 16-token "
          "prompts, full recomputation of the decoder layers, one H100 SXM")
    for connector, sec in recorded.items():
        model = build(connector, False, None, meta=True)
        T = model.tokens_per_image + 256
        fl = step_flops(model, 2, [T] * 8, 8, [PROMPT_LEN] * 8, 8 * T, True)  # its LM head ran on every position
        p = sum(x.numel() for x in model.language_model.parameters())
        emb = model.get_input_embeddings().weight.numel()
        old = 8 * (8 * p * T + 2 * sum(x.numel() for x in model.vision_tower.parameters()) * 729
                   + 6 * sum(x.numel() for x in model.mm_projector.parameters()) * 729)
        print(f"{connector:10s} {sec * 1e3:.1f} ms: old formula {old / sec / peak_tflops / 1e12:.1%} (counted recomputation, the "
              f"{emb / 1e6:.1f}M-entry embedding table, the whole tower incl. the text tower on 729 tokens, no attention); "
              f"MFU {fl.model / sec / peak_tflops / 1e12:.1%}, HFU {fl.hardware / sec / peak_tflops / 1e12:.1%}")


def machine(device) -> str:
    if device.type == "cuda": return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="tiny models: the code path anywhere")
    p.add_argument("--connectors", default="vmllm,mlp2x_gelu")
    p.add_argument("--stages", default="1,2")
    p.add_argument("--policies", default="none,selective,full", help="recomputation of the LLM's decoder layers "
                   "(selective: every other layer)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=20, help="timed steps per setting (medians)")
    p.add_argument("--max-text", type=int, default=1300, help="longest text of a row (tokens)")
    p.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak (default: 989 on CUDA, none on CPU)")
    p.add_argument("--heads", default="labelled", help="'labelled' (LM head on the positions that predict a label), "
                   "'all' (every position, the step before), or both: 'all,labelled'")
    p.add_argument("--no-profile", action="store_true")
    p.add_argument("--old-figures", action="store_true", help="only recount the recorded H100 step times")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    peak = args.peak_tflops or (989.0 if device.type == "cuda" else None)
    print("command: " + " ".join(shlex.quote(c) for c in ["python", "benchmarks/train_speed.py"] + (argv if argv is not None else sys.argv[1:])))
    if args.old_figures: return old_figures(peak or 989.0)
    if args.tiny: args.max_text = min(args.max_text, 96)
    print(f"machine: {machine(device)}; torch {torch.__version__}; batch {args.batch}, LLaVA-665K-like length mix "
          f"(3% text-only rows up to {args.max_text} tokens), medians of {args.steps} steps")
    for connector in args.connectors.split(","):
        model = build(connector, args.tiny, device)
        rows = length_mix(args.batch * (args.steps + 4), 0, args.max_text)
        batches = [make_batch(model, rows[i * args.batch:(i + 1) * args.batch], device) for i in range(args.steps + 2)]
        for stage in map(int, args.stages.split(",")):
            for policy, head in ((p, h) for p in args.policies.split(",") for h in args.heads.split(",")):
                r = time_stage(model, stage, policy, batches, device, head)
                util = (f"MFU {r['flops_per_s'] / peak / 1e12:.1%}, HFU {r['hw_per_s'] / peak / 1e12:.1%}" if peak
                        else f"{r['flops_per_s'] / 1e9:.1f} model GFLOP/s, {r['hw_per_s'] / 1e9:.1f} hardware GFLOP/s")
                mem = (f"peak {r['peak']:.2f} GiB" if r["peak"] == r["peak"] else "peak not measured on CPU") + \
                      f", {r['saved'] / 2**20:.1f} MiB saved for backward"
                print(f"{connector:10s} stage {stage} recompute {policy:9s} head {head:8s}: step {r['sec'] * 1e3:8.1f} ms, "
                      f"{r['samples'] / r['sec']:7.2f} samples/s, {util}, {mem}, padding {r['padding']:.1%} of the tokens, "
                      f"model {r['model']:.3e} / hardware {r['hw']:.3e} FLOPs per step", flush=True)
        print(f"FLOPs of the last stage-{stage} step by part:\n{r['table']}")
        if not args.no_profile:
            print(f"profile of stage {stage}, {connector} connector, 3 steps:\n{profile_table(model, stage, batches, device)}")
        del model, batches
        if device.type == "cuda": torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
