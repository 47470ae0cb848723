"""End-to-end checks of the console scripts, run as a user runs them (a fresh process)."""
import subprocess, sys

def run(*args):
    return subprocess.run(list(args), capture_output=True, text=True, timeout=300)

def test_demo_learns_and_says_the_caption():
    r = run("vmllm_demo", "--family", "siglip", "--steps", "30")
    assert r.returncode == 0, r.stderr
    assert "generated" in r.stdout and "'a red circle'" in r.stdout, r.stdout

def test_demo_rejects_unknown_connector():
    r = run("vmllm_demo", "--connector", "qformer")
    assert r.returncode != 0
    assert "unknown mm_projector_type 'qformer'" in r.stderr
