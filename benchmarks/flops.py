"""Analytic FLOPs of one vmllm training step, part by part, read from the model's own sizes.

Conventions (those of torchtitan and llm-foundry, applied to each part of a vmllm model):
- a matrix product of an (m, k) by a (k, n) costs 2mkn in the forward pass, and in the backward pass 2mkn again for
  each operand that needs a gradient (an activation that reaches a trained weight, or a trained weight). So a trained
  linear layer costs 6 FLOPs per weight and token, a frozen one that passes gradients to its input (the LLM in stage 1)
  4, a frozen one under `no_grad` (the towers) 2;
- attention's two products (QK^T and AV) are counted in full, 4·T²·H per layer forward for T tokens of width H, and
  twice that backward (12·L·H·T per token over a step), as FlopCounterMode and the usual MFU formulas count them;
- the embedding table is a lookup (no FLOPs); norms, activations, softmax and vector-by-vector products are left out;
- model FLOPs do not count recomputation; hardware FLOPs add one forward of every recomputed decoder layer;
- the text tower reads each sample's prompt (its own length), not the image slots.
Only the connector's fast form (enhance_impl='fast') is counted for the vMLLM connector.
"""
from __future__ import annotations
from dataclasses import dataclass, field


@dataclass
class StepFlops:
    "FLOPs of one step by part: forward, backward, and work that is not model FLOPs (the recomputed forward)."
    parts: dict = field(default_factory=dict)  # name -> [forward, backward, recomputed]

    def add(self, part: str, fwd: float = 0.0, bwd: float = 0.0, recompute: float = 0.0):
        row = self.parts.setdefault(part, [0.0, 0.0, 0.0])
        row[0] += fwd
        row[1] += bwd
        row[2] += recompute

    def matmul(self, part: str, m: float, k: float, n: float, grad_a: bool, grad_b: bool, recompute: float = 0.0):
        """One (m, k) @ (k, n) product; its backward computes the gradient of each operand that needs one; `recompute`: the
        share of it run again in the backward pass (1 or True: all, 0.5: every other layer)."""
        f = 2.0 * m * k * n
        self.add(part, f, f * (grad_a + grad_b), f * float(recompute))

    @property
    def model(self) -> float: return sum(f + b for f, b, _ in self.parts.values())
    @property
    def hardware(self) -> float: return self.model + sum(r for *_, r in self.parts.values())

    def table(self) -> str:
        total = self.model
        lines = [f"{'part':24s} {'forward':>10s} {'backward':>10s} {'not model':>10s} {'share':>6s}"]
        for k, (f, b, r) in self.parts.items():
            lines.append(f"{k:24s} {f:10.3e} {b:10.3e} {r:10.3e} {(f + b) / total:6.1%}")
        lines.append(f"{'model FLOPs':24s} {total:10.3e}   hardware FLOPs (with recomputation) {self.hardware:10.3e}")
        return "\n".join(lines)


def linear_weights(module) -> int:
    "Weights of the linear layers under `module` (biases and norms left out)."
    import torch
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, torch.nn.Linear))


def _attn_width(cfg) -> int:
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return cfg.num_attention_heads * head_dim


def add_llm(fl: StepFlops, lm, lengths: list, head_tokens: int, trained: bool, recompute: float):
    """The causal LM on samples of `lengths` tokens (real tokens: padding is not model work); its LM head on
    `head_tokens` positions. `trained`: stage 2 (weight gradients); otherwise stage 1 (input gradients only).
    `recompute`: the share of decoder layers recomputed in the backward pass."""
    cfg = lm.config
    layers = lm.model.layers
    w, L, H = linear_weights(layers), len(layers), _attn_width(cfg)
    tokens, squares = sum(lengths), sum(t * t for t in lengths)
    fl.matmul("LLM linear layers", tokens, w, 1, True, trained, recompute)
    for _ in range(2):  # QK^T and AV of every layer: both operands are activations that need gradients
        fl.matmul("LLM attention", L * squares, H, 1, True, True, recompute)
    head = lm.get_output_embeddings()
    fl.matmul("LM head", head_tokens, head.weight.numel(), 1, True, trained)


def _tower_layers(fl: StepFlops, part: str, encoder_layers, width: int, lengths: list):
    "A frozen transformer tower under no_grad: forward only."
    w = linear_weights(encoder_layers)
    fl.matmul(part, sum(lengths), w, 1, False, False)
    for _ in range(2):
        fl.matmul(part, len(encoder_layers) * sum(t * t for t in lengths), width, 1, False, False)


def add_vision(fl: StepFlops, tower, n_images: int):
    "The vision tower's forward on `n_images` images (patch embedding and the kept layers)."
    vm = tower.model.vision_model
    conv = vm.embeddings.patch_embedding.weight
    n_patches = tower.num_patches
    fl.matmul("vision tower", n_images * n_patches, conv.numel(), 1, False, False)
    _tower_layers(fl, "vision tower", vm.encoder.layers, tower.vision_width, [n_patches + tower.rule.has_cls] * n_images)


def add_text(fl: StepFlops, tower, prompt_lengths: list):
    "The text tower's forward on each sample's prompt (once per sample), and its pooled-vector projections."
    tm = tower.model.text_model
    _tower_layers(fl, "text tower", tm.encoder.layers, tm.config.hidden_size, prompt_lengths)
    n = len(prompt_lengths)
    head = getattr(tm, "head", None)
    if head is not None: fl.matmul("text tower", n, head.weight.numel(), 1, False, False)
    source, n_proj = tower.text_global_rule
    if tower.rule.project:
        fl.matmul("text tower", n * n_proj, tower.model.text_projection.weight.numel(), 1, False, False)


def _layer_attention(fl: StepFlops, T: float, K: int, d: int):
    "The fast form's products for one stream of `T` tokens over `K` hidden states (the stack needs no gradient)."
    fl.matmul("connector", T, d, d, False, True)   # q = Wq m (m from the frozen tower)
    fl.matmul("connector", T, d, d, True, True)    # u = Wk^T q
    fl.matmul("connector", T * K, d, 1, False, True)  # scores: stack . u
    fl.matmul("connector", T * K, 1, d, True, False)  # mixed: a . stack
    fl.matmul("connector", T, d, d, True, True)    # Wv mixed


def _gate(fl: StepFlops, N: float, n: int, e: int, x_grad: bool, g_grad: bool):
    "One sigmoid gate (fast form) on `N` tokens of `n` images."
    fl.matmul("connector", n, e, e, g_grad, True)  # Wk g
    fl.matmul("connector", n, e, e, True, True)    # Wq^T (Wk g)
    fl.matmul("connector", N, e, 1, x_grad, True)  # scores x . w
    fl.matmul("connector", N, e, e, x_grad, True)  # Wv x


def add_connector(fl: StepFlops, model, n_images: int):
    "The connector on `n_images` images; it is trained in both stages."
    tower, conn = model.vision_tower, model.mm_projector
    N = tower.num_patches
    T = N + tower.rule.has_cls
    if model.config.mm_projector_type == "mlp2x_gelu":
        fl.matmul("connector", n_images * N, conn[0].weight.numel(), 1, False, True)
        fl.matmul("connector", n_images * N, conn[2].weight.numel(), 1, True, True)
        return
    if conn.impl != "fast": raise ValueError("the analytic count covers enhance_impl='fast' only")
    d, e, D = tower.vision_width, tower.embed_width, model.config.text_config.hidden_size
    K = tower.num_hidden_states  # SigLIP's tower has already lost its last layer: its shorter tuple is split
    grads = {}
    for name, k in (("low", K // 2), ("high", K - K // 2)):
        if name in conn.streams:
            _layer_attention(fl, n_images * T, k, d)
            grads[name] = True
    if "select" in conn.streams: grads["select"] = False
    for name, g in grads.items():
        if tower.rule.project:  # CLIP's visual projection (frozen) into the embedding space
            fl.matmul("connector", n_images * T, tower.model.visual_projection.weight.numel(), 1, g, False)
        if "text" in conn.gates: _gate(fl, n_images * N, n_images, e, g, False)
        if "image" in conn.gates: _gate(fl, n_images * N, n_images, e, g, g)
    fl.matmul("connector", n_images * N, len(grads) * e, D, True, True)
    fl.matmul("connector", n_images * N, D, D, True, True)


def step_flops(model, stage: int, lengths: list, n_images: int, prompt_lengths: list, head_tokens: int,
               recompute_llm: float) -> StepFlops:
    """FLOPs of one training step: samples of `lengths` real tokens (image slots included), `n_images` images, the
    text tower on `prompt_lengths` (empty if the connector reads no prompt), the LM head on `head_tokens` positions."""
    fl = StepFlops()
    if n_images:
        add_vision(fl, model.vision_tower, n_images)
        if prompt_lengths and model.mm_projector.needs_prompt: add_text(fl, model.vision_tower, prompt_lengths)
        add_connector(fl, model, n_images)
    add_llm(fl, model.language_model, lengths, head_tokens, stage == 2, recompute_llm)
    return fl
