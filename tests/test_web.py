"""`vmllm_web` end to end: a launched server on 127.0.0.1, asked through `gradio_client`."""
import json, socket, subprocess, sys, urllib.request
import pytest
from PIL import Image

pytest.importorskip("gradio", reason="the web demo needs gradio (pip install 'vmllm[demo]')")
gradio_client = pytest.importorskip("gradio_client", reason="the web demo test needs gradio_client")
from vmllm.chat import Chat
from vmllm.model import VmllmForCausalLM
from vmllm.processor import VmllmProcessor
from conftest import tiny_checkpoint, web_server

def text_of(content) -> str:
    "A chatbot message's text (gradio gives a string or a list of parts)."
    return content if isinstance(content, str) else "".join(p["text"] for p in content if p.get("type") == "text")

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    d = tiny_checkpoint(tmp_path_factory.mktemp("web"), "purple")
    with web_server(d / "model", "--max_new_tokens", "8", "--max_image_side", "64") as (url, port):
        yield d, url, port

def test_answers_equal_chat_and_come_with_pictures(server):
    d, url, _ = server
    client = gradio_client.Client(url, verbose=False)
    model, proc = VmllmForCausalLM.from_pretrained(d / "model"), VmllmProcessor.from_pretrained(d / "model")
    chat = Chat(model, proc, images=[d / "purple.png"], max_new_tokens=8, temperature=0)
    for q in ("What is it?", "And its colour?"):
        history, layers, gates, box = client.predict(q, gradio_client.handle_file(str(d / "purple.png")), 0, api_name="/ask")
        assert history[-1]["role"] == "assistant"
        assert text_of(history[-1]["content"]) == chat.ask(q)  # same greedy reply, second turn included
        assert layers and gates and box == ""
    assert len(history) == 4

def ask_once(url, question, upload):
    "The chat after one question on a fresh session."
    history, layers, gates, _ = gradio_client.Client(url, verbose=False).predict(question, upload, 0, api_name="/ask")
    return [text_of(m["content"]) for m in history], layers, gates

def test_mistakes_get_a_note_in_the_chat(server, tmp_path):
    d, url, _ = server
    purple = gradio_client.handle_file(str(d / "purple.png"))
    assert ask_once(url, "What is it?", None)[0] == ["What is it?", "⚠ No image yet: upload one (the box on the left), then ask again."]
    assert ask_once(url, " ", purple)[0] == ["⚠ Type a question first, then press Enter or Send."]
    (tmp_path / "notes.txt").write_text("not a picture")
    texts, layers, gates = ask_once(url, "What is it?", gradio_client.handle_file(str(tmp_path / "notes.txt")))
    assert texts == ["What is it?", "⚠ `notes.txt` is not an image this page can read (UnidentifiedImageError): "
                                    "upload a PNG, JPEG or WebP file."]
    assert layers is None and gates is None

def test_oversized_image_is_downscaled_saying_so(server, tmp_path):
    d, url, _ = server
    Image.new("RGB", (200, 100), "orange").save(tmp_path / "wide.png")
    texts, layers, gates = ask_once(url, "What is it?", gradio_client.handle_file(str(tmp_path / "wide.png")))
    assert texts[1] == "⚠ `wide.png` is 200×100 px, over the limit of 64 px a side: downscaled to 64×32 px."
    small = Image.open(tmp_path / "wide.png").convert("RGB")
    small.thumbnail((64, 64), Image.LANCZOS)
    model, proc = VmllmForCausalLM.from_pretrained(d / "model"), VmllmProcessor.from_pretrained(d / "model")
    assert texts[2] == Chat(model, proc, images=[small], max_new_tokens=8, temperature=0).ask("What is it?")
    assert layers and gates

def test_page_names_model_connector_and_template(server):
    d, url, _ = server
    config = json.loads(urllib.request.urlopen(url + "config", timeout=30).read())
    texts = [c["props"].get("value") or "" for c in config["components"] if c["type"] == "markdown"]
    assert any("**model** `model`" in t and "**connector** `vmllm`" in t and "**template** `vicuna_v1`" in t
               and "over 64 px a side" in t for t in texts), texts

def outward_ip() -> str | None:
    "This machine's address on its default route (no packet is sent), or None."
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9)); ip = s.getsockname()[0]
    except OSError: return None
    return None if ip.startswith("127.") else ip

def test_bound_to_localhost_only(server):
    _, _, port = server
    ip = outward_ip()
    if ip is None: pytest.skip("no non-loopback address to check the binding against")
    with pytest.raises(OSError), socket.create_connection((ip, port), timeout=1): pass

def test_missing_checkpoint_is_a_clear_error(tmp_path):
    r = subprocess.run([sys.executable, "-m", "vmllm.web", "--model", str(tmp_path / "nope")], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode != 0 and "vmllm_web:" in r.stderr and "not found" in r.stderr

def test_pictures_cleared_as_a_new_answer_starts(server):
    d, url, _ = server
    client = gradio_client.Client(url, verbose=False)
    purple = gradio_client.handle_file(str(d / "purple.png"))
    _, layers, gates, _ = client.predict("What is it?", purple, 0, api_name="/ask")
    assert layers and gates
    job = client.submit("And now?", purple, 0, api_name="/ask")
    job.result()
    first, *streamed, last = job.outputs()
    assert first[1] is None and first[2] is None                       # the last answer's pictures go at once
    assert all(l == g == {"__type__": "update"} for _, l, g, _ in streamed)  # left alone while the reply streams
    assert last[1].endswith(".png") and last[2].endswith(".png")       # this answer's own, sharp (not webp)

@pytest.mark.parametrize("option, said", [(["--conv_mode", "chatml"], "unknown --conv_mode 'chatml': use one of"),
                                          (["--max_image_side", "0"], "--max_image_side must be a positive number of pixels")])
def test_bad_option_is_a_clear_error(tmp_path, option, said):
    r = subprocess.run([sys.executable, "-m", "vmllm.web", "--model", str(tmp_path), *option], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("vmllm_web: ") and said in r.stderr, r.stderr
