#!/usr/bin/env python
"""Make golden token ids / labels for the `llama3_next` template by RUNNING LLaVA-NeXT's own preprocessing.

An oracle script, like ``tools/make_token_goldens.py`` (whose loading helpers it uses): it runs in a separate
environment (transformers 4.37.2, tokenizers 0.15.1, torch CPU, pillow, packaging) against a local checkout
of LLaVA-NeXT (``--llava-next``; its ``llava/`` package) and the real Llama-3 tokenizer folder made by
``tools/fetch_llama_vocabs.py`` (``--vocabs``). Nothing of LLaVA-NeXT is copied here.

``llava/train/train.py`` imports deepspeed, the model and the trainer, so this script imports only
``llava/constants.py`` and ``llava/conversation.py`` by file path under a stub package, parses the train
file with ``ast`` and executes only ``DataArguments``, ``preprocess_multimodal`` and ``preprocess_llama3``
(compiled with the train file's name and line numbers). For every row of the corpus it does what
``LazySupervisedDataset`` does with ``--version llava_llama_3``: ``preprocess_multimodal`` for rows with an
image (``is_multimodal=True``, ``mm_use_im_start_end=False``), then ``preprocess_llama3(sources, tokenizer,
has_image)``; it records ``input_ids`` (``IMAGE_TOKEN_INDEX`` -200 kept), ``labels`` (-100 masked) and the
string each message became after ``preprocess_multimodal``, or the error the code raises.

The tokenizer is loaded as LLaVA-NeXT's ``train()`` loads it for this version (``model_max_length`` 2048,
``padding_side="right"``, ``use_fast=False``, which still gives the fast tokenizer; no pad token is added,
since the Llama-3 tokenizer has no unk token).

Usage (in the oracle environment)::

    python tools/make_llava_next_goldens.py --llava-next ../LLaVA-NeXT \\
        --vocabs ~/.cache/vmllm/llama-vocabs --out tests/goldens/
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import platform
import re
import sys
import traceback
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from make_token_goldens import git_head, load_module  # noqa: E402

NEEDED = ("DataArguments", "preprocess_multimodal", "preprocess_llama3")


def load_llava_next(root: Path) -> types.SimpleNamespace:
    "LLaVA-NeXT's constants and conversation modules by path, and the three train-file definitions above."
    import torch
    import transformers

    pkg_dir = root / "llava"
    stub = types.ModuleType("llava")
    stub.__path__ = [str(pkg_dir)]
    sys.modules["llava"] = stub
    constants = load_module("llava.constants", pkg_dir / "constants.py")
    conversation = load_module("llava.conversation", pkg_dir / "conversation.py")
    train_path = pkg_dir / "train" / "train.py"
    tree = ast.parse(train_path.read_text(encoding="utf-8"), filename=str(train_path))
    body = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name in NEEDED]
    missing = set(NEEDED) - {n.name for n in body}
    if missing: raise SystemExit(f"{train_path}: definitions not found: {sorted(missing)}")

    from dataclasses import dataclass, field
    from typing import Dict, List, Optional, Sequence

    mod = types.ModuleType("llava_next_train_subset")  # a registered module: @dataclass looks itself up there
    mod.__dict__.update({
        "__file__": str(train_path), "torch": torch, "transformers": transformers, "copy": copy, "re": re,
        "dataclass": dataclass, "field": field, "Dict": Dict, "Optional": Optional, "Sequence": Sequence, "List": List,
        "conversation_lib": conversation, "IGNORE_INDEX": constants.IGNORE_INDEX,
        "IMAGE_TOKEN_INDEX": constants.IMAGE_TOKEN_INDEX, "DEFAULT_IMAGE_TOKEN": constants.DEFAULT_IMAGE_TOKEN,
        "DEFAULT_IM_START_TOKEN": constants.DEFAULT_IM_START_TOKEN, "DEFAULT_IM_END_TOKEN": constants.DEFAULT_IM_END_TOKEN,
    })
    sys.modules[mod.__name__] = mod
    exec(compile(ast.Module(body=body, type_ignores=[]), str(train_path), "exec"), mod.__dict__)
    conversation.default_conversation = conversation.conv_templates["llava_llama_3"]
    return types.SimpleNamespace(train_path=train_path, ns=mod.__dict__, constants=constants)


def run_row(repo, tok, row: dict) -> dict:
    "What LLaVA-NeXT's dataset makes of one row: ids, labels and the messages it rendered, or its error."
    ns = repo.ns
    has_image = "image" in row
    data_args = ns["DataArguments"](is_multimodal=True)
    data_args.mm_use_im_start_end = False
    try:
        sources = copy.deepcopy([row["conversations"]])
        if has_image: sources = ns["preprocess_multimodal"](sources, data_args)
        out = ns["preprocess_llama3"](sources, tok, has_image=has_image)
    except Exception as e:  # noqa: BLE001 - LLaVA-NeXT's behaviour is what we record
        tb = traceback.extract_tb(e.__traceback__)
        frame = next((f for f in reversed(tb) if f.filename == str(repo.train_path)), tb[-1])
        return {"error": f"{type(e).__name__}: {e}".strip(),
                "error_at": f"{Path(frame.filename).name}:{frame.lineno} {frame.name}: {frame.line}"}
    return {"input_ids": [int(x) for x in out["input_ids"][0].tolist()],
            "labels": [int(x) for x in out["labels"][0].tolist()],
            "messages": [m["value"] for m in sources[0]]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--llava-next", type=Path, required=True, help="LLaVA-NeXT checkout (has llava/)")
    ap.add_argument("--vocabs", type=Path, required=True, help="folder from tools/fetch_llama_vocabs.py")
    ap.add_argument("--out", type=Path, required=True, help="goldens folder (reads conversations.json there)")
    ap.add_argument("--model-max-length", type=int, default=2048)
    args = ap.parse_args(argv)
    import tokenizers, torch, transformers

    repo = load_llava_next(args.llava_next)
    tok = transformers.AutoTokenizer.from_pretrained(str(args.vocabs / "llama-bpe"), model_max_length=args.model_max_length,
                                                     padding_side="right", use_fast=False)
    rows = json.loads((args.out / "conversations.json").read_text(encoding="utf-8"))
    goldens = {row["id"]: run_row(repo, tok, row) for row in rows}
    meta = {
        "generator": "tools/make_llava_next_goldens.py",
        "command": "python tools/make_llava_next_goldens.py --llava-next LLAVA_NEXT_CHECKOUT --vocabs VOCAB_DIR --out tests/goldens/",
        "python": platform.python_version(), "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__, "torch": torch.__version__,
        "llava_next": {"commit": git_head(args.llava_next), "train_file": "llava/train/train.py",
                       "conversation": "conv_templates['llava_llama_3'] (version llama_v3)"},
        "tokenizer": {"vocabulary": "llama-bpe", "class": type(tok).__name__, "pad_token": tok.pad_token,
                      "chat_template": tok.chat_template},
        "corpus": "tests/goldens/conversations.json", "n_rows": len(rows),
        "errors": sum("error" in g for g in goldens.values()),
    }
    out = args.out / "llava_next_tokens.json"
    out.write_text(json.dumps({"meta": meta, "goldens": goldens}, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {out}: {len(rows)} rows, {meta['errors']} errors")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
