"""The toy preset's stage 2 with the step before and after the cheaper LM head, side by side in one run.

    python benchmarks/toy_speed.py                    # about 8 minutes on 2 CPU cores
    python benchmarks/toy_speed.py --set "stage2.max_steps=300"

Runs `vmllm_train --preset toy --stages 0,1` once, then stage 2 twice from that stage-1 model, one after the other:
'before' runs the LM head and the loss on every position (as vmllm_train did before `loss_sum_on_labels`: the loss
function is swapped in the training module of that process only), 'after' is vmllm_train as it is. Prints stage-2
samples/s (vmllm_train's own count: samples over the stage's wall time, data loading included), the final loss and
the held-out accuracy of each, with the command and the machine. On CPUs the fused AdamW and the autocast stack dtype
do not apply (no CUDA, no autocast in the toy preset), so the LM head is the lever measured here.
"""
import argparse, json, os, platform, shlex, subprocess, sys, tempfile
from pathlib import Path
import torch

BEFORE = """
import vmllm.train as t
def loss_on_every_position(model, inputs, labels):
    return t.token_loss_sum(model(**inputs).logits, labels)
t.loss_sum_on_labels = loss_on_every_position
"""
LAUNCH = "from vmllm.recipes import vmllm_train\nvmllm_train()\n"


def train(args: list, folder: Path, before: bool = False):
    "`vmllm_train --preset toy ARGS` from a launcher script in `folder` (its command line is parsed only in a script)."
    script = folder / ("train_before.py" if before else "train.py")
    script.write_text((BEFORE if before else "") + LAUNCH)
    subprocess.run([sys.executable, str(script), "--preset", "toy"] + args, check=True, stdout=subprocess.DEVNULL)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output_dir", default=None, help="keep the runs here (default: a temporary folder)")
    p.add_argument("--set", default="", help="overrides passed to vmllm_train --set (every run)")
    args = p.parse_args(argv)
    out = Path(args.output_dir or tempfile.mkdtemp(prefix="vmllm-toy-speed-"))
    sets = ["--set", args.set] if args.set else []
    out.mkdir(parents=True, exist_ok=True)
    train(["--stages", "0,1", "--output_dir", str(out / "base")] + sets, out)
    init = out / "base" / "stage1" / "final"
    rows = {}
    for name in ("before", "after"):
        train(["--stages", "2", "--init", str(init), "--output_dir", str(out / name)] + sets, out, before=name == "before")
        s = json.loads((out / name / "summary.json").read_text())
        rows[name] = (s["stages"]["2"], s["heldout"])
    print("command: " + " ".join(shlex.quote(c) for c in ["python", "benchmarks/toy_speed.py"] + (argv if argv is not None else sys.argv[1:])))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    for name, (st, h) in rows.items():
        print(f"stage 2 {name:6s}: {st['steps']} steps in {st['seconds']:.1f} s, {st['samples_per_s']:.1f} samples/s, "
              f"final loss {st['final_loss']:.4f}; held-out accuracy {h['accuracy']:.3f} on {h['scored']} questions")
    b, a = rows["before"][0]["samples_per_s"], rows["after"][0]["samples_per_s"]
    print(f"stage-2 samples/s before -> after: {b:.1f} -> {a:.1f} ({a / b - 1:+.1%})")


if __name__ == "__main__":
    main()
