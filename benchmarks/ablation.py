"""Ablation of the vMLLM connector on the toy task (see nbs/15_ablation.ipynb).

    python benchmarks/ablation.py                          # 5 variants x 3 seeds, two at a time (2 cores)
    python benchmarks/ablation.py --seeds 0 --set "toy_data.n_stage2=6000"   # a quick look

Every variant gets the same data, stage-0 models, steps and seeds. Writes results.json in
--output_dir and, with --publish, nbs/ablation_results.json and nbs/images/ablation.png.
"""
import argparse, shutil, sys
from pathlib import Path
from vmllm.ablation import differences_table, markdown_table, paired_differences, plot_summary, run_ablation, summarise

ROOT = Path(__file__).resolve().parents[1]

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output_dir", default="runs/ablation")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--set", default="", help="vmllm_train --set overrides shared by every variant (default: the toy preset as shipped)")
    p.add_argument("--jobs", type=int, default=2, help="training processes side by side (one per core)")
    p.add_argument("--publish", action="store_true", help="copy results and chart into nbs/ for the notebook and README")
    args = p.parse_args(argv)
    print("command: python benchmarks/ablation.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    results = run_ablation(args.output_dir, args.seeds, args.set, jobs=args.jobs)
    rows = summarise(results)
    print(markdown_table(rows))
    print(differences_table(paired_differences(results)))
    plot_summary(rows, Path(args.output_dir) / "ablation.png")
    if args.publish:
        (ROOT / "nbs" / "images").mkdir(exist_ok=True)
        shutil.copy(Path(args.output_dir) / "results.json", ROOT / "nbs" / "ablation_results.json")
        shutil.copy(Path(args.output_dir) / "ablation.png", ROOT / "nbs" / "images" / "ablation.png")

if __name__ == "__main__":
    main()
