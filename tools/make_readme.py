"""Write README.md from nbs/index.ipynb (what `nbdev_readme` does, without Quarto).

Markdown cells are copied, code cells become ```python blocks, cells starting with `#| hide`
are left out. Run from the repository root: `python tools/make_readme.py`; CI checks that the
committed README.md matches its output.
"""
import json
from pathlib import Path

def render(nb_path: Path) -> str:
    cells = json.loads(nb_path.read_text(encoding="utf-8"))["cells"]
    parts = []
    for cell in cells:
        src = "".join(cell["source"]).strip()
        if not src or src.startswith("#| hide"): continue
        parts.append(src if cell["cell_type"] == "markdown" else f"```python\n{src}\n```")
    return "\n\n".join(parts) + "\n"

if __name__ == "__main__":
    root = Path(__file__).resolve().parents[1]
    (root / "README.md").write_text(render(root / "nbs" / "index.ipynb"), encoding="utf-8")
