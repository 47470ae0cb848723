"""The toy recipe end to end, timed: data generation, stages 0-2 and held-out accuracy.

    python benchmarks/toy_run.py                      # the `toy` preset as shipped
    python benchmarks/toy_run.py --preset toy-chat --later_turns 300   # the preset trained for chatting
    python benchmarks/toy_run.py --set "model.mm_projector_type=mlp2x_gelu"

Runs `vmllm_train --preset toy` (or `--preset toy-chat`; as `python -m vmllm.recipes`, so the vmllm on `sys.path` is the one measured),
then prints wall time, time and samples/s of every stage, held-out accuracy (overall and per category),
the accuracy on a second held-out split drawn with another seed (new scenes, never seen in training), the
command that produced them and the machine. Nothing here is a test: it measures.
"""
import argparse, json, os, platform, shlex, subprocess, sys, tempfile, time
from pathlib import Path
import torch

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="toy", choices=("toy", "toy-chat"), help="the toy recipe to run")
    p.add_argument("--output_dir", default=None, help="keep the run here (default: a temporary folder)")
    p.add_argument("--set", default="", help="overrides passed to vmllm_train --set")
    p.add_argument("--other_seed", type=int, default=1, help="held-out seed of the second held-out split")
    p.add_argument("--pictures", default=None, help="save what the trained connector looks at (layer weights, gates) "
                                                    "for two held-out questions in this folder, e.g. nbs/images")
    p.add_argument("--later_turns", type=int, default=100, help="held-out questions asked again as second and third turns")
    args = p.parse_args(argv)
    out = Path(args.output_dir or tempfile.mkdtemp(prefix="vmllm-toy-"))
    cmd = [sys.executable, "-m", "vmllm.recipes", "--preset", args.preset, "--output_dir", str(out)] + (["--set", args.set] if args.set else [])
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    s = json.loads((out / "summary.json").read_text())
    print("command: " + " ".join(shlex.quote(c) for c in [sys.executable, "benchmarks/toy_run.py"] + (argv or sys.argv[1:])))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"wall time {wall / 60:.2f} min ({wall:.0f} s: data, stages 0-2, evaluation, process start)")
    s0 = s.get("stage0", {})
    if "data" in s0: print(f"  data generation      {s0['data']['seconds']:6.1f} s")
    for key, name in (("0", "stage 0 encoder"), ("0_llm", "stage 0 LLM")):
        if key in s0: print(f"  {name:<20} {s0[key]['seconds']:6.1f} s, {s0[key]['steps']} steps, {s0[key]['samples_per_s']:.0f} samples/s, "
                            f"loss {s0[key]['first_loss']:.3f} -> {s0[key]['final_loss']:.3f}")
    for k in ("1", "2"):
        st = s["stages"].get(k)
        if st and "steps" in st:
            print(f"  stage {k}              {st['seconds']:6.1f} s, {st['steps']} steps, {st['samples_per_s']:.0f} samples/s, "
                  f"loss {st['first_loss']:.3f} -> {st['final_loss']:.3f}")
    h = s["heldout"]
    print(f"  held-out evaluation  {h.get('seconds', float('nan')):6.1f} s")
    print(f"held-out accuracy {h['accuracy']:.3f} on {h['scored']} questions: "
          + ", ".join(f"{k} {v['accuracy']:.3f}" for k, v in h["per_category"].items()))
    from vmllm.evaluate import evaluate
    from vmllm.model import VmllmForCausalLM
    from vmllm.processor import VmllmProcessor
    from vmllm.synth import make_heldout
    manifest = json.loads((out / "data" / "manifest.json").read_text())
    data = dict(manifest, image_folder=str(out / "data" / "images"), stage1=str(out / "data" / "stage1.json"),
                stage2=str(out / "data" / "stage2.json"))
    ckpt = out / "stage2" / "final"
    model, proc = VmllmForCausalLM.from_pretrained(ckpt), VmllmProcessor.from_pretrained(ckpt)
    rows = [json.loads(l) for l in (out / "data" / "heldout.jsonl").read_text().splitlines() if l.strip()]
    if manifest.get("heldout_seed", manifest["seed"]) != args.other_seed:
        other = make_heldout(data, out / "data" / f"heldout_seed{args.other_seed}.jsonl", n=manifest["n_heldout"], heldout_seed=args.other_seed)
        o = evaluate(model, proc, other, data["image_folder"], batch_size=32, progress=False)  # the template it was trained with
        print(f"held-out accuracy, other seed ({args.other_seed}) {o['accuracy']:.3f} on {o['scored']} questions: "
              + ", ".join(f"{k} {v['accuracy']:.3f}" for k, v in o["per_category"].items())
              + f" (difference {100 * (o['accuracy'] - h['accuracy']):+.1f} points)")
    print_later_turns(model, proc, out, rows, n=args.later_turns)
    if model.config.mm_projector_type == "vmllm": print_gate_picks(model, proc, out, rows)
    if args.pictures: save_pictures(model, proc, out, rows, Path(args.pictures))

FIRST_QUESTIONS = ("How many shapes are there?", "What colour is the shape at the top left?")

def print_later_turns(model, proc, out: Path, rows: list, n: int = 100):
    "Held-out accuracy of a question asked first, second (after a count question) and third (after a colour one too), in `Chat`."
    from vmllm.chat import Chat
    from vmllm.evaluate import is_correct
    right = [0, 0, 0]
    for r in rows[:n]:
        for turn in range(3):
            chat = Chat(model, proc, images=[out / "data" / "images" / r["image"]], max_new_tokens=16, temperature=0)
            for q in FIRST_QUESTIONS[:turn]: chat.ask(q)
            right[turn] += bool(is_correct(r, chat.ask(r["text"])))
    asked = min(n, len(rows))
    ratios = "".join(f"; turn {t + 1} / turn 1 = {right[t] / right[0]:.2f}" for t in (1, 2)) if right[0] else ""
    print(f"held-out questions asked in later turns ({asked} questions, prompt rule {proc.prompt_rule}): "
          + ", ".join(f"turn {t + 1} {k / asked:.2f}" for t, k in enumerate(right)) + ratios)

def print_gate_picks(model, proc, out: Path, rows: list):
    "How often each gate is most open on the quadrant of the shape a held-out position question names (chance: 0.25 or more)."
    from vmllm.chat import connector_details, gate_grid
    from vmllm.synth import QUADRANTS
    rows = [r for r in rows if r["category"] == "position"]
    hits = {}
    for r in rows:
        _, det = connector_details(model, proc, out / "data" / "images" / r["image"], r["text"])
        for name, g in det.items():
            if not name.endswith("_gate"): continue
            grid = gate_grid(g); h = grid.shape[0] // 2  # quadrants in QUADRANTS order: top left, top right, bottom left, bottom right
            per_quadrant = torch.stack([grid[:h, :h].mean(), grid[:h, h:].mean(), grid[h:, :h].mean(), grid[h:, h:].mean()])
            hits.setdefault(name, []).append(int(per_quadrant.argmax()) == QUADRANTS.index(r["answer"]))
    print(f"gate most open on the named shape's quadrant ({len(rows)} held-out position questions): "
          + ", ".join(f"{k.replace('_gate', '')} {sum(v) / len(v):.2f}" for k, v in hits.items()))

def save_pictures(model, proc, out: Path, rows: list, folder: Path):
    "Layer-attention and gate pictures of the trained toy model for two held-out questions (`toy_*` files in `folder`)."
    from vmllm.chat import explain_prediction
    picked = [next(r for r in rows if r["category"] == c) for c in ("position", "small")]
    for i, r in enumerate(picked):
        for path in explain_prediction(model, proc, out / "data" / "images" / r["image"], r["text"], folder, prefix=f"toy{i}_"):
            print(f"saved {path} ({r['text']!r}, answer {r['answer']!r})")


if __name__ == "__main__":
    main()
