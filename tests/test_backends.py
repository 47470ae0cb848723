"""Training at scale, on two CPU processes: DDP (torchrun), DeepSpeed ZeRO-2 and ZeRO-3 and FSDP2 (through
`accelerate launch` with the shipped configs) train a toy stage with gradient accumulation to the same per-step losses
as one process with the same global batch (also as two nodes of one process each, launched apart), and save a final
model that reloads with the same logits; a run killed
after a checkpoint resumes to the same weights, and DeepSpeed's own checkpoint files refuse a planted pickle.
DeepSpeed is an optional extra (`pip install -e ".[deepspeed]"`); without it its cases skip. Own CI step:
`pytest -m backends tests`."""
import importlib.util, json, os, shutil, socket, subprocess, sys
from pathlib import Path

import pytest, torch

pytestmark = pytest.mark.backends

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "accelerate"
TINY = ("toy_data.n_stage1=48 toy_data.n_stage2=48 toy_data.n_heldout=4 toy_data.image_size=32 model.image_size=32 "
        "model.encoder_layers=2 model.llm_layers=2 model.llm_width=64 model.encoder_width=48 stage0.steps=2 stage0_llm.steps=2 "
        "stage1.max_steps=3 stage1.global_batch=16 stage1.lr=3e-3 stage1.save_every=0 "
        "stage2.max_steps=3 stage2.global_batch=16 stage2.save_every=0")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
no_deepspeed = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason='DeepSpeed not installed: pip install -e ".[deepspeed]"')


def train(args, out, per_process_batch, extra=""):
    r = subprocess.run([*args, "--preset", "toy", "--output_dir", str(out), "--set",
                        f"{TINY} stage1.batch_size={per_process_batch} stage2.batch_size={per_process_batch} {extra}"],
                       capture_output=True, text=True, timeout=900, env=ENV)
    assert r.returncode == 0, r.stderr[-4000:]
    return out


def launch(config):
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / config), "--num_processes", "2",
            "--mixed_precision", "no", shutil.which("vmllm_train")]


def losses(out, stage):
    return [h["loss"] for h in json.loads((out / f"stage{stage}" / "history.json").read_text())]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    "One process, 8 rows per micro-batch, 2 micro-batches per step (global batch 16): stage 1, then stage 2 from it."
    d = tmp_path_factory.mktemp("one")
    train(["vmllm_train", "--stages", "0,1"], d / "s1", 8)
    train(["vmllm_train", "--stages", "2", "--init", str(d / "s1" / "stage1" / "final")], d / "s2", 8)
    return d


def logits_of(final: Path):
    from PIL import Image
    from vmllm.model import VmllmForCausalLM
    from vmllm.processor import VmllmProcessor
    model, proc = VmllmForCausalLM.from_pretrained(final), VmllmProcessor.from_pretrained(final)
    b = proc("USER: <image>\nWhat colour? ASSISTANT:", images=[Image.new("RGB", (40, 30), "red")])
    with torch.no_grad(): return model(**b).logits


BACKENDS = [pytest.param([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", shutil.which("vmllm_train")], id="ddp"),
            pytest.param(launch("zero2.yaml"), id="zero2", marks=no_deepspeed),
            pytest.param(launch("zero3.yaml"), id="zero3", marks=no_deepspeed),
            pytest.param(launch("fsdp.yaml"), id="fsdp2")]


@pytest.mark.parametrize("command", BACKENDS)
def test_two_processes_train_like_one(command, reference, tmp_path):
    # 4 rows per process and micro-batch, 2 micro-batches per step: the same global batches as the reference
    s1 = train(command + ["--stages", "0,1"], tmp_path / "s1", 4)
    s2 = train(command + ["--stages", "2", "--init", str(reference / "s1" / "stage1" / "final")], tmp_path / "s2", 4)
    for out, ref, stage in ((s1, reference / "s1", 1), (s2, reference / "s2", 2)):
        ours, theirs = losses(out, stage), losses(ref, stage)
        assert len(ours) == len(theirs) == 3
        assert all(abs(a - b) <= 1e-4 * abs(b) for a, b in zip(ours, theirs)), (stage, ours, theirs)
    a, b = logits_of(s2 / "stage2" / "final"), logits_of(reference / "s2" / "stage2" / "final")
    assert (a - b).abs().max() <= 1e-3 * b.abs().max(), (a - b).abs().max()  # the gathered final model reloads


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_command(kind, rank, port):
    "One node of a two-node job on this machine (one process per node, gloo): what each node of a cluster runs."
    if kind == "ddp":
        return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(rank), "--nproc_per_node", "1",
                "--master_addr", "127.0.0.1", "--master_port", str(port), shutil.which("vmllm_train")]
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / "fsdp.yaml"), "--num_machines", "2",
            "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1", "--main_process_port", str(port),
            "--num_processes", "2", "--mixed_precision", "no", shutil.which("vmllm_train")]


@pytest.mark.parametrize("kind", ["ddp", "fsdp2"])
def test_two_nodes_train_like_one_process(kind, reference, tmp_path):
    "Two nodes of one process each (torchrun for DDP, accelerate for FSDP2), started apart: one process's losses and model."
    port, out = free_port(), tmp_path / "run"
    nodes = [subprocess.Popen(node_command(kind, rank, port) + ["--preset", "toy", "--stages", "0,1", "--output_dir", str(out),
                                                                 "--set", f"{TINY} stage1.batch_size=4 stage2.batch_size=4"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV) for rank in (0, 1)]
    logs = [node.communicate(timeout=900) for node in nodes]
    for node, (stdout, stderr) in zip(nodes, logs): assert node.returncode == 0, stderr[-3000:]
    assert f"backend: {'ddp' if kind == 'ddp' else 'fsdp'} on 2 process(es)" in logs[0][0], logs[0][0][-2000:]
    ours, theirs = losses(out, 1), losses(reference / "s1", 1)
    assert len(ours) == len(theirs) == 3
    assert all(abs(a - b) <= 1e-4 * abs(b) for a, b in zip(ours, theirs)), (ours, theirs)
    a, b = logits_of(out / "stage1" / "final"), logits_of(reference / "s1" / "stage1" / "final")
    assert (a - b).abs().max() <= 1e-3 * b.abs().max(), (a - b).abs().max()


@no_deepspeed
def test_deepspeed_refuses_two_stages_in_one_launch(tmp_path):
    r = subprocess.run(launch("zero2.yaml") + ["--preset", "toy", "--output_dir", str(tmp_path / "x"), "--set", TINY],
                       capture_output=True, text=True, timeout=600, env=ENV)
    assert r.returncode != 0 and "run one training stage per launch" in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "x").exists()


def test_fsdp1_on_cpus_says_what_to_use(tmp_path):
    cfg = tmp_path / "fsdp1.yaml"
    cfg.write_text((CONFIGS / "fsdp.yaml").read_text().replace("fsdp_version: 2", "fsdp_version: 1"))
    r = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(cfg), "--num_processes", "2",
                        "--mixed_precision", "no", shutil.which("vmllm_train"), "--preset", "toy", "--stages", "1",
                        "--output_dir", str(tmp_path / "x"), "--set", TINY], capture_output=True, text=True, timeout=600, env=ENV)
    assert r.returncode != 0 and "on CPUs only FSDP2 runs" in r.stderr, r.stderr[-2000:]


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", shutil.which("vmllm_train")]

@pytest.mark.parametrize("config", [pytest.param("ddp", id="ddp"), pytest.param("zero2.yaml", marks=no_deepspeed),
                                    pytest.param("zero3.yaml", marks=no_deepspeed), pytest.param("fsdp.yaml")])
def test_two_process_run_resumes_exactly_and_safely(config, tmp_path):
    "Killed after a checkpoint, resumed: the same weights as a run never interrupted; a planted pickle is refused, not run."
    from safetensors.torch import load_file
    sets = TINY.replace("stage1.max_steps=3", "stage1.max_steps=4").replace("stage1.save_every=0", "stage1.save_every=2")
    env = {**ENV, "MKL_CBWR": "COMPATIBLE"}  # reproducible BLAS across processes (see tests/test_faults.py)
    command = TORCHRUN if config == "ddp" else launch(config)
    def go(out, *extra, kill=None):
        e = {**env, "VMLLM_KILL_AT": kill} if kill else env
        return subprocess.run(command + ["--preset", "toy", "--stages", "0,1", "--output_dir", str(out), "--set",
                                         f"{sets} stage1.batch_size=4", *extra], capture_output=True, text=True, timeout=900, env=e)
    assert go(tmp_path / "straight").returncode == 0
    assert go(tmp_path / "run", kill="stage1:step3").returncode != 0
    assert (tmp_path / "run" / "stage1" / "checkpoint-2" / "trainer_state.json").is_file()
    if config.startswith("zero"):  # DeepSpeed's own shard files: read with weights_only=True
        evil = shutil.copytree(tmp_path / "run", tmp_path / "evil")
        marker = tmp_path / "pwned"
        class Exploit:
            def __reduce__(self): return (os.system, (f"touch {marker}",))
        import pickle
        for f in (evil / "stage1" / "checkpoint-2" / "deepspeed").glob("*optim_states.pt"): f.write_bytes(pickle.dumps(Exploit()))
        r = go(evil, "--resume")
        assert r.returncode != 0 and not marker.exists(), r.stderr[-2000:]
        assert "Weights only load failed" in r.stderr or "Unsupported global" in r.stderr, r.stderr[-2000:]
    r = go(tmp_path / "run", "--resume")
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = (load_file(tmp_path / d / "stage1" / "final" / "model.safetensors") for d in ("straight", "run"))
    assert all((a[k] == b[k]).all() for k in a), config



@pytest.mark.parametrize("config", [pytest.param("ddp", id="ddp"), pytest.param("zero2.yaml", marks=no_deepspeed)])
def test_two_processes_skip_the_same_broken_checkpoint(config, tmp_path):
    "The newest checkpoint's RNG file of process 1 is broken, which only process 1 reads: both skip it and resume from the older one."
    from safetensors.torch import load_file
    sets = TINY.replace("stage1.max_steps=3", "stage1.max_steps=4").replace("stage1.save_every=0", "stage1.save_every=1")
    env = {**ENV, "MKL_CBWR": "COMPATIBLE"}
    command = TORCHRUN if config == "ddp" else launch(config)
    def go(out, *extra, kill=None):
        return subprocess.run(command + ["--preset", "toy", "--stages", "0,1", "--output_dir", str(out), "--set",
                                         f"{sets} stage1.batch_size=4", *extra], capture_output=True, text=True, timeout=900,
                              env={**env, "VMLLM_KILL_AT": kill} if kill else env)
    assert go(tmp_path / "straight").returncode == 0
    assert go(tmp_path / "run", kill="stage1:step3").returncode != 0  # checkpoints at steps 2 and 3
    (tmp_path / "run" / "stage1" / "checkpoint-3" / "rng-1.json").write_text(json.dumps({"torch": []}))
    r = go(tmp_path / "run", "--resume")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "skipping checkpoint-3, it is broken: loading it failed: KeyError" in r.stdout, r.stdout[-3000:]
    assert "checkpoint-2 at step 2" in r.stdout, r.stdout[-3000:]
    a, b = (load_file(tmp_path / d / "stage1" / "final" / "model.safetensors") for d in ("straight", "run"))
    assert all((a[k] == b[k]).all() for k in a), config

def test_gpu_check_runs_its_code_path_on_tiny_models():
    "The prepared GPU check (benchmarks/gpu_check.py) on tiny models on the CPU: every part runs and reports."
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--tiny", "--device", "cpu"],
                       capture_output=True, text=True, timeout=600, env=ENV)
    assert r.returncode == 0, r.stderr[-3000:]
    for line in ("vmllm      stage-2 step", "mlp2x_gelu stage-2 step", "enhancement clip-b32: forward+backward"):
        assert line in r.stdout, r.stdout
    assert ("ZeRO-3: one step" in r.stdout and "saved model reloads" in r.stdout) or "DeepSpeed is not installed" in r.stdout, r.stdout
    assert "fsdp2 (stage 2, backend: single on 1 process(es) (cpu)" in r.stdout and "FAILED" not in r.stdout, r.stdout


@pytest.mark.parametrize("config", [pytest.param("zero3.yaml", marks=no_deepspeed), pytest.param("fsdp.yaml")])
def test_lora_sharded_trains_like_one_process(config, reference, tmp_path):
    "Stage 2 with LoRA adapters: per-step losses as one process; the adapters are merged into the gathered final model."
    init = str(reference / "s1" / "stage1" / "final")
    lora = "stage2.lora_r=4 stage2.lora_dropout=0"  # dropout masks depend on how rows are split over processes
    one = train(["vmllm_train", "--stages", "2", "--init", init], tmp_path / "one", 8, lora)
    two = train(launch(config) + ["--stages", "2", "--init", init], tmp_path / "two", 4, lora)
    a, b = losses(two, 2), losses(one, 2)
    assert all(abs(x - y) <= 1e-4 * abs(y) for x, y in zip(a, b)), (a, b)
    from safetensors.torch import load_file
    names = load_file(two / "stage2" / "final" / "model.safetensors").keys()
    assert not any("lora" in n or "base_layer" in n for n in names)
    la, lb = logits_of(two / "stage2" / "final"), logits_of(one / "stage2" / "final")
    assert (la - lb).abs().max() <= 1e-3 * lb.abs().max()


@no_deepspeed
def test_deepspeed_file_that_disagrees_is_refused_before_loading(tmp_path):
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"train_micro_batch_size_per_gpu": 3, "gradient_accumulation_steps": "auto",
                              "zero_optimization": {"stage": 2}}))
    cfg = tmp_path / "accelerate.yaml"
    cfg.write_text(f"compute_environment: LOCAL_MACHINE\ndistributed_type: DEEPSPEED\ndeepspeed_config:\n  deepspeed_config_file: {ds}\n"
                   "num_machines: 1\nnum_processes: 2\nmachine_rank: 0\nmain_training_function: main\n")
    r = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(cfg), shutil.which("vmllm_train"),
                        "--preset", "toy", "--stages", "1", "--output_dir", str(tmp_path / "x"), "--set", TINY + " stage1.batch_size=4"],
                       capture_output=True, text=True, timeout=600, env=ENV)
    assert r.returncode != 0 and "sets train_micro_batch_size_per_gpu=3 but stage 1 needs 4" in r.stderr, r.stderr[-3000:]
    assert not (tmp_path / "x").exists()
