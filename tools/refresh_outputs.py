"""Run the notebooks and keep their small outputs (shapes, tables, error sizes, pictures), so that a reader sees them
on GitHub without running anything. Then `nbdev_clean` strips the metadata noise; `--check` verifies the budget.

    python tools/refresh_outputs.py                      # every notebook in nbs/
    python tools/refresh_outputs.py nbs/02_enhance.ipynb # some
    python tools/refresh_outputs.py --check              # only check the budget (CI does this)
    python tools/refresh_outputs.py --reproduce nbs/02_enhance.ipynb  # rerun, and fail if a saved text output changes

Cells flagged with a test flag of settings.ini (`#| slow`, `#| cuda`, `#| lmms`) or `#| eval: false` are not run, as
`nbdev_test` does not run them. Outputs are kept small: progress bars are off (TQDM_DISABLE), ANSI colours are
removed, a text output is cut to its first and last lines, only PNG pictures are kept, and a notebook's outputs must
fit the budget below. `--reproduce` reruns the notebooks without writing them and lists every cell whose text
output (printed lines, values) differs from the saved one: a saved number that a rerun does not give is a seed
missing. Pictures are not compared (their bytes depend on the matplotlib version).
"""
import argparse, base64, configparser, json, os, re, subprocess, sys, tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / "nbs"
MAX_TEXT_LINES = 40           # per output: longer ones keep their first and last lines
MAX_PNG_BYTES = 120_000       # per picture
MAX_NOTEBOOK_OUTPUT_BYTES = 400_000
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
TMP = re.compile(re.escape(tempfile.gettempdir().rstrip("/")) + r"/tmp[\w-]+")  # a temporary folder of the run
LOCAL = re.compile(r"(/tmp/tmp[\w-]+|\S*site-packages/)")                 # what --check refuses in a saved output


def test_flags() -> set[str]:
    cfg = configparser.ConfigParser(); cfg.read(ROOT / "settings.ini")
    return set(cfg["DEFAULT"].get("tst_flags", "").split())


def skipped(source: str, flags: set[str]) -> bool:
    "A cell that nbdev_test would not run."
    for line in source.splitlines():
        if not line.startswith("#|"): break
        words = line[2:].strip().split()
        if (words and words[0] in flags) or line.replace(" ", "").startswith("#|eval:false"): return True
    return False


def anonymise(text: str) -> str:
    "No path of the machine that ran the notebook: temporary folders become <tmp>, the checkout <repo>."
    return TMP.sub("<tmp>", text).replace(str(ROOT), "<repo>")


LOGGED_WARNING = re.compile(r"^\[\d{4}-\d\d-\d\d [\d:,]+\] \[WARNING\]")  # a library's timestamped log line

def without_library_warnings(text: str, stream: str = "stderr") -> str:
    """A stream minus the warnings libraries print: a timestamped WARNING log line anywhere; on stderr also a
    `...Warning: ...` line and its `warnings.warn(` line."""
    noise = lambda l: LOGGED_WARNING.match(l) or (stream == "stderr" and ("Warning: " in l or l.strip() == "warnings.warn("))
    return "\n".join(l for l in text.split("\n") if not noise(l))


def shorten(text: str) -> str:
    text = anonymise(ANSI.sub("", text)).replace("\r\n", "\n")
    text = "\n".join(line.split("\r")[-1] for line in text.split("\n"))  # a carriage-returned line keeps its last state
    lines = text.split("\n")
    if len(lines) <= MAX_TEXT_LINES: return text
    keep = MAX_TEXT_LINES // 2
    return "\n".join(lines[:keep] + [f"... ({len(lines) - 2 * keep} lines cut)"] + lines[-keep:])


def tidy(outputs: list) -> list:
    "Small outputs only: text shortened, PNG pictures kept, other rich data dropped."
    out = []
    for o in outputs:
        if o.get("output_type") == "stream":
            text = "".join(o["text"]) if isinstance(o["text"], list) else o["text"]
            o["text"] = shorten(without_library_warnings(text, o.get("name", "stdout")))  # warnings out before the cut
            if o["text"].strip(): out.append(o)
        elif o.get("output_type") in ("execute_result", "display_data"):
            data = {k: v for k, v in o.get("data", {}).items() if k in ("text/plain", "image/png", "text/markdown")}
            if "text/plain" in data:
                data["text/plain"] = shorten("".join(data["text/plain"]) if isinstance(data["text/plain"], list) else data["text/plain"])
            if "image/png" in data: data.pop("text/plain", None)  # "<Figure ...>" says nothing the picture does not
            if data: out.append({**o, "data": data, "metadata": {}})
        elif o.get("output_type") == "error": out.append(o)
    return out


def execute(path: Path, flags: set[str]):
    "Execute one notebook in its folder, as nbdev_test does; its cells get their tidied outputs."
    from execnb.nbio import read_nb
    from execnb.shell import CaptureShell
    nb = read_nb(path)
    cwd = os.getcwd(); os.chdir(path.parent)
    try:
        shell = CaptureShell()
        shell.run("%matplotlib inline")
        for cell in nb.cells:
            if cell.cell_type != "code": continue
            cell.outputs, cell.execution_count = [], None
            if skipped(cell.source, flags) or "nbdev_export()" in cell.source: continue
            outputs = shell.run(cell.source)
            if shell.exc: raise RuntimeError(f"{path.name}: a cell failed:\n{cell.source[:300]}\n{shell.exc!r}")
            cell.outputs = tidy(json.loads(json.dumps(list(outputs or []), default=list)))  # plain lists and dicts
    finally: os.chdir(cwd)
    return nb


def run(path: Path, flags: set[str]):
    "Execute one notebook and write it back with its tidied outputs."
    from execnb.nbio import write_nb
    write_nb(execute(path, flags), path)


def text_outputs(cell) -> list[str]:
    "What a cell printed or returned, as text (pictures left out)."
    texts = []
    for o in cell.get("outputs", []):
        t = o.get("text") if o.get("output_type") == "stream" else o.get("data", {}).get("text/plain")
        if t is not None: texts.append("".join(t) if isinstance(t, list) else t)
    return texts


def unreproduced(path: Path, flags: set[str]) -> list[str]:
    "Cells of `path` whose saved text outputs a fresh run does not give, each with its first differing line."
    saved = {c["id"]: c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"}
    fresh = json.loads(json.dumps([dict(c) for c in execute(path, flags).cells], default=list))
    problems = []
    for c in fresh:
        if c["cell_type"] != "code": continue
        old, new = text_outputs(saved.get(c["id"], {})), text_outputs(c)
        if old != new: problems.append(f"{path.name} cell {c['id']}: {first_difference(''.join(old), ''.join(new))}")
    return problems


def first_difference(old: str, new: str, width: int = 30) -> str:
    "Where two texts first differ, with a little context on each side."
    at = next((i for i, (a, b) in enumerate(zip(old, new)) if a != b), min(len(old), len(new)))
    start = max(0, at - width)
    return f"saved ...{old[start:at + width]!r}..., a rerun gives ...{new[start:at + width]!r}..."


def output_bytes(cell) -> int:
    import json
    return len(json.dumps(cell.get("outputs", [])))


def check(paths) -> list[str]:
    "Budget problems of the notebooks' saved outputs."
    import json
    problems = []
    for p in paths:
        nb = json.loads(p.read_text())
        total = sum(output_bytes(c) for c in nb["cells"] if c["cell_type"] == "code")
        if total > MAX_NOTEBOOK_OUTPUT_BYTES: problems.append(f"{p.name}: outputs take {total:,} bytes (budget {MAX_NOTEBOOK_OUTPUT_BYTES:,})")
        for i, c in enumerate(nb["cells"]):
            for o in c.get("outputs", []):
                png = o.get("data", {}).get("image/png")
                if png and len(base64.b64decode("".join(png))) > MAX_PNG_BYTES:
                    problems.append(f"{p.name} cell {i}: a picture of {len(base64.b64decode(''.join(png))):,} bytes (budget {MAX_PNG_BYTES:,})")
                text = o.get("text") or o.get("data", {}).get("text/plain") or ""
                text = "".join(text) if isinstance(text, list) else text
                if len(text.splitlines()) > MAX_TEXT_LINES + 1: problems.append(f"{p.name} cell {i}: {len(text.splitlines())} lines of text")
                if "\r" in text or ANSI.search(text): problems.append(f"{p.name} cell {i}: progress-bar or colour codes in an output")
                if LOCAL.search(text): problems.append(f"{p.name} cell {i}: a path of the machine that ran it ({LOCAL.search(text).group(0)})")
    return problems


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebooks", nargs="*", type=Path)
    ap.add_argument("--check", action="store_true", help="only check the saved outputs against the budget")
    ap.add_argument("--reproduce", action="store_true", help="rerun the notebooks (not written) and fail where a saved text output changes")
    args = ap.parse_args(argv)
    paths = [p.resolve() for p in args.notebooks] or sorted(NBS.glob("*.ipynb"))
    problems = []
    if not args.check:
        os.environ.update(TQDM_DISABLE="1", MPLBACKEND="Agg", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        flags = test_flags()
        for p in paths:
            print(f"{'rerunning' if args.reproduce else 'running'} {p.name}", flush=True)
            if args.reproduce: problems += unreproduced(p, flags)
            else: run(p, flags)
        if not args.reproduce: subprocess.run(["nbdev_clean"], cwd=ROOT, check=True)
    problems += check(paths)
    done = "outputs within budget" + (" and reproduced" if args.reproduce else "")
    print("\n".join(problems) or f"{len(paths)} notebooks: {done}")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
