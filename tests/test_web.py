"""`vmllm_web` end to end: a launched server on 127.0.0.1, asked through `gradio_client`."""
import shutil, socket, subprocess, sys, time
import pytest

pytest.importorskip("gradio", reason="the web demo needs gradio (pip install 'vmllm[demo]')")
gradio_client = pytest.importorskip("gradio_client", reason="the web demo test needs gradio_client")
from vmllm.chat import Chat
from vmllm.model import load_pretrained
from conftest import tiny_checkpoint

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]

def text_of(content) -> str:
    "A chatbot message's text (gradio gives a string or a list of parts)."
    return content if isinstance(content, str) else "".join(p["text"] for p in content if p.get("type") == "text")

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    d = tiny_checkpoint(tmp_path_factory.mktemp("web"), "purple")
    port = free_port()
    cmd = [shutil.which("vmllm_web")] if shutil.which("vmllm_web") else [sys.executable, "-m", "vmllm.web"]
    proc_ = subprocess.Popen(cmd + ["--model", str(d / "model"), "--port", str(port), "--max_new_tokens", "8"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    for _ in range(240):
        if proc_.poll() is not None: pytest.fail(f"vmllm_web exited: {proc_.stdout.read()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5): break
        except OSError: time.sleep(0.5)
    else: pytest.fail("vmllm_web did not start in 120 s")
    yield d, url, port
    proc_.terminate()
    try: proc_.wait(10)
    except subprocess.TimeoutExpired: proc_.kill()

def test_answers_equal_chat_and_come_with_pictures(server):
    d, url, _ = server
    client = gradio_client.Client(url, verbose=False)
    model, proc = load_pretrained(d / "model")
    chat = Chat(model, proc, images=[d / "purple.png"], max_new_tokens=8, temperature=0)
    history = []
    for q in ("What is it?", "And its colour?"):
        history, layers, gates, box = client.predict(q, gradio_client.handle_file(str(d / "purple.png")), history, 0,
                                                     api_name="/ask")
        assert history[-1]["role"] == "assistant"
        assert text_of(history[-1]["content"]) == chat.ask(q)  # same greedy reply, second turn included
        assert layers and gates and box == ""
    assert len(history) == 4

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
