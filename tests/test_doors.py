"""One model through every door: on a trained toy model and on checkpoints the reference code wrote, every way a
user reaches a vmllm model computes what training and `vmllm_eval` compute.

The canonical path is vmllm's own: `build_prompt` (the training renderer, `render_conversation`) and the processor
called with `prompts=` the text tower's prompt of the turns. Each door is compared with it: the LLM ids, the text
tower's ids, the connector output and the next-token logits (fp32, 1e-6) and the greedy tokens. The doors:
`processor(text, images=)` without `prompts=` (the README's pattern), `processor.apply_chat_template(...,
tokenize=True)`, `processor(processor.apply_chat_template(...), images=)`, `pipeline("image-text-to-text")` (chat
messages and raw text), batched chat templates with either padding side, `Chat` over several turns and its
explain pictures, TRL's collator, and `vmllm_eval`'s held-out accuracy against the processor and pipeline doors."""
import copy, json
from pathlib import Path

import pytest
import torch
from PIL import Image

from vmllm.chat import Chat, connector_details
from vmllm.evaluate import evaluate, is_correct
from vmllm.infer import build_prompt, normalize_answer
from vmllm.model import VmllmForCausalLM
from vmllm.processor import VmllmProcessor
from vmllm.processor import chat_turns, images_to_front

TOL = 1e-6
NEW = 8


@pytest.fixture(scope="module")
def toy(toy_run):
    "A trained toy model (a shortened toy run, shared with the session) with its held-out split: (model, processor, run folder)."
    out = toy_run
    ckpt = out / "stage2" / "final"
    model, proc = VmllmForCausalLM.from_pretrained(ckpt), VmllmProcessor.from_pretrained(ckpt)
    return model, proc, out


def images_of(run: Path, n: int = 2) -> list:
    return [Image.open(p).convert("RGB") for p in sorted((run / "data" / "images").glob("ho_*.png"))[:n]]


def conversations(a, b) -> dict:
    "Conversations of one to three user turns, images at the start or in the middle, text-only, two images."
    img, txt = lambda im: {"type": "image", "image": im}, lambda s: {"type": "text", "text": s}
    user, bot = lambda *c: {"role": "user", "content": list(c)}, lambda s: {"role": "assistant", "content": s}
    return {
        "one turn": [user(img(a), txt("Where is the red circle?"))],
        "one turn, string content": [{"role": "user", "content": "<image>\nHow many small shapes are there?"}],
        "image in the middle": [{"role": "user", "content": "Look: <image> How many shapes are there?"}],
        "two turns": [user(img(a), txt("How many shapes are there?")), bot("3"), user(txt("Where is the blue square?"))],
        "three turns": [user(img(b), txt("How many shapes are there?")), bot("2"), user(txt("What colour is the small shape?")),
                        bot("red"), user(txt("Where is the green triangle?"))],
        "text only": [user(txt("What is 2 plus 3?"))],
        "two images": [user(img(a), img(b), txt("How many shapes are there?"))],
        "empty reply before": [user(img(a), txt("How many shapes are there?")), bot(""), user(txt("Where is the red square?"))],
        "long question": [user(img(b), txt("Where is the yellow circle? " * 6))],
        "stripped spaces": [user(img(a), txt("  What colour is the shape at the top left?  "))],
    }


def image_list(msgs, string_images) -> list:
    parts = [p["image"] for m in msgs if isinstance(m["content"], list) for p in m["content"] if p.get("type") == "image"]
    return parts or string_images


def canonical(proc, msgs, images, as_rendered: bool = False) -> dict:
    """vmllm's own path: the training renderer and the text tower's prompt of the turns, images as training reads them.
    `as_rendered`: the prompt of the turns as the template renders them (images moved to the front), which is all a
    rendered text holds: a door that reads the prompt back from such text can give no more."""
    turns = chat_turns(msgs)
    text, tower = build_prompt(turns[-1][1], proc, history=turns[:-1], n_images=0)
    if as_rendered: tower = proc.text_tower_prompt([(r, images_to_front(t)) for r, t in turns])
    return proc(text, images=[proc.training_image(i) for i in images] or None, prompts=tower)


def doors(proc, msgs, images) -> dict:
    "The same conversation through the doors a user takes."
    extra = {} if any(isinstance(m["content"], list) and any(p.get("type") == "image" for p in m["content"]) for m in msgs) \
        else {"images": images or None}
    rendered = proc.apply_chat_template(msgs, add_generation_prompt=True)
    return {"processor(text)": proc(rendered, images=images or None),
            "apply_chat_template": proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=True,
                                                            return_tensors="pt", **extra)}


def features(model, b):
    if "pixel_values" not in b: return None
    i2p = model._image_to_prompt(b["input_ids"], b["pixel_values"].shape[0])
    return model.image_features(b["pixel_values"], b["prompt_input_ids"], b["prompt_attention_mask"], i2p)


def greedy(model, b, n=NEW):
    out = model.generate(**b, max_new_tokens=n, do_sample=False)
    return out[:, b["input_ids"].shape[1]:]


def assert_same(model, want, got, what):
    for k in want:
        assert torch.equal(want[k], got[k]), f"{what}: {k} differs"
    with torch.no_grad():
        fw, fg = features(model, want), features(model, got)
        if fw is not None: assert (fw - fg).abs().max() <= TOL, what
        lw, lg = model(**want).logits[:, -1], model(**got).logits[:, -1]
        assert (lw - lg).abs().max() <= TOL, what
    assert torch.equal(greedy(model, want), greedy(model, got)), what


def test_every_door_gives_the_canonical_inputs_logits_and_tokens(toy):
    model, proc, run = toy
    a, b = images_of(run)
    for name, msgs in conversations(a, b).items():
        images = image_list(msgs, [a] if "<image>" in json.dumps([m["content"] for m in msgs if isinstance(m["content"], str)]) else [])
        for door, got in doors(proc, msgs, images).items():
            assert_same(model, canonical(proc, msgs, images, as_rendered=door == "processor(text)"), got, f"{name} via {door}")


def test_pipeline_chat_and_raw_text_give_the_canonical_tokens(toy):
    from transformers import pipeline
    model, proc, run = toy
    a, b = images_of(run)
    pipe = pipeline("image-text-to-text", model=str(run / "stage2" / "final"))
    for name, msgs in conversations(a, b).items():
        if any(isinstance(m["content"], str) and "<image>" in m["content"] for m in msgs): continue  # no image parts to hand over
        want = canonical(proc, msgs, image_list(msgs, []))
        ids = pipe(text=msgs, max_new_tokens=NEW, generate_kwargs={"do_sample": False}, return_tensors=True)[0]["generated_token_ids"]
        assert ids.tolist() == model.generate(**want, max_new_tokens=NEW, do_sample=False)[0].tolist(), name
    text = proc.apply_chat_template(conversations(a, b)["one turn"], add_generation_prompt=True)
    want = canonical(proc, conversations(a, b)["one turn"], [a])
    raw = pipe(images=[a], text=text, max_new_tokens=NEW, generate_kwargs={"do_sample": False}, return_tensors=True)[0]
    assert raw["generated_token_ids"].tolist() == model.generate(**want, max_new_tokens=NEW, do_sample=False)[0].tolist()
    with pytest.raises(TypeError, match="generation options go to model.generate"):
        pipe(images=[a], text=text, do_sample=False)


def test_batched_chat_templates_generate_what_each_conversation_gets_alone(toy):
    model, proc, run = toy
    a, b = images_of(run)
    convs = [c for c in conversations(a, b).values() if all(not isinstance(m["content"], str) or "<image>" not in m["content"] for m in c)]
    alone = [greedy(model, canonical(proc, c, image_list(c, [])))[0].tolist() for c in convs]
    stop = {proc.tokenizer.eos_token_id, proc.tokenizer.pad_token_id}
    cut = lambda t: t[:next((i for i, x in enumerate(t) if x in stop), len(t))]
    for side in ("right", "left"):
        batch = proc.apply_chat_template(convs, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt",
                                         processor_kwargs={"padding": True, "padding_side": side})
        got = greedy(model, batch)
        assert [cut(g) for g in got.tolist()] == [cut(w) for w in alone], side


def test_chat_turns_and_explain_pictures_read_what_the_model_read(toy):
    model, proc, run = toy
    a, _ = images_of(run)
    chat = Chat(model, proc, images=[a], max_new_tokens=NEW, temperature=0)
    chat.ask("How many shapes are there?")
    b = chat.inputs("Where is the red circle?")
    b.pop("question")
    chat.ask("Where is the red circle?")
    _, details = connector_details(model, proc, a, turns=chat.read_turns)
    i2p = torch.zeros(1, dtype=torch.long)
    own = model.image_features(b["pixel_values"], b["prompt_input_ids"], b["prompt_attention_mask"], i2p, return_details=True).details
    assert details.keys() == own.keys()
    for k in own: assert torch.equal(details[k], own[k]), k
    msgs = [{"role": "user", "content": [{"type": "image", "image": a}, {"type": "text", "text": "How many shapes are there?"}]},
            {"role": "assistant", "content": chat.turns[1][1]}, {"role": "user", "content": "Where is the red circle?"}]
    assert torch.equal(proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=True,
                                                return_tensors="pt")["input_ids"], b["input_ids"])


def test_heldout_accuracy_is_the_same_through_vmllm_eval_the_processor_and_the_pipeline(toy):
    from transformers import pipeline
    model, proc, run = toy
    rows = [json.loads(l) for l in (run / "data" / "heldout.jsonl").read_text().splitlines() if l.strip()]
    res = evaluate(model, proc, run / "data" / "heldout.jsonl", run / "data" / "images", answers_file=run / "doors.answers.jsonl",
                   progress=False)
    by_eval = {a["question_id"]: a["text"] for a in map(json.loads, (run / "doors.answers.jsonl").read_text().splitlines())}
    pipe = pipeline("image-text-to-text", model=str(run / "stage2" / "final"))
    ok_proc = ok_pipe = 0
    for r in rows:
        im = Image.open(run / "data" / "images" / r["image"])
        b = proc(f"USER: <image>\n{r['text']} ASSISTANT:", images=[im])  # the README's pattern, the toy's template
        reply = proc.decode(greedy(model, b, 16)[0], skip_special_tokens=True).strip()
        msgs = [{"role": "user", "content": [{"type": "image", "image": im}, {"type": "text", "text": r["text"]}]}]
        piped = pipe(text=msgs, max_new_tokens=16, generate_kwargs={"do_sample": False}, return_full_text=False)[0]["generated_text"]
        assert reply == by_eval[r["question_id"]] == piped.strip(), r["question_id"]
        ok_proc += bool(is_correct(r, reply))
        ok_pipe += normalize_answer(piped) == normalize_answer(r["answer"])
    assert ok_proc == ok_pipe == round(res["accuracy"] * res["scored"])


def test_trl_collator_labels_equal_vmllm_collator(toy):
    trl = pytest.importorskip("trl")
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling
    from vmllm.data import Collator, LlavaDataset
    model, proc, run = toy
    ds = LlavaDataset(run / "data" / "stage2.json", run / "data" / "images", proc, proc.template)
    rows = json.loads((run / "data" / "stage2.json").read_text())
    picked = [i for i, r in enumerate(rows) if sum(t["from"] == "gpt" for t in r["conversations"]) == 1][:6]
    as_trl = [dict(images=[Image.open(run / "data" / "images" / rows[i]["image"])] if rows[i].get("image") else [],
                   messages=[{"role": {"human": "user", "gpt": "assistant"}[t["from"]], "content": t["value"].replace("<image>", "").strip()}
                             for t in rows[i]["conversations"]]) for i in picked]
    got = DataCollatorForVisionLanguageModeling(proc, assistant_only_loss=True)(as_trl)
    samples = [j for j, (r, _) in enumerate(ds.samples or [(i, None) for i in range(len(ds))]) if r in picked]
    want = Collator(proc)([ds[j] for j in samples])
    for k in ("input_ids", "attention_mask", "labels", "pixel_values", "prompt_input_ids", "prompt_attention_mask"):
        assert torch.equal(got[k], want[k]), k


def test_reference_checkpoints_through_the_doors():
    "On checkpoints the reference code itself wrote: apply_chat_template and processor(text) give the reference's logits."
    from safetensors.torch import load_file
    goldens = Path(__file__).parent / "goldens"
    for family in ("clip", "siglip"):
        d = goldens / family
        gold = json.loads((d / "outputs.json").read_text())["rows"]
        tensors = load_file(d / "outputs.safetensors")
        rows = json.loads((d / "rows.json").read_text())
        model = VmllmForCausalLM.from_pretrained(d / "checkpoint", vision_tower=d / "tower")  # the user's door: transformers'
        proc = VmllmProcessor.from_pretrained(d / "checkpoint", vision_tower=d / "tower")
        for i, (row, g) in enumerate(zip(rows, gold)):
            msgs = [{"role": {"human": "user", "gpt": "assistant"}[t["from"]], "content": t["value"]} for t in row["conversations"]]
            images = [Image.open(d / "images" / n) for n in ([row["image"]] if isinstance(row.get("image"), str) else row.get("image") or [])]
            if images and not any("<image>" in t["value"] for t in row["conversations"]):
                msgs[0]["content"] = "<image>\n" + msgs[0]["content"]
            b = proc.apply_chat_template(msgs, tokenize=True, return_dict=True, return_tensors="pt", images=images)
            pos, ref = tensors[f"row{i}.logits_pos"].long(), tensors[f"row{i}.logits"]
            with torch.no_grad(): logits = model(**b).logits[0, pos, :ref.shape[1]]
            assert (logits - ref).abs().max() / ref.abs().max() <= 1e-5, (family, row["id"])
            raw_is_rendered = all(images_to_front(t["value"]) == t["value"] for t in row["conversations"] if t["from"] == "human")
            if raw_is_rendered:  # read back from the text, the prompt is the reference's when the image leads its turn
                text = proc.apply_chat_template(msgs)
                b2 = proc(text, images=images or None)
                assert torch.equal(b2["prompt_input_ids"], b["prompt_input_ids"]), (family, row["id"])
                with torch.no_grad(): assert (model(**b2).logits[0, pos, :ref.shape[1]] - ref).abs().max() / ref.abs().max() <= 1e-5


def test_trl_sft_trainer_trains_conversations_and_prompt_completion_rows(toy, tmp_path):
    pytest.importorskip("trl")
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer
    model, proc, run = toy
    rows = json.loads((run / "data" / "stage2.json").read_text())[:64]
    image = lambda r: [Image.open(run / "data" / "images" / r["image"])] if r.get("image") else []
    text = lambda t: t["value"].replace("<image>", "").strip()
    conv = [dict(images=image(r), messages=[{"role": "user" if t["from"] == "human" else "assistant", "content": text(t)}
                                            for t in r["conversations"]]) for r in rows if r.get("image")]
    pc = [dict(images=c["images"], prompt=c["messages"][:1], completion=c["messages"][1:2]) for c in conv]
    for data, only in ((conv, dict(assistant_only_loss=True)), (pc, {})):
        args = SFTConfig(output_dir=str(tmp_path / "trl"), max_steps=6, per_device_train_batch_size=8, learning_rate=1e-4,
                         report_to=[], logging_steps=1, save_strategy="no", use_cpu=True, bf16=False, **only)
        trainer = SFTTrainer(model=copy.deepcopy(model), args=args, train_dataset=Dataset.from_list(data), processing_class=proc)
        trainer.train()
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        assert len(losses) == 6 and all(l == l for l in losses), losses
