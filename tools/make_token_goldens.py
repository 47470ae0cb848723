#!/usr/bin/env python
"""Make golden token ids / labels by RUNNING the vMLLM reference's (and LLaVA's) own preprocessing code.

This is an oracle script: it is meant to run in a separate environment pinned like the reference
(transformers 4.37.2, tokenizers 0.15.1, sentencepiece, torch CPU), against local checkouts of

* the vMLLM reference implementation (``--reference``; its ``vmllm/`` package), and
* LLaVA (``--llava``; its ``llava/`` package) for a cross-check,

and the real Llama-2 / Llama-3 tokenizer folders made by ``tools/fetch_llama_vocabs.py`` (``--vocabs``).

Nothing of those repositories is copied here.  ``train_vMLLM_siglip_so.py`` imports deepspeed, the
model and the trainer, so instead of importing it this script

1. imports ``constants.py``, ``conversation.py`` and ``mm_utils.py`` by file path under a stub package
   (``vmllm`` / ``llava``) so that their ``from vmllm.constants import ...`` lines resolve;
2. parses the train file with ``ast`` and executes, at run time, only the definitions that the
   preprocessing path needs (``preprocess*``, ``_tokenize_fn``, ``_mask_targets``,
   ``_add_speaker_and_signal``, ``DataArguments``, ``IS_TOKENIZER_GREATER_THAN_0_14``), compiled with
   the train file's own file name and line numbers, in a namespace holding the same globals the train
   module would have (torch, transformers, tokenizers, copy, the constants, ``conversation_lib``,
   ``tokenizer_image_token``).

For every tokenizer and template it runs, per corpus row, exactly what ``LazySupervisedDataset`` does
(``preprocess_multimodal`` for rows with an image, with ``is_multimodal=True`` and
``mm_use_im_start_end=False``; then ``preprocess(sources, tokenizer, has_image)`` with the template set
as ``conversation_lib.default_conversation``) and records ``input_ids`` (``IMAGE_TOKEN_INDEX`` -200 kept),
``labels`` (``IGNORE_INDEX`` -100), the rendered conversation string, whether the code printed
"tokenization mismatch" (the row is then fully masked), or the error the code raises.  The text-tower
prompt (``''.join`` of the raw human values, as the reference's ``_sample_item`` builds it) is recorded
once per row.

Tokenizers are loaded as the reference's ``train()`` loads them (``model_max_length`` from
``--model-max-length``, default 2048 as in its ``running_script/*.sh``, ``padding_side="right"``,
``use_fast=False``):

* ``llama-spm`` (Vicuna-7B-v1.5): slow ``LlamaTokenizer``; ``pad_token = unk_token`` (version ``v1``);
* ``llama-bpe`` (Llama-3-8B-Instruct): the config names ``PreTrainedTokenizerFast`` so ``use_fast=False``
  still gives the fast tokenizer; the pad token is added as ``<pad>`` (id 128256) as ``train()`` does
  for versions other than v0/v0.5/v1 through ``smart_tokenizer_and_embedding_resize``.

Usage (in the oracle environment)::

    python tools/make_token_goldens.py --reference ../vMLLM --llava ../LLaVA \\
        --vocabs ~/.cache/vmllm/llama-vocabs --out tests/goldens/
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import copy
import importlib.util
import io
import json
import shlex
import subprocess
import sys
import traceback
import types
from pathlib import Path

NEEDED_DEFS = (
    "DataArguments", "_tokenize_fn", "_mask_targets", "_add_speaker_and_signal", "preprocess_multimodal",
    "preprocess_llama_2", "preprocess_v1", "preprocess_mpt", "preprocess_llama3", "preprocess_plain",
    "preprocess",
)
NEEDED_ASSIGNS = ("IS_TOKENIZER_GREATER_THAN_0_14",)

# tokenizer -> templates that the reference supports for it
PLAN = {
    "llama-spm": ("plain", "vicuna_v1"),
    "llama-bpe": ("plain", "vicuna_v1", "llama3"),
}


def load_module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def load_repo(root: Path, pkg: str, train_rel: str) -> types.SimpleNamespace:
    """Import ``pkg``'s constants/conversation/mm_utils by path and exec the train file's preprocess defs."""
    import tokenizers
    import torch
    import transformers

    pkg_dir = root / pkg
    stub = types.ModuleType(pkg)
    stub.__path__ = [str(pkg_dir)]  # only the three modules below are ever imported from it
    sys.modules[pkg] = stub
    constants = load_module(f"{pkg}.constants", pkg_dir / "constants.py")
    conversation = load_module(f"{pkg}.conversation", pkg_dir / "conversation.py")
    mm_utils = load_module(f"{pkg}.mm_utils", pkg_dir / "mm_utils.py")
    stub.constants, stub.conversation, stub.mm_utils = constants, conversation, mm_utils

    train_path = pkg_dir / train_rel
    tree = ast.parse(train_path.read_text(encoding="utf-8"), filename=str(train_path))
    body, found = [], set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in NEEDED_DEFS:
            body.append(node)
            found.add(node.name)
        elif isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id in NEEDED_ASSIGNS for t in node.targets):
            body.append(node)
            found.update(t.id for t in node.targets if isinstance(t, ast.Name))
    missing = (set(NEEDED_DEFS) | set(NEEDED_ASSIGNS)) - found - {"preprocess_llama3"}
    if missing:
        raise SystemExit(f"{train_path}: definitions not found: {sorted(missing)}")

    from dataclasses import dataclass, field
    from typing import Dict, List, Optional, Sequence

    from packaging import version

    ns = {
        "__name__": f"{pkg}_train_subset", "__file__": str(train_path),
        "torch": torch, "transformers": transformers, "tokenizers": tokenizers, "copy": copy,
        "version": version, "dataclass": dataclass, "field": field,
        "Dict": Dict, "Optional": Optional, "Sequence": Sequence, "List": List,
        "conversation_lib": conversation, "tokenizer_image_token": mm_utils.tokenizer_image_token,
        "IGNORE_INDEX": constants.IGNORE_INDEX, "IMAGE_TOKEN_INDEX": constants.IMAGE_TOKEN_INDEX,
        "DEFAULT_IMAGE_TOKEN": constants.DEFAULT_IMAGE_TOKEN,
        "DEFAULT_IM_START_TOKEN": constants.DEFAULT_IM_START_TOKEN,
        "DEFAULT_IM_END_TOKEN": constants.DEFAULT_IM_END_TOKEN,
        "local_rank": None, "rank0_print": lambda *a: None,
    }
    mod = types.ModuleType(ns["__name__"])  # a registered module: @dataclass looks itself up there
    mod.__dict__.update(ns)
    sys.modules[mod.__name__] = mod
    exec(compile(ast.Module(body=body, type_ignores=[]), str(train_path), "exec"), mod.__dict__)
    ns = mod.__dict__
    return types.SimpleNamespace(root=root, pkg=pkg, train_path=train_path, constants=constants,
                                 conversation=conversation, mm_utils=mm_utils, ns=ns)


def git_head(path: Path) -> str | None:
    try:
        return subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], check=True,
                              capture_output=True, text=True).stdout.strip()
    except Exception:  # noqa: BLE001
        return None


def load_tokenizer(vocabs: Path, name: str, model_max_length: int):
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(
        str(vocabs / name), model_max_length=model_max_length, padding_side="right", use_fast=False)
    if name == "llama-spm":
        tok.pad_token = tok.unk_token  # train(): version v1 (and v0.5)
        pad_rule = "pad_token = unk_token (train(), version 'v1')"
    else:
        assert tok.pad_token is None
        tok.add_special_tokens(dict(pad_token="<pad>"))  # smart_tokenizer_and_embedding_resize
        pad_rule = "add_special_tokens(pad_token='<pad>') (train(), versions other than v0/v0.5/v1)"
    settings = {
        "vocabulary": name, "class": type(tok).__name__,
        "from_pretrained_kwargs": {"model_max_length": model_max_length, "padding_side": "right",
                                   "use_fast": False},
        "pad_rule": pad_rule, "pad_token": tok.pad_token, "pad_token_id": tok.pad_token_id,
        "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "unk_token_id": tok.unk_token_id,
        "legacy": getattr(tok, "legacy", "<no attribute>"), "len": len(tok),
    }
    return tok, settings


def render(repo, template: str, sources) -> str:
    """The string the reference tokenizes, rebuilt with its own Conversation class (as preprocess_* do)."""
    conv_lib = repo.conversation
    if template == "plain":  # preprocess_plain mutated source[0]['value'] to DEFAULT_IMAGE_TOKEN
        s = sources[0]
        return s[0]["value"] + s[1]["value"] + conv_lib.default_conversation.sep
    conv = conv_lib.default_conversation.copy()
    roles = {"human": conv.roles[0], "gpt": conv.roles[1]}
    source = sources[0]
    if roles[source[0]["from"]] != conv.roles[0]:
        source = source[1:]
    conv.messages = []
    for sentence in source:
        conv.append_message(roles[sentence["from"]], sentence["value"])
    return conv.get_prompt()


def run_row(repo, tok, template: str, row: dict) -> dict:
    ns, conv_lib = repo.ns, repo.conversation
    conv_lib.default_conversation = conv_lib.conv_templates[template]
    has_image = "image" in row
    data_args = ns["DataArguments"](is_multimodal=True)
    data_args.mm_use_im_start_end = False
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            sources = copy.deepcopy([row["conversations"]])
            if has_image:
                sources = ns["preprocess_multimodal"](sources, data_args)
            out = ns["preprocess"](sources, tok, has_image=has_image)
    except Exception as e:  # noqa: BLE001 - the reference's behaviour is what we record
        tb = traceback.extract_tb(e.__traceback__)
        frame = next((f for f in reversed(tb) if f.filename == str(repo.train_path)), tb[-1])
        return {"error": f"{type(e).__name__}: {e}".strip(),
                "error_at": f"{Path(frame.filename).name}:{frame.lineno} {frame.name}: {frame.line}"}
    input_ids = [int(x) for x in out["input_ids"][0].tolist()]
    labels = [int(x) for x in out["labels"][0].tolist()]
    prompt = render(repo, template, sources)
    printed = buf.getvalue()
    rec = {"input_ids": input_ids, "labels": labels, "prompt": prompt,
           "mismatch": "tokenization mismatch" in printed}
    if printed.strip():
        rec["printed"] = printed.strip()
    # self-check: the rendered prompt re-tokenizes to the recorded ids
    if has_image or template == "plain":  # preprocess_plain always uses tokenizer_image_token
        again = repo.mm_utils.tokenizer_image_token(prompt, tok)
    else:
        again = tok(prompt, max_length=tok.model_max_length, truncation=True).input_ids
    if list(again) != input_ids:
        rec["render_check_failed"] = True
    return rec


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", type=Path, required=True, help="vMLLM reference checkout (has vmllm/)")
    ap.add_argument("--llava", type=Path, default=None, help="LLaVA checkout (has llava/), for the cross-check")
    ap.add_argument("--vocabs", type=Path, required=True, help="folder from tools/fetch_llama_vocabs.py")
    ap.add_argument("--out", type=Path, required=True, help="goldens folder (reads conversations.json there)")
    ap.add_argument("--corpus", type=Path, default=None, help="default: <out>/conversations.json")
    ap.add_argument("--train-file", default="train/train_vMLLM_siglip_so.py",
                    help="reference train file, relative to <reference>/vmllm")
    ap.add_argument("--model-max-length", type=int, default=2048)
    args = ap.parse_args(argv)

    import tokenizers
    import torch
    import transformers

    vocabs = args.vocabs.expanduser().resolve()
    corpus_path = args.corpus or (args.out / "conversations.json")
    rows = json.loads(corpus_path.read_text(encoding="utf-8"))
    ref = load_repo(args.reference.resolve(), "vmllm", args.train_file)

    goldens: dict = {}
    tok_meta = {}
    toks = {}
    for tname, templates in PLAN.items():
        tok, settings = load_tokenizer(vocabs, tname, args.model_max_length)
        toks[tname], tok_meta[tname] = tok, settings
        goldens[tname] = {}
        for template in templates:
            goldens[tname][template] = {row["id"]: run_row(ref, tok, template, row) for row in rows}

    summary = {}
    for tname, by_t in goldens.items():
        for template, recs in by_t.items():
            n_err = sum("error" in r for r in recs.values())
            n_mis = sum(bool(r.get("mismatch")) for r in recs.values())
            n_bad = sum(bool(r.get("render_check_failed")) for r in recs.values())
            summary[f"{tname}/{template}"] = {"rows": len(recs), "ok": len(recs) - n_err - n_mis,
                                              "mismatch_masked": n_mis, "error": n_err,
                                              "render_check_failed": n_bad}

    # Cross-check: LLaVA's own train.py gives the same results on plain / vicuna_v1.
    cross = None
    if args.llava:
        sys.modules.pop("vmllm", None)
        lla = load_repo(args.llava.resolve(), "llava", "train/train.py")
        cross = {}
        for tname, tok in toks.items():
            for template in ("plain", "vicuna_v1"):
                same = diff = 0
                diffs = []
                for row in rows:
                    a = goldens[tname][template][row["id"]]
                    b = run_row(lla, tok, template, row)
                    keys = ("input_ids", "labels", "mismatch", "prompt")
                    if "error" in a or "error" in b:
                        eq = a.get("error") == b.get("error")
                    else:
                        eq = all(a.get(k) == b.get(k) for k in keys)
                    if eq:
                        same += 1
                    else:
                        diff += 1
                        diffs.append(row["id"])
                cross[f"{tname}/{template}"] = {"same": same, "different": diff, "different_ids": diffs}

    cmd = ("python tools/make_token_goldens.py --reference VMLLM_CHECKOUT --llava LLAVA_CHECKOUT "
           "--vocabs VOCAB_DIR --out tests/goldens/")  # no machine paths
    meta = {
        "generator": "tools/make_token_goldens.py",
        "command": cmd,
        "python": sys.version.split()[0],
        "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
        "torch": torch.__version__,
        "sentencepiece": __import__("sentencepiece").__version__,
        "reference": {"commit": git_head(args.reference),
                      "train_file": f"vmllm/{args.train_file}"},
        "llava": ({"commit": git_head(args.llava)} if args.llava else None),
        "corpus": "tests/goldens/conversations.json", "n_rows": len(rows),
        "tokenizers_settings": tok_meta,
        "preprocess_multimodal": {"is_multimodal": True, "mm_use_im_start_end": False},
        "templates": {t: f"conversation_lib.conv_templates[{t!r}]" for t in ("plain", "vicuna_v1", "llama3")},
        "IMAGE_TOKEN_INDEX": ref.constants.IMAGE_TOKEN_INDEX, "IGNORE_INDEX": ref.constants.IGNORE_INDEX,
        "text_prompt_rule": "''.join(turn['value'] for turn in row['conversations'] if turn['from'] == 'human')"
                            " on the raw row (LazySupervisedDataset._sample_item)",
        "record_fields": {
            "input_ids": "preprocess(...)['input_ids'][0]", "labels": "preprocess(...)['labels'][0]",
            "prompt": "the string the reference tokenized", "mismatch": "the code printed "
            "'WARNING: tokenization mismatch' and masked the whole row",
            "error": "exception the reference code raises for this row (no ids then)",
            "error_at": "file:line function: statement that raised"},
        "summary": summary,
        "llava_cross_check": cross,
    }
    text_prompts = {row["id"]: "".join(t["value"] for t in row["conversations"] if t["from"] == "human")
                    for row in rows}
    out = {"meta": meta, "text_prompts": text_prompts, "goldens": goldens}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "llava_tokens.json"
    path.write_text(json.dumps(out, ensure_ascii=False, separators=(",", ":")) + "\n", encoding="utf-8")
    print(f"wrote {path} ({path.stat().st_size} bytes)")
    print(json.dumps(summary, indent=1))
    if cross is not None:
        print("LLaVA cross-check:", json.dumps(cross, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
