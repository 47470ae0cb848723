#!/usr/bin/env python
"""Provide the real Llama-2 (SentencePiece) and Llama-3 (byte-level BPE) tokenizers offline.

vMLLM is trained with Vicuna-7B-v1.5 (a Llama-2 tokenizer) or Llama-3-8B-Instruct.  Their tokenizer
files live on a model hub that this project cannot reach, but the ``llama-cpp-python`` source
distribution on PyPI ships llama.cpp's tokenizer test vocabularies:

* ``vendor/llama.cpp/models/ggml-vocab-llama-spm.gguf`` -- Llama-2's 32000-piece SentencePiece BPE
  vocabulary with its scores and piece types;
* ``vendor/llama.cpp/models/ggml-vocab-llama-bpe.gguf`` -- Llama-3's 128256-token byte-level BPE
  vocabulary with its 280147 merges;
* ``*.gguf.inp`` / ``*.gguf.out`` -- reference vectors: texts separated by a
  ``__ggml_vocab_test__`` line, and one line of token ids (no BOS) per text.

This script

1. downloads that sdist once with ``pip download`` (pinned version, see ``SDIST_VERSION``) and extracts
   only those six files (a tarfile member filter, no full unpack);
2. converts each GGUF vocabulary (read with the ``gguf`` package) into a Hugging Face tokenizer folder:

   * ``llama-spm/``: a SentencePiece ``tokenizer.model`` rebuilt as a ``ModelProto`` (BPE model,
     byte fallback, dummy prefix, identity normalization, unk=0 bos=1 eos=2 as in Llama-2), a
     ``tokenizer.json``, and ``tokenizer_config.json`` / ``special_tokens_map.json`` shaped like
     ``lmsys/vicuna-7b-v1.5``'s (``LlamaTokenizer``, ``add_bos_token`` true, ``add_eos_token`` false,
     ``legacy`` false, ``model_max_length`` 4096, ``pad_token`` null);
   * ``llama-bpe/``: a ``tokenizer.json`` plus config shaped like ``Meta-Llama-3-8B-Instruct``'s
     (``PreTrainedTokenizerFast``, BOS ``<|begin_of_text|>`` added by the post-processor, EOS
     ``<|eot_id|>``, the 256 special tokens ``<|start_header_id|>`` ... as added tokens);

3. copies the raw ``*.gguf.inp`` / ``*.gguf.out`` files next to them, and
4. verifies every converted tokenizer against the reference vectors and prints the pass counts.

The output folder is ``--out``, else ``$VMLLM_VOCAB_DIR``, else ``~/.cache/vmllm/llama-vocabs``.
The script is idempotent: a folder that is already complete is not rebuilt (``--force`` rebuilds);
verification always runs (it takes a few seconds).  Exit status is 0 only when the
sentencepiece and ``tokenizers`` checks pass every vector.

Needs: ``gguf``, ``sentencepiece``, ``protobuf``, ``tokenizers`` (and, for the optional extra checks,
``transformers``).  Usage::

    python tools/fetch_llama_vocabs.py            # build (once) + verify
    python tools/fetch_llama_vocabs.py --force    # rebuild
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

SDIST_NAME = "llama-cpp-python"
SDIST_VERSION = "0.3.16"  # verified to contain vendor/llama.cpp/models/ggml-vocab-llama-{spm,bpe}.gguf*
SDIST_FILE = f"llama_cpp_python-{SDIST_VERSION}.tar.gz"
VOCABS = ("llama-spm", "llama-bpe")
RAW_SUFFIXES = (".gguf", ".gguf.inp", ".gguf.out")
TEST_MARKER = "__ggml_vocab_test__"

# GGUF token types (llama.cpp) == SentencePiece ModelProto.SentencePiece.Type numbering.
GGUF_NORMAL, GGUF_UNKNOWN, GGUF_CONTROL, GGUF_USER_DEFINED, GGUF_UNUSED, GGUF_BYTE = 1, 2, 3, 4, 5, 6

# Pre-tokenization regex of the Llama-3 tokenizer (tiktoken's cl100k-style pattern with \p{N}{1,3}).
LLAMA3_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


# --------------------------------------------------------------------------------------------- paths
def default_cache_dir() -> Path:
    env = os.environ.get("VMLLM_VOCAB_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "vmllm" / "llama-vocabs"


def raw_paths(out: Path, name: str) -> dict[str, Path]:
    return {suf: out / "raw" / f"ggml-vocab-{name}{suf}" for suf in RAW_SUFFIXES}


# ------------------------------------------------------------------------------------- download step
def fetch_raw_files(out: Path, force: bool = False) -> None:
    """Download the pinned sdist (once) and extract the GGUF vocabularies and reference vectors."""
    wanted = {f"ggml-vocab-{n}{s}" for n in VOCABS for s in RAW_SUFFIXES}
    raw_dir = out / "raw"
    if not force and all((raw_dir / w).is_file() for w in wanted):
        return
    sdist_dir = out / "sdist"
    sdist = sdist_dir / SDIST_FILE
    if force or not sdist.is_file():
        sdist_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               f"{SDIST_NAME}=={SDIST_VERSION}", "-d", str(sdist_dir)]
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    raw_dir.mkdir(parents=True, exist_ok=True)
    found = set()
    with tarfile.open(sdist, "r:gz") as tar:
        for member in tar:
            base = member.name.rsplit("/", 1)[-1]
            if member.isfile() and base in wanted and "/vendor/llama.cpp/models/" in member.name:
                src = tar.extractfile(member)
                with open(raw_dir / base, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                found.add(base)
    missing = wanted - found
    if missing:
        raise SystemExit(f"{sdist} lacks {sorted(missing)}")
    # The .inp/.out vectors are also copied to the top of the cache folder.
    for w in wanted:
        if not w.endswith(".gguf"):
            shutil.copyfile(raw_dir / w, out / w)


def read_gguf_vocab(path: Path) -> dict:
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    fields = {}
    for key, field in reader.fields.items():
        if key.startswith("tokenizer."):
            fields[key[len("tokenizer.ggml."):] if key.startswith("tokenizer.ggml.") else key] = field.contents()
    return fields


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def added_token(content: str) -> dict:
    return {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": False,
            "rstrip": False, "single_word": False}


# --------------------------------------------------------------------------------- Llama-2 (SPM) step
def build_spm_model_proto(vocab: dict) -> bytes:
    """A Llama-2 style SentencePiece ModelProto from the GGUF tokens, scores and token types."""
    from sentencepiece import sentencepiece_model_pb2 as pb2

    tokens, scores, types = vocab["tokens"], vocab["scores"], vocab["token_type"]
    assert len(tokens) == len(scores) == len(types) == 32000, len(tokens)
    assert (vocab["unknown_token_id"], vocab["bos_token_id"], vocab["eos_token_id"]) == (0, 1, 2)
    m = pb2.ModelProto()
    for tok, score, typ in zip(tokens, scores, types):
        p = m.pieces.add()
        p.piece, p.score, p.type = tok, float(score), int(typ)
    ts = m.trainer_spec
    ts.model_type = pb2.TrainerSpec.BPE
    ts.vocab_size = len(tokens)
    ts.byte_fallback = True
    ts.unk_id, ts.bos_id, ts.eos_id, ts.pad_id = 0, 1, 2, -1
    ts.unk_piece, ts.bos_piece, ts.eos_piece = "<unk>", "<s>", "</s>"
    ts.split_digits = True
    ts.allow_whitespace_only_pieces = True
    ts.treat_whitespace_as_suffix = False
    ts.vocabulary_output_piece_score = True
    ts.hard_vocab_limit = True
    ns = m.normalizer_spec
    ns.name = "identity"
    ns.precompiled_charsmap = b""
    ns.add_dummy_prefix = True
    ns.remove_extra_whitespaces = False
    ns.escape_whitespaces = True
    return m.SerializeToString()


def spm_merges(tokens, scores, types) -> list[tuple[str, str]]:
    """BPE merges for HF ``tokenizers``: every split of a normal piece into two normal pieces, ranked
    like SentencePiece's BPE encoder ranks merges (higher piece score first, then lower id)."""
    normal = {t: (s, i) for i, (t, s, ty) in enumerate(zip(tokens, scores, types)) if ty == GGUF_NORMAL}
    ranked = []
    for tok, (score, idx) in normal.items():
        for k in range(1, len(tok)):
            left, right = tok[:k], tok[k:]
            if left in normal and right in normal:
                ranked.append((-score, idx, normal[left][1], normal[right][1], left, right))
    ranked.sort()
    return [(r[4], r[5]) for r in ranked]


def build_spm_tokenizer_json(vocab: dict):
    """A ``tokenizers`` Tokenizer that encodes like transformers' slow ``LlamaTokenizer(legacy=False)``.

    * the first text segment always gets SentencePiece's dummy prefix "▁" (also when it starts with
      a space: " Hello" -> "▁▁Hello", as sentencepiece does);
    * text after a special token gets no prefix (legacy=False behaviour): "</s>USER" -> "</s>", "USER"
      and "</s> b" -> "</s>", "▁b".

    The special tokens are added with ``normalized=True`` on purpose: the normalizer (spaces -> "▁",
    then "▁" doubled at the very start of the text) then runs once over the whole text before the
    special tokens are split out, so only the real start of the text gets the dummy prefix, exactly
    as in the slow tokenizer (which prepends "▁" to the whole text, then splits on special tokens).
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE

    tokens, scores, types = vocab["tokens"], vocab["scores"], vocab["token_type"]
    tok_vocab = {t: i for i, t in enumerate(tokens)}
    tk = Tokenizer(BPE(vocab=tok_vocab, merges=spm_merges(tokens, scores, types), unk_token="<unk>",
                       fuse_unk=True, byte_fallback=True, dropout=None))
    tk.normalizer = normalizers.Sequence([normalizers.Replace(" ", "▁"),
                                          normalizers.Replace(Regex(r"\A▁"), "▁▁")])
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tk.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                    decoders.Strip(content=" ", left=1)])
    tk.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s>:1 $B:1", special_tokens=[("<s>", 1)])
    tk.add_special_tokens([AddedToken(t, normalized=True, special=True) for t in ("<unk>", "<s>", "</s>")])
    return tk


def convert_spm(raw: dict[str, Path], dst: Path) -> None:
    vocab = read_gguf_vocab(raw[".gguf"])
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "tokenizer.model").write_bytes(build_spm_model_proto(vocab))
    build_spm_tokenizer_json(vocab).save(str(dst / "tokenizer.json"))
    specials = {"<unk>": 0, "<s>": 1, "</s>": 2}
    write_json(dst / "tokenizer_config.json", {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": {str(i): {**{k: v for k, v in added_token(t).items() if k != "__type"},
                                          "special": True} for t, i in specials.items()},
        "bos_token": added_token("<s>"),
        "clean_up_tokenization_spaces": False,
        "eos_token": added_token("</s>"),
        "legacy": False,
        "model_max_length": 4096,
        "pad_token": None,
        "padding_side": "right",
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
        "unk_token": added_token("<unk>"),
    })
    strip = lambda d: {k: v for k, v in d.items() if k != "__type"}  # noqa: E731
    write_json(dst / "special_tokens_map.json", {
        "bos_token": strip(added_token("<s>")),
        "eos_token": strip(added_token("</s>")),
        "pad_token": "<unk>",
        "unk_token": strip(added_token("<unk>")),
    })


# --------------------------------------------------------------------------------- Llama-3 (BPE) step
def build_bpe_tokenizer_json(vocab: dict):
    """A ``tokenizers`` Tokenizer laid out like Meta-Llama-3-8B-Instruct's tokenizer.json."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import BPE

    tokens, types, merges = vocab["tokens"], vocab["token_type"], vocab["merges"]
    assert len(tokens) == 128256 and vocab["bos_token_id"] == 128000, len(tokens)
    base = {t: i for i, (t, ty) in enumerate(zip(tokens, types)) if ty == GGUF_NORMAL}
    specials = [(i, t) for i, (t, ty) in enumerate(zip(tokens, types)) if ty == GGUF_CONTROL]
    assert len(base) == 128000 and len(specials) == 256
    tk = Tokenizer(BPE(vocab=base, merges=[tuple(m.split(" ", 1)) for m in merges], dropout=None, fuse_unk=False,
                       byte_fallback=False, ignore_merges=True))
    tk.normalizer = None
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tk.post_processor = processors.Sequence([
        processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True),
        processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                      pair="<|begin_of_text|> $A <|begin_of_text|>:1 $B:1",
                                      special_tokens=[("<|begin_of_text|>", 128000)]),
    ])
    tk.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    tk.add_special_tokens([AddedToken(t, normalized=False, special=True) for _, t in specials])
    for i, t in specials:
        assert tk.token_to_id(t) == i, (t, i, tk.token_to_id(t))
    return tk, specials


def convert_bpe(raw: dict[str, Path], dst: Path) -> None:
    vocab = read_gguf_vocab(raw[".gguf"])
    dst.mkdir(parents=True, exist_ok=True)
    tk, specials = build_bpe_tokenizer_json(vocab)
    tk_json = json.loads(tk.to_str())
    # Store merges as "a b" strings like Meta's file: tokenizers < 0.20 (e.g. the 0.15.1 that the
    # reference pins) cannot read the newer [a, b] pair form; newer versions read both.
    tk_json["model"]["merges"] = [" ".join(m) if isinstance(m, list) else m for m in tk_json["model"]["merges"]]
    (dst / "tokenizer.json").write_text(json.dumps(tk_json, ensure_ascii=False), encoding="utf-8")
    strip = lambda d: {k: v for k, v in d.items() if k != "__type"}  # noqa: E731
    write_json(dst / "tokenizer_config.json", {
        "added_tokens_decoder": {str(i): {**strip(added_token(t)), "special": True} for i, t in specials},
        "bos_token": "<|begin_of_text|>",
        "chat_template": LLAMA3_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": True,
        "eos_token": "<|eot_id|>",
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": 1000000000000000019884624838656,
        "tokenizer_class": "PreTrainedTokenizerFast",
    })
    write_json(dst / "special_tokens_map.json", {
        "bos_token": strip(added_token("<|begin_of_text|>")),
        "eos_token": strip(added_token("<|eot_id|>")),
    })


EXPECTED_FILES = {
    "llama-spm": ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"),
    "llama-bpe": ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"),
}
CONVERTERS = {"llama-spm": convert_spm, "llama-bpe": convert_bpe}


# ---------------------------------------------------------------------------------------- verifying
def load_vectors(raw: dict[str, Path]) -> list[tuple[str, list[int]]]:
    """Pairs (text, expected ids without BOS) from llama.cpp's ``.inp`` / ``.out`` files."""
    inp = raw[".gguf.inp"].read_text(encoding="utf-8")
    texts = inp.split("\n" + TEST_MARKER + "\n")
    if texts and texts[-1] == "":
        texts = texts[:-1]
    outs = raw[".gguf.out"].read_text(encoding="utf-8").split("\n")
    if outs and outs[-1] == "":
        outs = outs[:-1]
    if len(texts) != len(outs):
        raise SystemExit(f"{raw['.gguf.inp']}: {len(texts)} texts but {len(outs)} id lines")
    return [(t, [int(x) for x in o.split()]) for t, o in zip(texts, outs)]


def count_passes(encode, vectors) -> tuple[int, list[str]]:
    ok, bad = 0, []
    for text, want in vectors:
        try:
            got = list(encode(text))
        except Exception as e:  # noqa: BLE001 - report, don't crash
            got = f"<{type(e).__name__}: {e}>"
        if got == want:
            ok += 1
        else:
            line = f"{text!r}: want {want} got {got}"
            bad.append(line if len(line) < 300 else line[:300] + " ...")
    return ok, bad


def verify(out: Path, name: str, extra: bool, show: int) -> bool:
    """Print pass counts per loading route; return True when the primary routes pass all vectors."""
    from tokenizers import Tokenizer

    d, vectors = out / name, load_vectors(raw_paths(out, name))
    routes = {}
    if name == "llama-spm":
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=str(d / "tokenizer.model"))
        routes["sentencepiece(tokenizer.model)"] = (True, lambda t: sp.encode(t))
    tj = Tokenizer.from_file(str(d / "tokenizer.json"))
    routes["tokenizers.Tokenizer.from_file(tokenizer.json)"] = (
        True, lambda t: tj.encode(t, add_special_tokens=False).ids)
    if extra:
        try:
            import transformers
            from transformers import AutoTokenizer, PreTrainedTokenizerFast
        except ImportError:
            transformers = None
        if transformers is not None:
            v = transformers.__version__
            fast = PreTrainedTokenizerFast(tokenizer_file=str(d / "tokenizer.json"))
            routes[f"transformers {v} PreTrainedTokenizerFast(tokenizer_file=...)"] = (
                False, lambda t: fast.encode(t, add_special_tokens=False))
            try:
                auto = AutoTokenizer.from_pretrained(str(d))
                routes[f"transformers {v} AutoTokenizer.from_pretrained(dir) [{type(auto).__name__}]"] = (
                    False, lambda t: auto.encode(t, add_special_tokens=False))
            except Exception as e:  # noqa: BLE001
                print(f"  {name}: AutoTokenizer.from_pretrained failed: {type(e).__name__}: {e}")
    all_ok = True
    for route, (primary, enc) in routes.items():
        ok, bad = count_passes(enc, vectors)
        tag = "" if primary else " (informational)"
        print(f"{name}: {ok}/{len(vectors)} reference vectors  -- {route}{tag}")
        for line in bad[:show]:
            print(f"    FAIL {line}")
        if primary and ok != len(vectors):
            all_ok = False
    return all_ok


# --------------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None,
                    help="cache folder (default: $VMLLM_VOCAB_DIR or ~/.cache/vmllm/llama-vocabs)")
    ap.add_argument("--force", action="store_true", help="download/extract/convert again")
    ap.add_argument("--no-verify", action="store_true", help="skip the reference-vector checks")
    ap.add_argument("--no-transformers", action="store_true",
                    help="only check with sentencepiece/tokenizers, not with transformers' loaders")
    ap.add_argument("--show-failures", type=int, default=5, help="failing vectors to print per route")
    args = ap.parse_args(argv)

    out = (args.out or default_cache_dir()).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    fetch_raw_files(out, force=args.force)
    for name in VOCABS:
        d = out / name
        if args.force or not all((d / f).is_file() for f in EXPECTED_FILES[name]):
            print(f"converting {name} -> {d}", flush=True)
            with tempfile.TemporaryDirectory(dir=out) as tmp:
                CONVERTERS[name](raw_paths(out, name), Path(tmp) / name)
                if d.exists():
                    shutil.rmtree(d)
                shutil.move(str(Path(tmp) / name), str(d))
        else:
            print(f"{name}: present in {d} (use --force to rebuild)")
    if args.no_verify:
        return 0
    ok = all([verify(out, name, extra=not args.no_transformers, show=args.show_failures) for name in VOCABS])
    print(f"vocabularies in {out}: {'OK' if ok else 'VERIFICATION FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
