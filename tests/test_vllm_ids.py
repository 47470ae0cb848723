"""The ids vLLM's engine reads for a vmllm model equal vmllm's processor's, on the real Llama-2 and Llama-3 vocabularies.

vLLM tokenises a whole prompt at once (and drops BOS on its chat path); vmllm tokenises the text between images one
chunk at a time with BOS. The plugin (`vmllm.vllm_plugin`) reads vLLM's ids back to text (`vmllm.serve.ids_to_text`)
and re-tokenises it by vmllm's rule; these tests check that chain, and the text tower's prompt read from it, without
vLLM itself (its tokeniser is the checkpoint's `transformers` tokenizer). Needs `python tools/fetch_llama_vocabs.py`.
"""
import os
from pathlib import Path

import pytest

from vmllm.core import IMAGE_TOKEN, build_tokenizer, load_llm_tokenizer
from vmllm.encoder import build_image_processor, tiny_encoder_config
from vmllm.infer import build_prompt
from vmllm.processor import VmllmProcessor
from vmllm.serve import engine_text

VOCABS = Path(os.environ.get("VMLLM_VOCAB_DIR", Path.home() / ".cache" / "vmllm" / "llama-vocabs"))
pytestmark = pytest.mark.skipif(not (VOCABS / "llama-spm" / "tokenizer.model").is_file(),
                                reason=f"no Llama vocabularies in {VOCABS}: run `python tools/fetch_llama_vocabs.py`")


def processor(name: str, template: str) -> VmllmProcessor:
    tok = load_llm_tokenizer(VOCABS / name)
    if tok.pad_token is None: tok.pad_token = tok.unk_token or tok.eos_token
    tok.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    return VmllmProcessor(tok, build_tokenizer(add_eos=True), build_image_processor(tiny_encoder_config("clip")),
                          tokens_per_image=1, family="clip", text_max_length=32, template=template)


def prompts(proc) -> list:
    "(LLM text, text-tower prompt) pairs: one image, two images, a multi-turn chat, odd spacing and non-ASCII text."
    history = [("human", "<image>\nWhat is it?"), ("gpt", "A red  square.")]
    return [build_prompt("What colour is the shape?", proc),
            build_prompt("Compare <image> with <image>, please.", proc, n_images=2),
            build_prompt("And where is it?", proc, history=history),
            build_prompt("  Wie viele Kreise? ¿Cuántos?\n\n  ", proc)]


@pytest.mark.parametrize("name,template", [("llama-spm", "vicuna_v1"), ("llama-bpe", "llama3")])
def test_engine_ids_equal_the_processors(name, template):
    proc = processor(name, template)
    tok = proc.tokenizer
    for text, _ in prompts(proc):
        want, _ = proc.encode(text)
        engine_views = [tok(text).input_ids,                                  # vLLM's completion path: whole prompt, BOS
                        tok(text, add_special_tokens=False).input_ids,        # its chat path: no BOS
                        want]                                                 # ids already in vmllm's form
        for ids in engine_views:
            back = engine_text(proc, ids)
            assert back == text, (back, text)
            assert proc.encode(back)[0] == want
            assert proc.prompt_of_text(back) == proc.prompt_of_text(text)
        if name == "llama-spm" and IMAGE_TOKEN in text:
            assert tok(text).input_ids != want  # the mismatch the plugin repairs: '▁' after an image, per chunk
