"""Token ids and labels against code nobody here wrote, on the real Llama-2 and Llama-3 vocabularies.

- `load_llm_tokenizer` against llama.cpp's reference vectors for both vocabularies.
- vmllm's data pipeline (rows in, ids and labels out) against `tests/goldens/llava_tokens.json`:
  what LLaVA's and the vMLLM reference's own preprocessing produced for the 67 conversations of
  `tests/goldens/conversations.json` (made by `tools/make_token_goldens.py`).
- the `llama3_next` template against `tests/goldens/llava_next_tokens.json`: what LLaVA-NeXT's own
  `preprocess_llama3` produced for the same conversations (made by `tools/make_llava_next_goldens.py`).

The vocabularies ship inside the llama-cpp-python source distribution; `python tools/fetch_llama_vocabs.py`
downloads it once and converts them into a local cache. Without that cache these tests skip, saying so.
"""
import json, os
from pathlib import Path

import pytest
from PIL import Image

from vmllm.core import IGNORE_INDEX, IMAGE_TOKEN, build_tokenizer, load_llm_tokenizer
from vmllm.data import BadRow, LlavaDataset
from vmllm.encoder import build_image_processor, tiny_encoder_config
from vmllm.processor import VmllmProcessor

GOLDENS = Path(__file__).parent / "goldens"
VOCABS = Path(os.environ.get("VMLLM_VOCAB_DIR", Path.home() / ".cache" / "vmllm" / "llama-vocabs"))
MARKER = "\n__ggml_vocab_test__\n"
needs_vocabs = pytest.mark.skipif(not (VOCABS / "llama-spm" / "tokenizer.model").is_file(),
                                  reason=f"no Llama vocabularies in {VOCABS}: run `python tools/fetch_llama_vocabs.py`")

# Where vmllm deliberately differs from LLaVA/the reference, per (vocabulary, template) and row id, and why.
BAD_ROW = "skipped and named"              # the reference crashes, drops data silently or mis-reads the row
REPLIES_LABELLED = "replies labelled"      # LLaVA's length arithmetic mislabels or drops the whole row
SAME_TEXT = "same text, newer tokenizers"  # tokenizers 0.15.1 (the reference's pin) ignores Llama-3's ignore_merges
EOS_NOT_TEXT = "EOS, not '</s>' text"      # vicuna_v1 on Llama-3: LLaVA writes '</s>' as text and masks every row
NOTHING_TO_LEARN = "empty replies: skipped"  # every reply empty: LLaVA keeps the row (no loss, or the separator
                                             # alone with plain); vmllm skips it and names it, as a bad row


def nothing_to_learn(row) -> bool:
    return all(not str(t.get("value", "")).strip() for t in row["conversations"] if t.get("from") == "gpt")
ROW_RULES = {"mt_first_gpt": BAD_ROW,          # the reference drops a leading assistant turn silently
             "txt_image_word_no_token": BAD_ROW,  # '<image>' in a row without an image: tokenised as text there
             "img_two_tokens": BAD_ROW,         # two <image> for one image: the reference keeps one
             "img_in_gpt": BAD_ROW}             # <image> in a reply: the reference counts two images for one


def vectors(name):
    "llama.cpp's (text, ids without BOS) pairs for one vocabulary."
    texts = (VOCABS / f"ggml-vocab-{name}.gguf.inp").read_text(encoding="utf-8").split(MARKER)
    outs = (VOCABS / f"ggml-vocab-{name}.gguf.out").read_text(encoding="utf-8").splitlines()
    texts = texts[:len(outs)] if texts[-1] in ("", "\n") else texts
    assert len(texts) == len(outs), (len(texts), len(outs))
    return [(t, [int(x) for x in o.split()]) for t, o in zip(texts, outs)]


@needs_vocabs
@pytest.mark.parametrize("name", ["llama-spm", "llama-bpe"])
def test_llama_cpp_reference_vectors(name, tmp_path):
    tok = load_llm_tokenizer(VOCABS / name)
    vecs = vectors(name)
    bad = [t for t, want in vecs if tok(t, add_special_tokens=False).input_ids != want]
    assert not bad, f"{len(bad)}/{len(vecs)} of llama.cpp's strings tokenised differently, e.g. {bad[:3]!r}"
    tok.save_pretrained(tmp_path)  # what a vmllm checkpoint holds: reloads tokenising the same
    again = load_llm_tokenizer(tmp_path)
    assert [again(t, add_special_tokens=False).input_ids for t, _ in vecs] == [w for _, w in vecs]


def model_only_copy(src: Path, dst: Path) -> Path:
    "A tokenizer directory as released Vicuna/LLaVA checkpoints ship it: tokenizer.model and its config, no tokenizer.json."
    dst.mkdir()
    for f in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"): (dst / f).write_bytes((src / f).read_bytes())
    return dst


@needs_vocabs
def test_sentencepiece_model_alone(tmp_path):
    tok = load_llm_tokenizer(model_only_copy(VOCABS / "llama-spm", tmp_path / "spm"))
    assert all(tok(t, add_special_tokens=False).input_ids == want for t, want in vectors("llama-spm"))
    assert tok("a</s>USER: b").input_ids == [1, 263, 2, 11889, 29901, 289]  # no '▁' after a special token (legacy=False)


def processor_for(name):
    "A processor with one image slot per image, so ids compare one to one with LLaVA's (-200 = the image)."
    tok = load_llm_tokenizer(VOCABS / name)
    if tok.pad_token is None: tok.pad_token = tok.unk_token or tok.eos_token
    tok.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    return VmllmProcessor(tok, build_tokenizer(add_eos=True), build_image_processor(tiny_encoder_config("clip")),
                          tokens_per_image=1, family="clip", text_max_length=32)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    "The golden conversations as a LLaVA data file, with an image file for every row that names one."
    d = tmp_path_factory.mktemp("corpus")
    rows = json.loads((GOLDENS / "conversations.json").read_text())
    for r in rows:
        if r.get("image"):
            p = d / "images" / r["image"]; p.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (6, 4), "red").save(p)
    (d / "rows.json").write_text(json.dumps(rows))
    return d, rows


def expected_difference(vocab, template, row, gold):
    "None where vmllm must equal LLaVA exactly, else the deliberate difference (see ROW_RULES)."
    if row["id"] in ROW_RULES: return ROW_RULES[row["id"]]
    if "error" in gold and template == "plain": return BAD_ROW
    if nothing_to_learn(row): return NOTHING_TO_LEARN
    if "error" in gold: return REPLIES_LABELLED
    if vocab == "llama-bpe" and template == "vicuna_v1": return EOS_NOT_TEXT
    if vocab == "llama-bpe" and row["id"] == "reply_vietnamese": return SAME_TEXT
    if gold.get("mismatch") or row["id"] == "txt_USER": return REPLIES_LABELLED
    return None


CASES = [("llama-spm", "plain"), ("llama-spm", "vicuna_v1"), ("llama-bpe", "plain"), ("llama-bpe", "vicuna_v1"),
         ("llama-bpe", "llama3")]


@needs_vocabs
@pytest.mark.parametrize("vocab,template", CASES)
def test_ids_and_labels_match_llava(vocab, template, corpus):
    folder, rows = corpus
    gold = json.loads((GOLDENS / "llava_tokens.json").read_text())
    golden_rows, prompts = gold["goldens"][vocab][template], gold["text_prompts"]
    proc = processor_for(vocab)
    ds = LlavaDataset(folder / "rows.json", folder / "images", proc, template)
    image_id, tok = proc.image_token_id, proc.tokenizer
    tally = {}
    for i, row in enumerate(rows):
        g, why = golden_rows[row["id"]], expected_difference(vocab, template, row, golden_rows[row["id"]])
        tally[why or "identical"] = tally.get(why or "identical", 0) + 1
        if why == BAD_ROW:
            with pytest.raises(BadRow, match=f"rows.json row {i + 1} "): ds.example(i)  # row N: 1-based
            continue
        if why == NOTHING_TO_LEARN:
            with pytest.raises(BadRow, match=f"rows.json row {i + 1} .*nothing to learn"): ds.example(i)
            continue
        ex = ds.example(i)
        ids = [-200 if t == image_id else t for t in ex["input_ids"]]
        assert ex["prompt"] == prompts[row["id"]], row["id"]
        if why is None:
            assert ids == g["input_ids"], row["id"]
            assert ex["labels"] == g["labels"], row["id"]
            continue
        learnt = [t for t in ex["labels"] if t != IGNORE_INDEX]
        replies = [t["value"] for t in row["conversations"] if t["from"] == "gpt"]
        if why == SAME_TEXT:
            assert tok.decode([t for t in ids if t >= 0]) == tok.decode([t for t in g["input_ids"] if t >= 0])
        if why in (REPLIES_LABELLED, EOS_NOT_TEXT):
            if "error" not in g and why == REPLIES_LABELLED: assert ids == g["input_ids"], row["id"]
            assert all(r.strip() in tok.decode(learnt) for r in replies), (row["id"], tok.decode(learnt))
            if replies[-1]: assert learnt[-1] == tok.eos_token_id, row["id"]  # every reply ends with the EOS it must learn
    print(vocab, template, tally)
    if (vocab, template) != ("llama-bpe", "vicuna_v1"):  # LLaVA cannot run that pair at all
        assert tally.get("identical", 0) >= 40 - tally.get(NOTHING_TO_LEARN, 0)  # the corpus is mostly ordinary rows: they must all agree exactly


# llama3_next against LLaVA-NeXT's own preprocess_llama3 (tests/goldens/llava_next_tokens.json, made by
# tools/make_llava_next_goldens.py). Two deliberate differences, each checked for what it is:
IMAGE_LEFT_IN_PLACE = "<image> at a turn's start kept there"  # LLaVA-NeXT moves only an <image> inside the text;
                                                              # vmllm moves every one as LLaVA does, at every door
HEADERS_LEARNT = ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "assistant", "ĊĊ")
# LLaVA-NeXT also learns every turn's header tokens, the system/user <|eot_id|> and the assistant header; vmllm learns
# the replies and their <|eot_id|> only, as for every other template


def llava_next_difference(row, gold):
    if row["id"] in ROW_RULES: return BAD_ROW
    if nothing_to_learn(row): return NOTHING_TO_LEARN
    if any(m.startswith("<image>") and m[len("<image>"):][:1] not in ("", "\n") for m in gold["messages"]):
        return IMAGE_LEFT_IN_PLACE
    if row["id"] == "reply_vietnamese": return SAME_TEXT
    return None


@needs_vocabs
def test_llama3_next_matches_llava_next(corpus):
    folder, rows = corpus
    gold = json.loads((GOLDENS / "llava_next_tokens.json").read_text())["goldens"]
    proc = processor_for("llama-bpe")
    tok = proc.tokenizer
    ds = LlavaDataset(folder / "rows.json", folder / "images", proc, "llama3_next")
    headers = {tok.convert_tokens_to_ids(t) for t in HEADERS_LEARNT}
    tally = {}
    for i, row in enumerate(rows):
        g = gold[row["id"]]
        why = llava_next_difference(row, g)
        tally[why or "identical"] = tally.get(why or "identical", 0) + 1
        if why in (BAD_ROW, NOTHING_TO_LEARN):
            with pytest.raises(BadRow): ds.example(i)
            continue
        ex = ds.example(i)
        ids = [-200 if t == proc.image_token_id else t for t in ex["input_ids"]]
        text = lambda x: tok.decode([t for t in x if t >= 0])
        if why == SAME_TEXT: assert text(ids) == text(g["input_ids"]), row["id"]
        if why == IMAGE_LEFT_IN_PLACE:  # the same words; only the white space after the image differs
            squash = lambda s: "".join(s.split())
            assert squash(text(ids)) == squash(text(g["input_ids"])), row["id"]
        if why: continue
        assert ids == g["input_ids"], row["id"]
        for t, ours, theirs in zip(ids, ex["labels"], g["labels"]):
            assert ours == theirs or (ours == IGNORE_INDEX and theirs in headers), (row["id"], tok.convert_ids_to_tokens(t))
    print("llama3_next vs LLaVA-NeXT", tally)
    assert tally.get("identical", 0) >= 55 - tally.get(NOTHING_TO_LEARN, 0)  # all ordinary rows agree exactly
