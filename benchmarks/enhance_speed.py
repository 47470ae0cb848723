"""Speed of the vMLLM enhancement: the exact fast form against the reference formulation.

Both paths run side by side in one process on the same weights and inputs, at the real widths
of the paper's four encoders (random values: the cost does not depend on them). The tower is
frozen: its hidden states need no gradient, only the enhancement's weights do. Prints the median
time of forward and forward+backward, their ratio, the largest output difference, and the peak
memory of each path: on a GPU the allocator's peak, on a CPU the growth of the process's peak
resident memory during one run (sampled every millisecond, Linux), in a fresh process per path and mode (`--memory`).

    python benchmarks/enhance_speed.py                       # CPU, batch 1, the four encoders
    python benchmarks/enhance_speed.py --memory              # and peak memory, one process per measurement
    python benchmarks/enhance_speed.py --device cuda --batch 16 --dtype bfloat16
"""
import argparse, json, os, statistics, subprocess, sys, threading, time
import torch
from torch import nn
from vmllm.encoder import split_cls, split_mean
from vmllm.enhance import VmllmEnhancer

# (name, vision width d, embedding width e, hidden states fed to the enhancement, tokens incl. CLS, CLS?)
SHAPES = {
    "clip-b32": (768, 512, 13, 50, True),
    "clip-l14-336": (1024, 768, 25, 577, True),
    "siglip-b16-224": (768, 768, 12, 196, False),          # the reference drops SigLIP's last layer
    "siglip-so400m-384": (1152, 1152, 27, 729, False),
}

def inputs(name, batch, device, dtype):
    d, e, n_hidden, T, cls = SHAPES[name]
    hs = [torch.randn(batch, T, d, device=device, dtype=dtype) for _ in range(n_hidden)]
    txt = torch.randn(batch, e, device=device, dtype=dtype)
    to_emb = nn.Linear(d, e, bias=False).to(device, dtype).requires_grad_(False) if cls else nn.Identity()
    return hs, hs[-2] if cls else hs[-1], txt, to_emb, split_cls if cls else split_mean

def timed(fn, device, repeats):
    times = []
    for _ in range(repeats):
        if device == "cuda": torch.cuda.synchronize()
        t = time.perf_counter(); fn()
        if device == "cuda": torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)

def bench(name, args):
    dtype = getattr(torch, args.dtype)
    d, e = SHAPES[name][:2]
    enh = VmllmEnhancer(d, e, args.llm_width).to(args.device, dtype)
    x = inputs(name, args.batch, args.device, dtype)
    row, outs = {}, {}
    for impl in ("reference", "fast"):
        enh.impl = impl
        def fwd():
            with torch.no_grad(): outs[impl] = enh(*x)
        def fwd_bwd():
            enh.zero_grad(set_to_none=True); enh(*x).float().pow(2).mean().backward()
        fwd(); fwd_bwd()  # warm-up
        if args.device == "cuda": torch.cuda.reset_peak_memory_stats()
        row[impl] = (timed(fwd, args.device, args.repeats), timed(fwd_bwd, args.device, args.repeats))
        if args.device == "cuda": row[impl] += (torch.cuda.max_memory_allocated() / 2**30,)
    diff = ((outs["fast"].float() - outs["reference"].float()).norm() / outs["reference"].float().norm()).item()
    return row, diff

def cpu_peak_mib(name, impl, mode, args) -> float:
    "Growth of peak resident memory (MiB) of one forward or forward+backward of one path, in a fresh process."
    cmd = [sys.executable, __file__, "--_measure", name, impl, mode, "--batch", str(args.batch), "--dtype", args.dtype,
           "--llm-width", str(args.llm_width)]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])["mib"]

def measure_once(name, impl, mode, args):
    "Run inside the fresh process: build, then report how much one run raises the peak (weights and inputs excluded)."
    dtype = getattr(torch, args.dtype)
    enh = VmllmEnhancer(*SHAPES[name][:2], args.llm_width).to("cpu", dtype); enh.impl = impl
    x = inputs(name, args.batch, "cpu", dtype)
    def run():
        if mode == "forward":
            with torch.no_grad(): enh(*x)
        else: enh.zero_grad(set_to_none=True); enh(*x).float().pow(2).mean().backward()
    run(); enh.zero_grad(set_to_none=True)           # warm-up: one-time allocations, then back to the resting state
    base, peak, done = resident_mib(), [0.0], threading.Event()
    def sample():                                    # the process's resident memory, every millisecond
        while not done.is_set(): peak[0] = max(peak[0], resident_mib()); time.sleep(0.001)
    t = threading.Thread(target=sample); t.start()
    run()  # activations, the stacks the path materialises and (with backward) the gradients
    done.set(); t.join()
    print(json.dumps({"mib": max(peak[0] - base, 0.0)}))

def resident_mib() -> float:
    "Resident memory of this process (Linux)."
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--llm-width", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--encoders", nargs="+", default=list(SHAPES))
    p.add_argument("--memory", action="store_true", help="on a CPU: peak memory of each path, one fresh process per measurement")
    p.add_argument("--_measure", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._measure: return measure_once(*args._measure, args)
    torch.manual_seed(0)
    print("command: python benchmarks/enhance_speed.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    print(f"device {args.device}, dtype {args.dtype}, batch {args.batch}, LLM width {args.llm_width}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeats}")
    for name in args.encoders:
        row, diff = bench(name, args)
        (rf, rb, *rm), (ff, fb, *fm) = row["reference"], row["fast"]
        mem = f"; peak memory {rm[0]:.2f} -> {fm[0]:.2f} GiB" if rm else ""
        if args.memory and args.device == "cpu":
            m = {(i, mode): cpu_peak_mib(name, i, mode, args) for i in ("reference", "fast") for mode in ("forward", "backward")}
            mem = (f"; peak memory growth forward {m['reference', 'forward']:.0f} -> {m['fast', 'forward']:.0f} MiB, "
                   f"forward+backward {m['reference', 'backward']:.0f} -> {m['fast', 'backward']:.0f} MiB")
        print(f"{name:18s} forward {rf*1e3:8.1f} -> {ff*1e3:8.1f} ms ({rf/ff:4.1f}x)   "
              f"forward+backward {rb*1e3:8.1f} -> {fb*1e3:8.1f} ms ({rb/fb:4.1f}x)   "
              f"relative output difference {diff:.1e}{mem}")

if __name__ == "__main__":
    main()
