"""Shared test helpers."""
import contextlib, shutil, socket, subprocess, sys, time
import pytest
from PIL import Image
from vmllm.model import tiny_vmllm


def tiny_checkpoint(folder, colour: str):
    "A saved tiny vmllm model (`folder/model`) and a picture of one colour (`folder/<colour>.png`); returns `folder`."
    model, proc = tiny_vmllm()
    model.save_pretrained(folder / "model"); proc.save_pretrained(folder / "model")
    Image.new("RGB", (40, 30), colour).save(folder / f"{colour}.png")
    return folder


def free_port() -> int:
    "A TCP port free on 127.0.0.1 just now."
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def web_server(model_dir, *options: str):
    "`vmllm_web --model model_dir *options` on a free port of 127.0.0.1, once it accepts connections: yields (url, port)."
    port = free_port()
    cmd = [shutil.which("vmllm_web")] if shutil.which("vmllm_web") else [sys.executable, "-m", "vmllm.web"]
    proc = subprocess.Popen(cmd + ["--model", str(model_dir), "--port", str(port), *options],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for _ in range(240):
            if proc.poll() is not None: pytest.fail(f"vmllm_web exited: {proc.stdout.read()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5): break
            except OSError: time.sleep(0.5)
        else: pytest.fail("vmllm_web did not start in 120 s")
        yield f"http://127.0.0.1:{port}/", port
    finally:
        proc.terminate()
        try: proc.wait(10)
        except subprocess.TimeoutExpired: proc.kill()


SHORT_TOY = ("toy_data.n_stage1=600 toy_data.n_stage2=3000 toy_data.n_heldout=60 stage0.steps=300 stage0_llm.steps=60 "
             "stage1.epochs=1.0 stage2.epochs=1.0")


def trained_toy(folder, sets: str = SHORT_TOY):
    "A shortened run of the toy preset as shipped (its templates, prompt rule and data kinds), in `folder`; returns `folder`."
    import os, subprocess, sys
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "vmllm.recipes", "--preset", "toy", "--output_dir", str(folder), "--set", sets],
                       capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return folder


@pytest.fixture(scope="session")
def toy_run(tmp_path_factory):
    "One shortened toy run for the whole test session, in `<tmp>/runs/toy` as `vmllm_train --preset toy` lays it out."
    return trained_toy(tmp_path_factory.mktemp("toy") / "runs" / "toy")
