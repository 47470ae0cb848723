"""`vmllm_web` in a real browser: headless Chromium (Debian's `chromium`) driven by Playwright uploads an image, asks,
reads the answer and the page's notes, and saves a screenshot of each step under the test's tmp folder."""
import os, re, shutil
from pathlib import Path
import pytest
from PIL import Image

pytestmark = pytest.mark.browser
pytest.importorskip("gradio", reason="the web demo needs gradio (pip install 'vmllm[demo]')")
sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs playwright (pip install 'vmllm[browser]')")
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip("the browser test needs Chromium: apt-get install chromium (or set CHROMIUM to its path)", allow_module_level=True)
from vmllm.chat import Chat
from vmllm.model import VmllmForCausalLM
from vmllm.processor import VmllmProcessor
from conftest import tiny_checkpoint, web_server

WAIT_MS = 60_000  # the tiny model answers in well under a second; the page's first load is the slow part

@pytest.fixture(scope="module")
def site(tmp_path_factory):
    d = tiny_checkpoint(tmp_path_factory.mktemp("browser"), "purple")
    Image.new("RGB", (200, 100), "orange").save(d / "wide.png")
    (d / "broken.png").write_text("not a picture")
    with web_server(d / "model", "--max_new_tokens", "8", "--max_image_side", "64", "--temperature", "0") as (url, _):
        yield d, url

@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()

@pytest.fixture
def page(browser, site):
    pg = browser.new_page(viewport={"width": 1400, "height": 1000})
    pg.goto(site[1])
    sync_api.expect(pg.locator("#model-info")).to_be_visible(timeout=WAIT_MS)
    yield pg
    pg.close()

def shoot(page, folder: Path, name: str) -> Path:
    "A full-page screenshot, `folder/name.png`."
    path = folder / f"{name}.png"
    page.screenshot(path=path, full_page=True)
    print("screenshot:", path)
    return path

def ask(page, question: str, upload: Path | None = None):
    "Upload `upload` (if given), type `question` and press Send."
    if upload is not None:
        page.locator("#image input[type=file]").set_input_files(str(upload))
        sync_api.expect(page.locator("#image img")).to_have_count(1, timeout=WAIT_MS)  # uploaded and shown
    page.locator("#question textarea").fill(question)
    page.locator("#send").click()

def messages(page) -> list[str]:
    "The chat's messages as the page shows them, whitespace collapsed."
    return [re.sub(r"\s+", " ", t).strip() for t in page.locator("#conversation .message-row").all_inner_texts()]

def wait_for_message(page, text: str):
    sync_api.expect(page.locator("#conversation")).to_contain_text(text, timeout=WAIT_MS)

def test_page_names_the_model(page, tmp_path):
    info = page.locator("#model-info").inner_text()
    assert "model model" in re.sub(r"\s+", " ", info) and "connector vmllm" in info and "template vicuna_v1" in info, info
    assert "images over 64 px a side are downscaled" in info
    shoot(page, tmp_path, "empty_page")

def test_answer_in_the_browser_equals_chat(page, site, tmp_path):
    d, _ = site
    model, proc = VmllmForCausalLM.from_pretrained(d / "model"), VmllmProcessor.from_pretrained(d / "model")
    want = Chat(model, proc, images=[d / "purple.png"], max_new_tokens=8, temperature=0).ask("What is it?")
    ask(page, "What is it?", d / "purple.png")
    wait_for_message(page, re.sub(r"\s+", " ", want).strip())
    sync_api.expect(page.locator("#gates img")).to_be_visible(timeout=WAIT_MS)
    sync_api.expect(page.locator("#layers img")).to_be_visible(timeout=WAIT_MS)
    shoot(page, tmp_path, "answer")
    assert messages(page)[-2:] == ["What is it?", re.sub(r"\s+", " ", want).strip()]
    box = page.locator("#gates img").bounding_box()
    assert box["width"] > 300 and box["height"] > 300, box  # the gate grid is shown at a readable size

def test_no_image_is_said(page, tmp_path):
    ask(page, "What is it?")
    wait_for_message(page, "No image yet: upload one")
    shoot(page, tmp_path, "no_image")

def test_unreadable_upload_is_said(page, site, tmp_path):
    ask(page, "What is it?", site[0] / "broken.png")
    wait_for_message(page, "`broken.png` is not an image this page can read".replace("`", ""))
    shoot(page, tmp_path, "unreadable_upload")

def test_oversized_image_is_downscaled_saying_so(page, site, tmp_path):
    ask(page, "What is it?", site[0] / "wide.png")
    wait_for_message(page, "wide.png is 200×100 px, over the limit of 64 px a side: downscaled to 64×32 px.")
    sync_api.expect(page.locator("#gates img")).to_be_visible(timeout=WAIT_MS)
    shoot(page, tmp_path, "oversized")
