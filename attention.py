"""Which token attends to which, and how: packed documents, positions (RoPE, ALiBi) and the attention back-ends.

model.py's Attention module calls these; they hold no parameters. Top to bottom:
- document_ids, document_positions, document_mask, flex_block_mask: several documents packed into one row.
- rope_scaling_parameters, rope_frequencies, rope_tables, apply_rope: rotary position embeddings (Hugging Face's
  "rotate half" layout), rescaled for a longer context as some Llama folders are.
- alibi_slopes, key_minus_query: ALiBi's per-head slopes and the distances they scale.
- eager_attention (plain tensor maths, the reference), flex_attend (flex_attention: the GPU path). The third
  back-end, sdpa, is PyTorch's F.scaled_dot_product_attention, called in model.Attention.
"""
import functools

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

# -----------------------------------------------------------------------------------------------
# Packed sequences: a row of (B, T) token ids may hold several documents, each opened by the
# end-of-text token. Attention stays within a document and positions restart at each one.


def document_ids(idx, eot_id):
    """Document index of every token (B, T): [a a EOT b b EOT c] -> [0 0 1 1 1 2 2]. The EOT opens (is the
    BOS of) the next document, which sees exactly [EOT, its tokens], as when run alone after an EOT."""
    return torch.cumsum(idx == eot_id, dim=1)


def document_positions(doc_ids):
    """Position of every token within its own document (B, T) -> (B, T), 0 at each document start."""
    t = torch.arange(doc_ids.size(1), device=doc_ids.device).expand_as(doc_ids)
    is_start = torch.ones_like(doc_ids, dtype=torch.bool)
    is_start[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    latest_start = torch.where(is_start, t, 0).cummax(dim=1).values
    return t - latest_start


def document_mask(doc_ids):
    """Boolean attention mask (B, 1, T, T): query t may see key s when both are in one document and s <= t."""
    T = doc_ids.size(1)
    same_document = doc_ids[:, :, None] == doc_ids[:, None, :]
    causal = torch.ones(T, T, dtype=torch.bool, device=doc_ids.device).tril()
    return (same_document & causal).unsqueeze(1)  # the 1 broadcasts over heads


def flex_block_mask(doc_ids, T, device):
    """The same mask as flex_attention's BlockMask (T queries and keys); doc_ids None = causal only.
    Blocks of scores that are wholly masked are skipped, not computed. Where flex trains (compiles_flex), the mask
    is built by compiled code, whatever the layout (inside a compiled model, or eager under fsdp, pp and
    compile=False): eagerly it materialises the (B, T, T) mask first, ~7x slower at 4 x 4,096."""
    build = compiled_block_mask() if compiles_flex(device) else block_mask
    return build(doc_ids, T, device)


def block_mask(doc_ids, T, device):
    if doc_ids is None:
        return create_block_mask(lambda b, h, q, k: k <= q, None, None, T, T, device=device)
    return create_block_mask(lambda b, h, q, k: (k <= q) & (doc_ids[b, q] == doc_ids[b, k]),
                             doc_ids.size(0), None, T, T, device=device)


def compiles_flex(device):
    """Whether flex attention and its block masks run compiled on this device: on CUDA, where flex trains; on the
    CPU flex runs forward only, in tests, and compiling it would cost more than it saves."""
    return torch.device(device).type == "cuda"


@functools.cache
def compiled_block_mask():  # once, on first use
    return torch.compile(block_mask)


# -----------------------------------------------------------------------------------------------
# Positions and attention back-ends


def rope_scaling_parameters(scaling):
    """(kind, numbers) of a rope_scaling text: "" -> ("", ()), "linear:F" -> ("linear", (F,)), "llama3:F,LOW,HIGH,
    CONTEXT" -> ("llama3", (F, LOW, HIGH, CONTEXT)). ValueError, in one line, for anything else."""
    if not scaling:
        return "", ()
    kind, _, numbers = scaling.partition(":")
    expected = {"linear": "linear:FACTOR", "llama3": "llama3:FACTOR,LOW_FREQ_FACTOR,HIGH_FREQ_FACTOR,CONTEXT"}
    try:
        values = tuple(float(n) for n in numbers.split(","))
    except ValueError:
        values = ()
    if (kind not in expected or len(values) != expected[kind].count(",") + 1 or not all(v > 0 for v in values)
            or (kind == "llama3" and values[1] >= values[2])):
        raise ValueError(f"rope_scaling must be '' or {' or '.join(expected.values())} (positive numbers, "
                         f"LOW_FREQ_FACTOR < HIGH_FREQ_FACTOR), got {scaling!r}")
    return kind, values


def rope_frequencies(head_dim, theta, scaling="", device=None):
    """RoPE's angular frequencies (head_dim / 2,): theta^(-2i / head_dim), then rescaled for a longer context than
    the weights were trained on (rope_scaling_parameters), as a Llama folder's rope_parameters say. "linear" divides
    every frequency by the factor (positions spread F times wider). "llama3" (Llama 3.1) divides only the slow ones:
    a frequency whose wavelength is past CONTEXT / LOW_FREQ_FACTOR is divided, one whose wavelength is under
    CONTEXT / HIGH_FREQ_FACTOR is kept, and between the two the result slides linearly (in CONTEXT / wavelength)
    from divided to kept."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=device).float() / head_dim)
    kind, values = rope_scaling_parameters(scaling)
    if kind == "linear":
        return inv_freq / values[0]
    if kind == "llama3":
        factor, low, high, context = values
        wavelength = 2 * torch.pi / inv_freq
        kept = ((context / wavelength - low) / (high - low)).clamp(0, 1)  # 0: divided, 1: kept
        return (1 - kept) * inv_freq / factor + kept * inv_freq
    return inv_freq


def rope_tables(n_positions, head_dim, theta, device, scaling=""):
    """fp32 cos and sin (n_positions, head_dim) for positions 0..n_positions-1. Hugging Face layout: frequency
    i sits at columns i and i + head_dim/2 (halves concatenated, not interleaved), as rotate_half expects."""
    inv_freq = rope_frequencies(head_dim, theta, scaling, device)
    freqs = torch.outer(torch.arange(n_positions, device=device).float(), inv_freq)
    angles = torch.cat([freqs, freqs], dim=-1)
    return angles.cos(), angles.sin()


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x, cos, sin):
    """Rotate queries or keys (B, H, T, head_dim) by their positions' angles."""
    return x * cos.to(x.dtype) + rotate_half(x) * sin.to(x.dtype)


def alibi_slopes(n_heads):
    """Initial ALiBi slopes (n_heads,): 1 / 2^linspace(1, 8, n_heads), then the upper half of the
    heads (the last n_heads // 2, the gentlest slopes) set to 0, as DeepOne initialises them
    (docs/reference.md, "ALiBi"). A zero-slope head starts position-free (NoPE) and, when trainable, can learn one."""
    slopes = 1.0 / 2.0 ** torch.linspace(1, 8, n_heads)
    slopes[n_heads - n_heads // 2:] = 0.0
    return slopes


def key_minus_query(query_positions, key_positions):
    """fp32 (B or 1, 1, T, S): key position minus query position (within each document; across documents
    meaningless but masked out), the distance that ALiBi scales."""
    return (key_positions[:, None, None, :] - query_positions[:, None, :, None]).float()


def eager_attention(q, k, v, mask, causal, bias=None):
    """Attention in plain tensor maths, the reference for the other back-ends; bias (B or 1, H, T, S): ALiBi's."""
    scores = (q @ k.transpose(-2, -1)) * q.size(-1) ** -0.5  # (B, H, T, S)
    if bias is not None:
        scores = scores + bias.to(scores.dtype)
    if causal:
        T = q.size(-2)
        mask = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = F.softmax(scores.float(), dim=-1).to(q.dtype)
    return weights @ v


@functools.cache
def compiled_flex_attention():  # once, on first use
    return torch.compile(flex_attention)


def flex_attend(q, k, v, block_mask, slopes):
    """flex_attention with flex_block_mask(), plus ALiBi's slope_h * (k - q) when slopes (H,) is given: within
    a document kv_idx - q_idx is that distance. On a GPU compiled (one fused kernel); on the CPU uncompiled
    (it materialises the scores; there is no backward on the CPU anyway). GQA is flex's own (enable_gqa)."""
    def alibi(score, b, h, q_idx, kv_idx):  # a trainable slope gets its gradient through this
        return score + slopes[h] * (kv_idx - q_idx)
    attend = compiled_flex_attention() if compiles_flex(q.device) else flex_attention
    # contiguous: inside a compiled model, inductor's CPU flex kernel fails on (B, T, H, hd) views (torch 2.13)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    return attend(q, k, v, score_mod=None if slopes is None else alibi, block_mask=block_mask,
                  enable_gqa=q.size(1) != k.size(1))
