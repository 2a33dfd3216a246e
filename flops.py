"""FLOPs: what a training token costs, and what the machine can do. MFU (model FLOPs utilisation) is their ratio:

    mfu = flops_per_token(config, seq_len) * tokens_per_second / (peak_flops(device) * processes)

The count is the model's, not the kernels': 6 FLOPs per matmul weight per token (2 forward, 4 backward;
Kaplan et al., 2020) plus attention's two matmuls over the sequence (PaLM's count, Chowdhery et al., 2022,
appendix B), with no discount for the causal or document mask, as nanoGPT and torchtitan count it. A
recomputation, padding or a masked-out score costs real time and no model FLOPs, so it shows as lower MFU.
"""
import time

import torch

from model import Transformer

# bf16 dense tensor-core peaks (FLOP/s, no sparsity) of cards the reference experiments and their readers use,
# from the vendors' data sheets; a card not listed needs peak_flops=... (looked up by substring of its name)
GPU_PEAK_FLOPS = {
    "H200": 989e12, "H100": 989e12,  # SXM; the PCIe H100 is 756e12
    "A100": 312e12, "A10G": 70e12, "A10": 125e12, "L40S": 362e12, "L4": 121e12,
    "RTX 4090": 165e12, "RTX 3090": 71e12, "V100": 125e12,
}


def matmul_weights(config):
    """Weights that take part in a matmul (or a convolution) for every token: every projection, the MLP, Canon's
    convolutions and the output projection; not the embedding lookup, the norms or ALiBi's slopes."""
    with torch.device("meta"):  # shapes only
        model = Transformer(config)
    count = sum(p.numel() for name, p in model.named_parameters() if p.ndim >= 2 and name != "embed_tokens.weight")
    if config.tie_embeddings:  # the shared matrix is listed once, as the embedding, but is the output projection too
        count += model.lm_head.weight.numel()
    return count


def flops_per_token(config, seq_len):
    """Training FLOPs (forward and backward) per token at this sequence length."""
    attention = 12 * config.n_layers * config.n_heads * config.head_dim * seq_len  # QK^T and AV: 2 x 2 x 3
    return 6 * matmul_weights(config) + attention


def measured_cpu_peak(size=1024, seconds=0.3):
    """The fp32 matmul rate of this CPU with torch's current threads: the best of repeated size^3 matmuls."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm-up: thread pool and caches
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        a @ b
        best = max(best, 2 * size**3 / (time.perf_counter() - start))
    return best


def peak_flops(device):
    """(FLOP/s, where the figure comes from) of one device: a CUDA card's bf16 peak from GPU_PEAK_FLOPS, or this
    CPU's measured fp32 matmul rate. None for an unknown card."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for card, peak in GPU_PEAK_FLOPS.items():
            if card in name:
                return peak, f"{card} bf16 dense peak"
        return None, f"unknown card {name!r}"
    return measured_cpu_peak(), "measured fp32 matmul"
