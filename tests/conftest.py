"""Shared test helpers."""
from PIL import Image
from vmllm.model import tiny_vmllm


def tiny_checkpoint(folder, colour: str):
    "A saved tiny vmllm model (`folder/model`) and a picture of one colour (`folder/<colour>.png`); returns `folder`."
    model, proc = tiny_vmllm()
    model.save_pretrained(folder / "model"); proc.save_pretrained(folder / "model")
    Image.new("RGB", (40, 30), colour).save(folder / f"{colour}.png")
    return folder
