#!/usr/bin/env python
"""Golden fixtures for vmllm, computed by the *reference* vMLLM code itself.

What it produces (one folder per encoder family, ``clip`` and ``siglip``, under ``--out``):

``<family>/tower/``
    A tiny random CLIP (``CLIPModel``) or SigLIP (``SiglipModel``) saved with
    ``save_pretrained`` so that the reference's ``from_pretrained`` calls load it, plus its
    tokenizer (a hand-written byte-level BPE ``CLIPTokenizer``; a SentencePiece unigram
    ``spiece.model`` for ``SiglipTokenizer``) and image processor.
``<family>/checkpoint/``
    The reference's ``LlavaLlamaForCausalLM`` (the family's variant: ``vMLLM_clip_large`` or
    ``vMLLM_siglip_so``) with a tiny random Llama, the vMLLM connector (``mm_projector``) and
    every tower copy the model holds, written by the reference model's own
    ``save_pretrained`` (``config.json`` in the released LLaVA layout, ``model.safetensors``),
    plus the LLM tokenizer (SentencePiece BPE with byte fallback, ``LlamaTokenizer``,
    ``legacy=False``, pad = unk as LLaVA v1 sets it).  ``mm_vision_tower`` in ``config.json``
    is the tower folder relative to the working directory the script was run from.
``<family>/images/*.png``, ``<family>/rows.json``
    Small non-square RGB images and LLaVA-format rows (``vicuna_v1``/``v1`` template).
``<family>/outputs.safetensors``, ``<family>/outputs.json``, ``<family>/meta.json``
    What the reference's training pipeline computes for one batch of those rows
    (``LazySupervisedDataset._sample_item`` -> ``DataCollatorForSupervisedDataset`` ->
    ``model(**batch)``), in fp32 and again with the whole model and the images in bf16:
    ids, labels, prompts, text-tower ids/masks, the text global vector the connector uses,
    the connector output per image, spliced lengths, logits at selected positions and the
    loss.  ``outputs.json`` documents every tensor name.

How to run (the reference needs its own pinned stack; this script only imports the
reference from ``--reference``, nothing of vmllm)::

    python3 -m venv ../venv-ref
    ../venv-ref/bin/pip install torch==2.13.0          # the CPU wheel, first
    ../venv-ref/bin/pip install transformers==4.37.2 tokenizers==0.15.1 \\
        sentencepiece protobuf safetensors pillow "numpy<2"
    git clone https://github.com/xmu-xiaoma666/vMLLM ../vMLLM   # read-only use
    PYTHONDONTWRITEBYTECODE=1 ../venv-ref/bin/python tools/make_reference_goldens.py \\
        --reference ../vMLLM --out tests/goldens --seed 0

No model weights or data are downloaded: every model is built from a config with a fixed
seed.  Workarounds applied to the reference (all in ``_patch_reference``): the CLIP
``ProjectBlock`` hard-codes ``project_size=768`` (CLIP-L's projection width); it is given the
tiny tower's ``projection_dim`` instead.  Nothing else is stubbed.
"""
import argparse
import copy
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile

FAMILIES = {
    "clip": dict(pkg="vMLLM_clip_large", train="train_vMLLM_clip_large"),
    "siglip": dict(pkg="vMLLM_siglip_so", train="train_vMLLM_siglip_so"),
}

VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's questions.")

# Small English corpus for the tokenizers (ours, written for this script).
CORPUS = [
    VICUNA_SYSTEM,
    "USER: What is shown in the image? ASSISTANT: A small picture with a few colours.",
    "The picture shows a red square on a blue background.",
    "Describe the colours of the picture briefly.",
    "There is a green circle next to a yellow line.",
    "Look at this image and tell me which shape is the largest.",
    "Hello, who are you? I am a helpful assistant that answers questions.",
    "What colour dominates the scene? Mostly green, with some brown.",
    "The quick brown fox jumps over the lazy dog.",
    "Please write a short and polite answer to the question about the photo.",
    "Count the objects in the image and name their colours one by one.",
    "A cat sits on a mat while the dog sleeps near the door.",
    "The sky is blue, the grass is green and the sun is bright today.",
    "Is there any text in the picture? No, there is no text.",
    "Where is the light coming from? From the left side of the frame.",
    "Numbers like 12, 345 and 6789 can appear in questions too.",
    "The answer should be detailed, helpful and correct.",
    "Explain what the user sees in one sentence, then add one more detail.",
    "Red, orange, yellow, green, blue, indigo and violet are colours of the rainbow.",
    "The model reads the image features and the question before it writes the answer.",
] + ["USER: ASSISTANT: USER: ASSISTANT:"] * 6 + [VICUNA_SYSTEM] * 4

ROWS = [
    # image at the start of the only human turn
    dict(id="r0_image_start", image="img0.png", conversations=[
        dict(**{"from": "human", "value": "<image>\nWhat is shown in the image?"}),
        dict(**{"from": "gpt", "value": "A red square on a blue background."})]),
    # image at the end of the turn (preprocess_multimodal moves it to the front; the
    # tower prompt keeps the raw text)
    dict(id="r1_image_end", image="img1.png", conversations=[
        dict(**{"from": "human", "value": "Describe the colours briefly.\n<image>"}),
        dict(**{"from": "gpt", "value": "Mostly green, with some brown."})]),
    # image in the middle of the turn
    dict(id="r2_image_middle", image="img2.png", conversations=[
        dict(**{"from": "human", "value": "Look at this <image> and tell me the largest shape."}),
        dict(**{"from": "gpt", "value": "The circle."})]),
    # two rounds, image in the second human turn
    dict(id="r3_multiturn", image="img3.png", conversations=[
        dict(**{"from": "human", "value": "Hello, who are you?"}),
        dict(**{"from": "gpt", "value": "I am a helpful assistant."}),
        dict(**{"from": "human", "value": "<image>\nWhat colour dominates?"}),
        dict(**{"from": "gpt", "value": "Green."})]),
    # long prompt: truncated by the text tower (77 CLIP tokens / 64 SigLIP tokens)
    dict(id="r4_long_prompt", image="img4.png", conversations=[
        dict(**{"from": "human", "value": (
            "<image>\nCount the objects in the image and name their colours one by one, "
            "then explain what the user sees in one sentence, then add one more detail about "
            "where the light is coming from and whether there is any text in the picture, "
            "and finally say which shape is the largest and which colour dominates the scene.")}),
        dict(**{"from": "gpt", "value": "Three objects."})]),
    # text only (the training code feeds a zero image and still encodes the prompt)
    dict(id="r5_text_only", conversations=[
        dict(**{"from": "human", "value": "Is the sky blue?"}),
        dict(**{"from": "gpt", "value": "Yes."})]),
]

IMAGE_SIZES = {"img0.png": (40, 28), "img1.png": (25, 37), "img2.png": (33, 33),
               "img3.png": (48, 20), "img4.png": (21, 30)}


# ----------------------------------------------------------------------------- helpers
def _json_dump(obj, path):
    with open(path, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True, ensure_ascii=False)
        f.write("\n")


def _make_images(folder, seed):
    import numpy as np
    from PIL import Image
    os.makedirs(folder, exist_ok=True)
    rng = np.random.RandomState(seed)
    for k, (name, (w, h)) in enumerate(sorted(IMAGE_SIZES.items())):
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
        img = np.zeros((h, w, 3))
        for c in range(3):
            fx, fy, ph = rng.uniform(0.05, 0.4), rng.uniform(0.05, 0.4), rng.uniform(0, 6.28)
            img[..., c] = 127.5 + 100 * np.sin(fx * xx + fy * yy + ph)
        img += rng.normal(0, 12, img.shape)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB").save(os.path.join(folder, name))


def _llm_spm(seed):
    """SentencePiece BPE, Llama-style: byte fallback, dummy prefix, unk 0 / bos 1 / eos 2."""
    import sentencepiece as spm
    spm.set_random_generator_seed(seed)
    bio = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 4), model_writer=bio, model_type="bpe", vocab_size=400,
        byte_fallback=True, add_dummy_prefix=True, remove_extra_whitespaces=False,
        normalization_rule_name="identity", split_digits=True, allow_whitespace_only_pieces=True,
        character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        unk_piece="<unk>", bos_piece="<s>", eos_piece="</s>", hard_vocab_limit=False,
        # "USER" as one piece: then "</s>USER" has one token fewer than a standalone
        # "▁USER", as with Vicuna's vocab ('USER' vs '▁US','ER'); preprocess_v1's
        # legacy=False "round_len -= 1" relies on that for rounds after the first.
        user_defined_symbols=["USER"],
        num_threads=1, minloglevel=2)
    return bio.getvalue()


def _siglip_spm(seed):
    """SentencePiece unigram with T5/SigLIP special ids: <pad> 0, </s> 1, <unk> 2, no bos."""
    import sentencepiece as spm
    spm.set_random_generator_seed(seed)
    bio = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([s.lower() for s in CORPUS] * 4), model_writer=bio,
        model_type="unigram", vocab_size=300, character_coverage=1.0,
        normalization_rule_name="identity",  # keeps spiece.model small (no NFKC charsmap)
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>", eos_piece="</s>",
        unk_piece="<unk>", hard_vocab_limit=False, num_threads=1, minloglevel=2)
    return bio.getvalue()


def _clip_vocab(n_merges=40):
    """OpenAI-CLIP-shaped vocab: 256 byte chars, the same with '</w>', learned merges, then
    <|startoftext|>, <|endoftext|> (so <|endoftext|> has the highest id, as in OpenAI's)."""
    from collections import Counter
    from transformers.models.clip.tokenization_clip import bytes_to_unicode
    chars = list(bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars]
    words = Counter()
    for line in CORPUS:
        for w in line.lower().replace(",", " ").replace(".", " ").replace("?", " ").split():
            words[tuple(w[:-1]) + (w[-1] + "</w>",)] += 1
    merges = []
    for _ in range(n_merges):
        pairs = Counter()
        for w, n in words.items():
            for a, b in zip(w, w[1:]):
                pairs[(a, b)] += n
        if not pairs:
            break
        best = max(sorted(pairs), key=lambda p: pairs[p])
        merges.append(best)
        vocab.append(best[0] + best[1])
        new = Counter()
        for w, n in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(w[i] + w[i + 1]); i += 2
                else:
                    out.append(w[i]); i += 1
            new[tuple(out)] += n
        words = new
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(vocab)}, merges


def _perturb_(module, gen, bias_std=0.05, norm_std=0.05):
    """Make biases / norm parameters non-trivial (HF inits them to 0 / 1)."""
    import torch
    for name, p in sorted(module.named_parameters()):
        with torch.no_grad():
            if name.endswith(".bias"):
                p.add_(torch.randn(p.shape, generator=gen) * bias_std)
            elif "norm" in name and name.endswith(".weight"):
                p.add_(torch.randn(p.shape, generator=gen) * norm_std)


def _init_linear_(module, gen, gain, bias_std, gains=None):
    import torch
    for name, p in sorted(module.named_parameters()):
        with torch.no_grad():
            if p.ndim == 2:
                g = (gains or {}).get(name.rsplit(".", 1)[0], gain)
                p.copy_(torch.randn(p.shape, generator=gen) * g / p.shape[1] ** 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * bias_std)


# ----------------------------------------------------------------------------- towers
def _build_clip_tower(tower_dir, seed):
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer, CLIPImageProcessor
    os.makedirs(tower_dir, exist_ok=True)
    vocab, merges = _clip_vocab()
    tmp = tempfile.mkdtemp()
    with open(os.path.join(tmp, "vocab.json"), "w") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(tmp, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    tok = CLIPTokenizer(os.path.join(tmp, "vocab.json"), os.path.join(tmp, "merges.txt"),
                        pad_token="<|endoftext|>", model_max_length=77)
    tok.save_pretrained(tower_dir)
    shutil.rmtree(tmp)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
                       ).save_pretrained(tower_dir)
    config = CLIPConfig(
        projection_dim=32,
        # eos_token_id=2 as in OpenAI's configs: pooled output = argmax(input_ids) (legacy path)
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                         hidden_act="quick_gelu", pad_token_id=1, bos_token_id=0, eos_token_id=2,
                         projection_dim=32),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                           num_attention_heads=4, image_size=32, patch_size=8,
                           hidden_act="quick_gelu", projection_dim=32))
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    _perturb_(model, torch.Generator().manual_seed(seed + 11))
    model.save_pretrained(tower_dir, safe_serialization=True)
    return config


def _build_siglip_tower(tower_dir, seed):
    import torch
    from transformers import SiglipConfig, SiglipModel, SiglipTokenizer, SiglipImageProcessor
    os.makedirs(tower_dir, exist_ok=True)
    with open(os.path.join(tower_dir, "spiece.model"), "wb") as f:
        f.write(_siglip_spm(seed))
    tok = SiglipTokenizer(os.path.join(tower_dir, "spiece.model"), model_max_length=64)
    tok.save_pretrained(tower_dir)
    # The reference ignores this file (SigLipImageProcessor is hard-coded to 384px, bicubic,
    # mean/std 0.5); it is saved at the same settings so the folder is self-describing.
    SiglipImageProcessor(size={"height": 384, "width": 384}).save_pretrained(tower_dir)
    config = SiglipConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64,
                         pad_token_id=1, eos_token_id=1),
        # 384/14 -> 27x27 = 729 patches: the reference asserts 729 tokens and resizes to 384.
        # 5 layers; the reference drops the last one -> 5 hidden states (low 2, high 3).
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=5,
                           num_attention_heads=4, image_size=384, patch_size=14))
    torch.manual_seed(seed)
    model = SiglipModel(config).eval()
    _perturb_(model, torch.Generator().manual_seed(seed + 11))
    model.save_pretrained(tower_dir, safe_serialization=True)
    return config


def _build_llm_tokenizer(ckpt_dir, seed):
    from transformers import LlamaTokenizer
    os.makedirs(ckpt_dir, exist_ok=True)
    tmp = tempfile.mkdtemp()
    path = os.path.join(tmp, "tokenizer.model")
    with open(path, "wb") as f:
        f.write(_llm_spm(seed))
    tok = LlamaTokenizer(path, legacy=False, add_bos_token=True, add_eos_token=False,
                         model_max_length=2048, padding_side="right")
    tok.pad_token = tok.unk_token  # LLaVA v1: tokenizer.pad_token = tokenizer.unk_token
    tok.save_pretrained(ckpt_dir)
    shutil.rmtree(tmp)


# ----------------------------------------------------------------------------- reference
def _patch_reference(family, pkg, proj_dim):
    """The only workaround: CLIP ProjectBlock's hard-coded project_size=768."""
    notes = []
    if family == "clip":
        mod = sys.modules[f"vmllm.{pkg}.multimodal_projector.builder"]
        orig = mod.ProjectBlock

        def ProjectBlock(mm_hidden_size, hidden_size, project_size):
            assert project_size == 768
            return orig(mm_hidden_size, hidden_size, proj_dim)
        mod.ProjectBlock = ProjectBlock
        notes.append(f"vmllm.{pkg}.multimodal_projector.builder.ProjectBlock: project_size 768 "
                     f"(hard-coded in build_vision_projector) replaced by the tower's "
                     f"projection_dim={proj_dim}")
    return notes


class _TokProxy:
    """Records every call of the tower tokenizer made by forward_text."""

    def __init__(self, tok):
        self.tok, self.calls = tok, []

    def __call__(self, *a, **k):
        out = self.tok(*a, **k)
        self.calls.append(dict(args=a, kwargs=k, out={kk: v.clone() for kk, v in out.items()}))
        return out

    def __getattr__(self, name):
        return getattr(self.tok, name)


def run_family(family, ref, out, seed):
    import numpy as np
    import torch
    from safetensors.torch import save_file, load_file

    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    sys.path.insert(0, os.path.abspath(ref))
    pkg, train_name = FAMILIES[family]["pkg"], FAMILIES[family]["train"]
    import importlib
    import transformers
    transformers.logging.set_verbosity_error()
    train = importlib.import_module(f"vmllm.train.{train_name}")
    reference = importlib.import_module(f"vmllm.{pkg}")
    conversation_lib = importlib.import_module("vmllm.conversation")
    LlavaLlamaForCausalLM, LlavaConfig = reference.LlavaLlamaForCausalLM, reference.LlavaConfig

    fam_dir = os.path.join(out, family)
    if os.path.exists(fam_dir):
        shutil.rmtree(fam_dir)
    tower_dir, ckpt_dir, img_dir = (os.path.join(fam_dir, x) for x in ("tower", "checkpoint", "images"))
    tower_rel = os.path.relpath(tower_dir, os.getcwd())

    # a. tower ------------------------------------------------------------------------
    tower_cfg = (_build_clip_tower if family == "clip" else _build_siglip_tower)(tower_dir, seed)
    proj_dim = tower_cfg.projection_dim if family == "clip" else None
    notes = _patch_reference(family, pkg, proj_dim)

    # b. LLM tokenizer ----------------------------------------------------------------
    _build_llm_tokenizer(ckpt_dir, seed)
    # exactly as the train script loads it (and sets it up for --version v1)
    tokenizer = transformers.AutoTokenizer.from_pretrained(
        ckpt_dir, model_max_length=2048, padding_side="right", use_fast=False)
    tokenizer.pad_token = tokenizer.unk_token
    conversation_lib.default_conversation = conversation_lib.conv_templates["v1"]

    # c. model ------------------------------------------------------------------------
    vis_hidden = tower_cfg.vision_config.hidden_size
    config = LlavaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2048,
        rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=0,
        tie_word_embeddings=False, use_cache=True, torch_dtype="float32")
    # fields as initialize_vision_modules / train() set them (LLaVA-1.5 released layout)
    config.mm_vision_tower = os.path.abspath(tower_dir)
    config.use_mm_proj = True
    config.mm_projector_type = "mlp2x_gelu"
    # initialize_vision_modules: mm_hidden_size = vision_tower.hidden_size.  For SigLIP that
    # property is the hard-coded SigLipVisionConfig() default (1152); the tiny tower's 32 is
    # written here, as a so400m checkpoint's 1152 matches its real tower.
    config.mm_hidden_size = vis_hidden
    config.mm_vision_select_layer = -2
    config.mm_vision_select_feature = "patch"
    config.mm_patch_merge_type = "flat"
    config.image_aspect_ratio = "pad"
    config.tokenizer_padding_side = "right"
    config.tokenizer_model_max_length = 2048
    config.tune_mm_mlp_adapter = False
    config.freeze_mm_mlp_adapter = False
    config.mm_projector_lr = None
    config.mm_use_im_start_end = False
    config.mm_use_im_patch_token = False
    torch.manual_seed(seed)
    model = LlavaLlamaForCausalLM(config)
    vt = model.get_model().get_vision_tower()
    vt.load_model()  # what initialize_vision_modules does for an existing tower
    gen = torch.Generator().manual_seed(seed + 1)
    # LLM: unit-scale random weights so logits are O(1)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if ".vision_tower." in name or ".mm_projector." in name:
                continue
            if "norm" in name:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / p.shape[1] ** 0.5)
    # connector: ~unit-gain Linear weights with non-zero biases (HF init gives std 0.02 and
    # zero biases, which makes the layer softmax uniform and the gates 0.5)
    # (gate q/k at gain 0.4: the gates have no 1/sqrt(d), and at gain 1 most sigmoids saturate)
    _init_linear_(model.get_model().mm_projector, gen, gain=1.0, bias_std=0.1,
                  gains={k: 0.4 for k in ("q_proj", "k_proj", "txt_q_proj", "txt_k_proj")})
    model.eval()

    # d. inputs -----------------------------------------------------------------------
    _make_images(img_dir, seed)
    rows = copy.deepcopy(ROWS)
    rows_path = os.path.join(fam_dir, "rows.json")
    _json_dump(rows, rows_path)

    # e. reference pipeline -----------------------------------------------------------
    from types import SimpleNamespace
    data_args = SimpleNamespace(is_multimodal=True, mm_use_im_start_end=False,
                                image_aspect_ratio="pad", image_folder=img_dir,
                                image_processor=vt.image_processor, lazy_preprocess=True)
    dataset = train.LazySupervisedDataset(data_path=rows_path, tokenizer=tokenizer, data_args=data_args)
    # _sample_item directly: __getitem__ swallows errors and retries on a random row
    instances = [dataset._sample_item(i) for i in range(len(rows))]
    batch = train.DataCollatorForSupervisedDataset(tokenizer=tokenizer)(instances)

    tok_proxy = _TokProxy(vt.tokenizer)
    vt.tokenizer = tok_proxy
    txt_k_inputs, enc_outputs, prep_outputs = [], [], []
    hook = model.get_model().mm_projector.txt_k_proj.register_forward_hook(
        lambda m, i, o: txt_k_inputs.append(i[0].detach().clone()))
    orig_encode, orig_prep = model.encode_images, model.prepare_inputs_labels_for_multimodal

    def encode_images(images, prompts=None):
        r = orig_encode(images, prompts)
        enc_outputs.append(r.detach().clone())
        return r

    def prepare(*a, **k):
        r = orig_prep(*a, **k)
        prep_outputs.append(r)
        return r
    model.encode_images, model.prepare_inputs_labels_for_multimodal = encode_images, prepare

    def forward(dtype):
        txt_k_inputs.clear(); enc_outputs.clear(); prep_outputs.clear(); tok_proxy.calls.clear()
        with torch.no_grad():
            o = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                      labels=batch["labels"], images=batch["images"].to(dtype),
                      prompts=batch["prompts"])
        assert len(enc_outputs) == 1 and len(prep_outputs) == 1 and len(tok_proxy.calls) == 1
        return dict(logits=o.logits.detach().clone(), loss=o.loss.detach().clone(),
                    connector=enc_outputs[0], text_global=txt_k_inputs[0],
                    tok=tok_proxy.calls[0], prep=prep_outputs[0])

    f32 = forward(torch.float32)
    # single-prompt runs (no padding in the text tower): padding independence
    singles = []
    for i in range(len(rows)):
        txt_k_inputs.clear(); tok_proxy.calls.clear()
        with torch.no_grad():
            c = model.encode_images(batch["images"][i:i + 1], [batch["prompts"][i]])
        singles.append(dict(text_global=txt_k_inputs[0][0].clone(), connector=c[0].clone(),
                            tok=tok_proxy.calls[0]))
    enc_outputs.clear()

    tensors, rows_out = {}, []
    B = len(rows)
    _, _, attn, _, embeds, new_labels = f32["prep"]
    tok_out = f32["tok"]["out"]
    for i in range(B):
        inst = instances[i]
        L = int(attn[i].sum())
        lab = new_labels[i, :L]
        # logits kept at: every 3rd position predicting a supervised label, the first text
        # position after each image block, and the last position (size budget)
        pos = set((torch.nonzero(lab[1:] != -100).flatten())[::3].tolist())
        img_mask = torch.zeros(L, dtype=torch.bool)
        ids = inst["input_ids"]
        n_img = int((ids == -200).sum())
        if n_img:
            n_tok = f32["connector"].shape[1]
            start = int(torch.nonzero(ids == -200)[0])
            img_mask[start:start + n_tok] = True
            if start + n_tok < L:
                pos.add(start + n_tok)
        pos.add(L - 1)
        pos = torch.tensor(sorted(pos), dtype=torch.int64)
        p = f"row{i}."
        tensors[p + "logits_pos"] = pos
        tensors[p + "logits"] = f32["logits"][i, pos].float().contiguous()
        tensors[p + "text_global"] = f32["text_global"][i].float().contiguous()
        tensors[p + "text_global_single"] = singles[i]["text_global"].float().contiguous()
        tensors[p + "pixel_values"] = (inst["image"] if family == "clip"
                                       else inst["image"][:, ::16, ::16]).float().contiguous()
        if n_img:
            tensors[p + "connector.0"] = f32["connector"][i].float().contiguous()
        tmask = tok_out.get("attention_mask")
        rows_out.append(dict(
            id=rows[i]["id"],
            input_ids=inst["input_ids"].tolist(),
            labels=inst["labels"].tolist(),
            prompt=inst["prompt"],
            llm_tokens=[tokenizer.convert_ids_to_tokens(t) if t >= 0 else "<IMAGE:-200>"
                        for t in inst["input_ids"].tolist()],
            text_tower_input_ids=tok_out["input_ids"][i].tolist(),
            text_tower_attention_mask=None if tmask is None else tmask[i].tolist(),
            text_tower_tokens=tok_proxy.tok.convert_ids_to_tokens(tok_out["input_ids"][i].tolist()),
            text_tower_input_ids_single=singles[i]["tok"]["out"]["input_ids"][0].tolist(),
            text_tower_attention_mask_single=(singles[i]["tok"]["out"]["attention_mask"][0].tolist()
                                              if "attention_mask" in singles[i]["tok"]["out"] else None),
            text_global_single_vs_batch_max_abs_diff=float(
                (singles[i]["text_global"] - f32["text_global"][i]).abs().max()),
            connector_single_vs_batch_max_abs_diff=(float(
                (singles[i]["connector"] - f32["connector"][i]).abs().max()) if n_img else None),
            n_images=n_img,
            spliced_len=L,
            spliced_labels=lab.tolist(),
            image_size=None if "image" not in rows[i] else list(IMAGE_SIZES[rows[i]["image"]]),
        ))
    tensors["batch.loss"] = f32["loss"].float().reshape(1)

    # save the checkpoint the reference way, before the bf16 cast (which would round weights)
    model.config.mm_vision_tower = tower_rel
    model.save_pretrained(ckpt_dir, safe_serialization=True)
    names = sorted(load_file(os.path.join(ckpt_dir, "model.safetensors")).keys())

    # reload check: from_pretrained + load_model (the reference's inference path), same logits
    cfg = LlavaConfig.from_pretrained(ckpt_dir)
    cfg.mm_vision_tower = os.path.abspath(tower_dir)
    re_model = LlavaLlamaForCausalLM.from_pretrained(ckpt_dir, config=cfg, torch_dtype=torch.float32)
    re_model.get_model().get_vision_tower().load_model()
    re_model.eval()
    with torch.no_grad():
        ro = re_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                      labels=batch["labels"], images=batch["images"], prompts=batch["prompts"])
    reload_diff = float((ro.logits - f32["logits"]).abs().max())

    # bf16: whole model and images in bf16
    model.to(torch.bfloat16)
    b16 = forward(torch.bfloat16)
    for i in range(B):
        p = f"row{i}."
        # (LlamaForCausalLM upcasts bf16 logits with .float(); cast back is exact)
        tensors[p + "logits_bf16"] = b16["logits"][i, tensors[p + "logits_pos"]].to(torch.bfloat16).contiguous()
        tensors[p + "text_global_bf16"] = b16["text_global"][i].contiguous()
        if rows_out[i]["n_images"]:
            c16 = b16["connector"][i]
            tensors[p + "connector_bf16.0"] = (c16 if family == "clip" else c16[::8]).contiguous()
    tensors["batch.loss_bf16"] = b16["loss"].reshape(1)
    model.encode_images, model.prepare_inputs_labels_for_multimodal = orig_encode, orig_prep
    hook.remove()
    vt.tokenizer = tok_proxy.tok


    # reference SigLIP processor vs transformers' SiglipImageProcessor (vmllm may use the latter)
    proc_diff = None
    if family == "siglip":
        from PIL import Image
        from transformers import SiglipImageProcessor
        hf = SiglipImageProcessor.from_pretrained(tower_dir)
        proc_diff = {}
        for name in sorted(IMAGE_SIZES):
            im = Image.open(os.path.join(img_dir, name)).convert("RGB")
            a = vt.image_processor.preprocess(im, return_tensors="pt")["pixel_values"][0]
            b = hf.preprocess(im, return_tensors="pt")["pixel_values"][0]
            proc_diff[name] = float((a - b).abs().max())

    save_file(tensors, os.path.join(fam_dir, "outputs.safetensors"), metadata={"family": family})
    # the dumps
    hs = {"clip": dict(vision_hidden_states=tower_cfg.vision_config.num_hidden_layers + 1),
          "siglip": dict(vision_hidden_states=tower_cfg.vision_config.num_hidden_layers)}[family]
    n = hs["vision_hidden_states"]
    hs.update(low=f"hidden_states[0:{n // 2}]", high=f"hidden_states[{n // 2}:{n}]",
              select="hidden_states[-2] (CLS kept)" if family == "clip"
              else "hidden_states[-1] of the truncated tower (= full tower's penultimate)")
    _json_dump(dict(
        family=family,
        template="v1 (conv_vicuna_v1; --version v1: pad = unk)",
        image_token_index=-200, ignore_index=-100,
        rows=rows_out,
        batch_prompts=batch["prompts"],
        collator=dict(pad_token_id=tokenizer.pad_token_id, label_pad=-100,
                      padded_len=int(batch["input_ids"].shape[1]), padding_side="right",
                      images_shape=list(batch["images"].shape)),
        text_tower_call_kwargs={k: v for k, v in f32["tok"]["kwargs"].items()},
        text_tower_returns_attention_mask="attention_mask" in tok_out,
        hidden_state_groups=hs,
        loss_fp32=float(f32["loss"]), loss_bf16=float(b16["loss"]),
        tensors={k: dict(dtype=str(v.dtype).replace("torch.", ""), shape=list(v.shape))
                 for k, v in sorted(tensors.items())},
        tensor_doc={
            "rowN.logits_pos": "positions (in the spliced sequence) whose logits are stored",
            "rowN.logits / rowN.logits_bf16": "LLM logits at logits_pos, (len(pos), vocab)",
            "rowN.connector.0": "encode_images output for the row's image, (N, D), fp32 run",
            "rowN.connector_bf16.0": ("same, bf16 run" if family == "clip" else
                                      "same, bf16 run, tokens [::8] only (size budget)"),
            "rowN.text_global": "input of mm_projector.txt_k_proj (text global vector the gates use), batch run",
            "rowN.text_global_single": "same, prompt encoded alone (no padding)",
            "rowN.pixel_values": ("processed image (3,H,W)" if family == "clip" else
                                  "processed image [:, ::16, ::16] (full is 3x384x384)"),
            "batch.loss / batch.loss_bf16": "the model's loss (labels given) for the whole batch",
        },
    ), os.path.join(fam_dir, "outputs.json"))
    import sentencepiece, tokenizers, PIL
    _json_dump(dict(
        family=family,
        reference_package=f"vmllm.{pkg}", reference_train_module=f"vmllm.train.{train_name}",
        reference_commit=subprocess.run(["git", "-C", ref, "rev-parse", "HEAD"], capture_output=True,
                                        text=True).stdout.strip(),
        versions=dict(python=sys.version.split()[0], torch=torch.__version__,
                      transformers=transformers.__version__, tokenizers=tokenizers.__version__,
                      sentencepiece=sentencepiece.__version__, pillow=PIL.__version__,
                      numpy=np.__version__),
        seed=seed,
        command=" ".join(["python", "tools/make_reference_goldens.py"] + COMMAND_ARGS),
        workarounds=notes,
        attn_implementation=getattr(model.config, "_attn_implementation", None),
        tower_config=tower_cfg.to_dict(),
        llm_config=json.load(open(os.path.join(ckpt_dir, "config.json"))),
        checkpoint_tensor_names=names,
        checkpoint_reload_max_abs_logit_diff=reload_diff,
        siglip_reference_processor_vs_hf_SiglipImageProcessor_max_abs_diff=proc_diff,
    ), os.path.join(fam_dir, "meta.json"))
    print(f"[{family}] done: reload diff {reload_diff:.3g}, {len(names)} checkpoint tensors")


COMMAND_ARGS = []


def main():
    global COMMAND_ARGS
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", required=True, help="path of a vMLLM (xmu-xiaoma666/vMLLM) checkout")
    ap.add_argument("--out", default="tests/goldens")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--family", choices=sorted(FAMILIES), action="append",
                    help="only these families (default: all); each runs in its own process")
    ap.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    COMMAND_ARGS = ["--reference", "VMLLM_CHECKOUT", "--out", str(a.out), "--seed", str(a.seed)]  # no machine paths
    fams = a.family or sorted(FAMILIES)
    if a._child:
        run_family(fams[0], a.reference, a.out, a.seed)
        return
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", PYTHONHASHSEED="0", CUDA_VISIBLE_DEVICES="")
    for fam in fams:
        subprocess.run([sys.executable, os.path.abspath(__file__), "--reference", a.reference,
                        "--out", a.out, "--seed", str(a.seed), "--family", fam, "--_child"],
                       check=True, env=env)


if __name__ == "__main__":
    main()
