"""A fresh Python process loads a vmllm checkpoint through transformers' Auto classes after `import vmllm` alone."""
import subprocess, sys

def test_import_vmllm_registers_the_auto_classes(tmp_path):
    from vmllm.model import tiny_vmllm
    model, proc = tiny_vmllm()
    model.save_pretrained(tmp_path); proc.save_pretrained(tmp_path)
    code = ("import sys, vmllm\n"
            "from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor\n"
            f"d = {str(tmp_path)!r}\n"
            "print(type(AutoProcessor.from_pretrained(d)).__name__, type(AutoModelForImageTextToText.from_pretrained(d)).__name__,"
            " type(AutoModelForCausalLM.from_pretrained(d)).__name__)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split()[-3:] == ["VmllmProcessor", "VmllmForCausalLM", "VmllmForCausalLM"]
