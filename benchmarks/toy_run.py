"""The toy recipe end to end, timed: data generation, stages 0-2 and held-out accuracy.

    python benchmarks/toy_run.py                      # the `toy` preset as shipped
    python benchmarks/toy_run.py --set "model.connector=mlp2x_gelu"

Prints wall time, stage-2 samples/s, held-out accuracy (overall and per category) and the
command that produced them. Nothing here is a test: it measures.
"""
import argparse, json, os, platform, shlex, subprocess, sys, tempfile, time
from pathlib import Path
import torch

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output_dir", default=None, help="keep the run here (default: a temporary folder)")
    p.add_argument("--set", default="", help="overrides passed to vmllm_train --set")
    args = p.parse_args(argv)
    out = Path(args.output_dir or tempfile.mkdtemp(prefix="vmllm-toy-"))
    cmd = ["vmllm_train", "--preset", "toy", "--output_dir", str(out)] + (["--set", args.set] if args.set else [])
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    s = json.loads((out / "summary.json").read_text())
    st2 = s["stages"].get("2", s["stages"].get(2, {}))
    print("command: " + " ".join(shlex.quote(c) for c in [sys.executable, "benchmarks/toy_run.py"] + (argv or sys.argv[1:])))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"wall time {wall / 60:.1f} min (stages 0-2 + data + evaluation)")
    print(f"stage 2: {st2.get('steps')} steps, {st2.get('samples_per_s', float('nan')):.1f} samples/s, final loss {st2.get('final_loss', float('nan')):.4f}")
    h = s["heldout"]
    print(f"held-out accuracy {h['accuracy']:.3f} on {h['n']} questions: "
          + ", ".join(f"{k} {v:.3f}" for k, v in h["per_category"].items()))

if __name__ == "__main__":
    main()
