"""Padding left by length grouping: word estimates (`length_grouping="words"`) against exact token counts ("tokens").

    python tools/fetch_llama_vocabs.py                  # once: the real Llama-2 vocabulary, from llama-cpp-python's sdist
    python benchmarks/length_grouping.py                # 20,000 rows, global batch 128, as the paper's stage 2

The rows are generated here (nothing is downloaded), shaped like an instruction mix such as LLaVA-665K's: image rows
with one to five question-answer turns, 3% long text-only rows, and text of several kinds whose tokens per word
differ: 85% plain English, 6% numbers and units, 3% each code, Cyrillic and Chinese ("mixed"), and the same rows in
plain English only ("english"). Both are made-up mixes, not samples of any dataset: how much exact counts buy depends
on how much the tokens per word vary in yours. Both groupings batch the same rows with
`ModalityLengthSampler`; the padding share of each is measured against the exact lengths (`LlavaDataset.token_lengths`,
the lengths the model sees, with 576 image slots as CLIP-L/14-336 gives). The time to count the tokens once is printed:
a stage pays it once per data file (`lengths.json`).
"""
from __future__ import annotations
import argparse, json, os, platform, random, shlex, sys, tempfile, time
from pathlib import Path
from PIL import Image
from vmllm.core import IMAGE_TOKEN, build_tokenizer, load_llm_tokenizer
from vmllm.data import LlavaDataset, ModalityLengthSampler
from vmllm.encoder import build_image_processor, tiny_encoder_config
from vmllm.processor import VmllmProcessor

VOCABS = Path(os.environ.get("VMLLM_VOCAB_DIR", Path.home() / ".cache" / "vmllm" / "llama-vocabs"))
WORDS = "the a of on in with is are what where how many colour left right person table car dog street sign".split()
KINDS = {  # text of one kind: a function of the random source and a word count
    "english": lambda rng, n: " ".join(rng.choice(WORDS) for _ in range(n)),
    "numbers": lambda rng, n: " ".join(f"{rng.uniform(0, 10000):.2f}{rng.choice(['km', '%', 'kg', ''])}" for _ in range(n)),
    "code": lambda rng, n: " ".join(f"x_{rng.randrange(999)}[{rng.randrange(9)}]=f({rng.randrange(99)});" for _ in range(n)),
    "cyrillic": lambda rng, n: " ".join(rng.choice(["улица", "машина", "человек", "собака", "сколько", "где"]) for _ in range(n)),
    "chinese": lambda rng, n: " ".join("".join(rng.choice("的一是在不了有和人这中大为上个国我以要") for _ in range(4)) for _ in range(n)),
}


MIXES = {"mixed": [85, 6, 3, 3, 3], "english": [100, 0, 0, 0, 0]}  # weights of KINDS


def rows(n: int, seed: int, weights: list) -> list[dict]:
    "Instruction rows: 97% with an image (1-5 turns of 4-60 words), 3% long text-only ones; each row one kind of text."
    rng = random.Random(seed)
    out = []
    for i in range(n):
        kind = rng.choices(list(KINDS), weights=weights)[0]
        text = lambda k: KINDS[kind](rng, k)
        if rng.random() < 0.03:
            conv = [("human", text(rng.randint(50, 300))), ("gpt", text(rng.randint(100, 600)))]
            out.append({"id": f"t{i}", "conversations": [{"from": f, "value": v} for f, v in conv]})
            continue
        conv = []
        for t in range(rng.randint(1, 5)):
            conv += [("human", (IMAGE_TOKEN + "\n" if t == 0 else "") + text(rng.randint(4, 20))), ("gpt", text(rng.randint(1, 60)))]
        out.append({"id": f"r{i}", "image": "a.png", "conversations": [{"from": f, "value": v} for f, v in conv]})
    return out


def processor(vocab: str) -> VmllmProcessor:
    "The Llama-2 tokenizer with `<image>`, 576 slots per image (CLIP-L/14-336); the toy tokenizer without the vocabulary."
    path = VOCABS / vocab
    tok = load_llm_tokenizer(path) if (path / "tokenizer.json").is_file() or (path / "tokenizer.model").is_file() else build_tokenizer()
    tok.model_max_length = 10**6  # long rows are measured, not truncated
    if tok.pad_token is None: tok.pad_token = tok.unk_token or tok.eos_token
    if IMAGE_TOKEN not in tok.get_vocab(): tok.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    return VmllmProcessor(tok, build_tokenizer(add_eos=True), build_image_processor(tiny_encoder_config("clip")),
                          tokens_per_image=576, family="clip", text_max_length=32)


def padding_share(by: list[int], exact: list[int], batch_size: int, seed: int) -> float:
    "The share of the tokens in the batches grouped `by` these lengths that are padding (to each batch's longest row)."
    batches = ModalityLengthSampler(by, batch_size, seed=seed).batches()
    real = sum(abs(exact[i]) for b in batches for i in b)
    return 1 - real / sum(max(abs(exact[i]) for i in b) * len(b) for b in batches)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--batch", type=int, default=128, help="global batch (LLaVA-1.5 stage 2: 128)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vocab", default="llama-spm", help="a folder of tools/fetch_llama_vocabs.py's cache")
    args = ap.parse_args(argv)
    proc = processor(args.vocab)
    print(f"python benchmarks/length_grouping.py {shlex.join(argv if argv is not None else sys.argv[1:])}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}; tokenizer: "
          f"{args.vocab if len(proc.tokenizer) > 1000 else 'the toy tokenizer (no Llama vocabulary found)'} ({len(proc.tokenizer)} tokens)")
    for mix, weights in MIXES.items():
        with tempfile.TemporaryDirectory() as d:
            d = Path(d)
            Image.new("RGB", (8, 8)).save(d / "a.png")
            (d / "rows.json").write_text(json.dumps(rows(args.rows, args.seed, weights), ensure_ascii=False))
            ds = LlavaDataset(d / "rows.json", d, proc, "vicuna_v1", max_length=10**6)
            t0 = time.perf_counter()
            words = ds.modality_lengths()
            t_words = time.perf_counter() - t0
            t0 = time.perf_counter()
            tokens = ds.token_lengths()
            t_tokens = time.perf_counter() - t0
        print(f"{mix}: {args.rows} rows, global batch {args.batch}, mean exact length {sum(map(abs, tokens)) / len(tokens):.0f} "
              f"tokens (576 image slots)")
        for name, by, sec in (("words", words, t_words), ("tokens", tokens, t_tokens)):
            share = sum(padding_share(by, tokens, args.batch, args.seed + e) for e in range(3)) / 3
            print(f"  grouped by {name:6s}: padding {share:6.2%} of the batches' tokens (mean of 3 epochs); lengths in {sec:6.1f} s")

if __name__ == "__main__": main()
