"""The README's python snippets, run in order on a trained toy model (a shortened toy run, in `runs/toy` of a fresh
folder): each must run and print what the README shows under it.

How the README marks them: a ```` ```python ```` block is a snippet; the ```` ```output ```` block right after it is
what it prints (`...` stands for any text, as in doctest); a snippet with no output block must print nothing. A
snippet that cannot run offline or on the toy model is preceded by `<!-- readme: skip (why) -->`, and is reported
as skipped with that reason. Snippets share one namespace, as in a session that runs them top to bottom.
"""
import contextlib, doctest, io, os, re
from dataclasses import dataclass
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
SNIPPET = re.compile(r"(?:<!-- readme: skip \((?P<skip>[^)]*)\) -->\n)?```python\n(?P<code>.*?)```\n"
                     r"(?:\s*?```output\n(?P<output>.*?)```\n)?", re.S)
QUICK_START_LINES = 40


@dataclass
class Snippet:
    line: int # where its code starts in the README
    code: str
    output: str | None # what it prints, None: nothing
    skip: str | None # why it is not run


def snippets(text: str) -> list[Snippet]:
    "The python snippets of a README, in order."
    return [Snippet(text[:m.start("code")].count("\n") + 1, m["code"], m["output"], m["skip"]) for m in SNIPPET.finditer(text)]


def prints_what_it_says(got: str, want: str | None) -> bool:
    "Whether `got` is the output shown (`...` matches anything; trailing spaces and blank lines do not count)."
    tidy = lambda s: "\n".join(l.rstrip() for l in s.strip("\n").split("\n")) + "\n" if s.strip() else ""
    return doctest.OutputChecker().check_output(tidy(want or ""), tidy(got), doctest.ELLIPSIS)


def test_snippets_are_found_and_marked():
    "The parser sees every python block of the README; a skip names its reason; an output block follows a snippet."
    text = README.read_text(encoding="utf-8")
    found = snippets(text)
    assert len(found) == text.count("```python\n") >= 5
    assert text.count("```output\n") == sum(s.output is not None for s in found) >= 1
    assert all(s.skip is None or s.skip.strip() for s in found)
    assert text.count("<!-- readme: skip") == sum(s.skip is not None for s in found)


def test_quick_start_comes_first():
    "Within the first 40 lines: the CPU-wheel note before the install command, the toy run, the first snippet and its output."
    head = README.read_text(encoding="utf-8").split("\n")[:QUICK_START_LINES]
    at = lambda s: next((i for i, l in enumerate(head) if s in l), None)
    cpu, install, toy = at("download.pytorch.org/whl/cpu"), at("pip install -e ."), at("vmllm_train --preset toy")
    assert None not in (cpu, install, toy), (cpu, install, toy)
    assert cpu < install < toy
    first = snippets("\n".join(head) + "\n")
    assert first and first[0].output is not None and first[0].skip is None


def default_exp(notebook: Path) -> str:
    "The module a notebook exports to, or '(none)'."
    m = re.search(r"#\| default_exp ([\w.]+)", notebook.read_text(encoding="utf-8"))
    return f"`vmllm.{m[1]}`" if m else "(none)"


def test_notebook_table_lists_every_notebook_with_its_module():
    table = README.read_text(encoding="utf-8").split("## The notebooks", 1)[1].split("\n## ", 1)[0]
    listed = dict(re.findall(r"^\| `(\d\w*)` \| ([^|]+?) \|", table, re.M))
    notebooks = sorted((README.parent / "nbs").glob("[0-9]*.ipynb"))
    assert listed == {nb.stem: default_exp(nb) for nb in notebooks}


def test_output_check_fails_on_a_wrong_answer():
    "The comparison the snippets go through refuses a wrong answer and accepts `...` for any text."
    assert prints_what_it_says("green\n", "green\n") and not prints_what_it_says("blue\n", "green\n")
    assert prints_what_it_says("loss 0.0123\n", "loss 0.0...\n") and not prints_what_it_says("", "green\n")
    assert not prints_what_it_says("unexpected\n", None) and prints_what_it_says("", None)


@pytest.fixture(scope="module")
def session(request):
    """One namespace for all snippets, run in the folder that holds `runs/toy` (where `vmllm_train --preset toy` writes):
    a shortened toy run, or the run that `VMLLM_README_RUN` names (e.g. `runs/toy` after the full toy run)."""
    given = os.environ.get("VMLLM_README_RUN")
    run = Path(given).resolve() if given else request.getfixturevalue("toy_run")
    assert (run / "stage2" / "final").is_dir(), f"{run} holds no stage2/final: run `vmllm_train --preset toy` first"
    cwd = os.getcwd()
    os.chdir(run.parents[1])
    yield {"__name__": "__readme__"}
    os.chdir(cwd)


@pytest.mark.parametrize("snippet", snippets(README.read_text(encoding="utf-8")), ids=lambda s: f"line{s.line}")
def test_snippet_prints_what_the_readme_says(snippet, session):
    if snippet.skip: pytest.skip(snippet.skip)
    out = io.StringIO()
    code = compile(snippet.code, f"README.md:{snippet.line}", "exec")
    with contextlib.redirect_stdout(out):
        exec(code, session)
    assert prints_what_it_says(out.getvalue(), snippet.output), (
        f"README.md line {snippet.line}: printed\n{out.getvalue()}\nbut the README shows\n{snippet.output}")
