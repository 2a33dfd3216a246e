"""The small-lm model: a Llama-style decoder-only transformer, and its variants.

Top to bottom:
- ModelConfig and PRESETS: the shape of a model, and the named shapes we train.
- RMSNorm, KVCache, Canon layers, Attention (sdpa here; the eager and flex back-ends, packed-document masks,
  RoPE and ALiBi are in attention.py), the gated MLP, Block (pre-norm, or DeepNet's post-norm).
- ChunkedCrossEntropy: the training loss without the (tokens, vocab) logits.
- Transformer: forward (logits, or the summed cross-entropy) and generate (with a key/value cache).
- matmul_weights, flops_per_token, parameter_summary, format_summary: parameter counts, Chinchilla tokens, and
  the one FLOP count (6N, and with attention at a sequence length).
- model_from_checkpoint, load_model, trained_context: a trained model back from a checkpoint or a run directory.
- generate_text, sample_texts: text from a model, within its trained context unless asked (sample.py, the trainer).
- `python model.py PRESET [key=value ...] [seq_len=N]` prints the summary of a preset.

Parameter names are those of Hugging Face's LlamaForCausalLM without its "model." prefix (embed_tokens,
layers.N.self_attn.q_proj, layers.N.mlp.gate_proj, norm, lm_head, ...), and the maths follows its
conventions (RoPE "rotate half", fp32 RMSNorm), so exporting is plain copying. The variants (ALiBi, NoPE,
QK-norm, DeepNet post-norm, ReLU-GLU, Canon layers) are off by default; their parameters have plain names
(self_attn.alibi_slopes; self_attn.q_norm and k_norm as in Qwen3; canon_a, self_attn.canon_b, canon_c,
mlp.canon_d) and exist only when switched on, so a default config is exactly a Llama.
"""

import difflib
import math
import sys
import typing
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

import files
from attention import (alibi_slopes, apply_rope, document_mask, document_positions, eager_attention, flex_attend,
                       flex_block_mask, key_minus_query, rope_scaling_parameters, rope_tables)
from config import UserError, check_type, describe, read_overrides, run_main, unknown_key

# -----------------------------------------------------------------------------------------------
# Configuration


ATTENTION = ("sdpa", "eager", "flex")  # the attention back-ends (Attention.forward); all compute the same maths
LOSSES = ("chunked", "plain")  # how the training loss is computed (Transformer.forward); both are the same maths
# Fields that choose how the maths is computed, not what it is: the trainer sets them from its own keys, and a
# checkpoint resumes, loads or exports under any choice of them.
BACKEND_FIELDS = ("attn", "loss")


@dataclass
class ModelConfig:
    vocab_size: int = 32000  # tokens in the vocabulary (the trainer sets it from the data)
    dim: int = 768  # hidden size: width of the residual stream
    n_layers: int = 16  # transformer blocks
    n_heads: int = 8  # query heads; head_dim = dim // n_heads
    n_kv_heads: int | None = None  # None = n_heads (MHA); fewer = grouped-query attention
    ffn_dim: int = 2048  # intermediate size of the gated MLP
    rope_theta: float = 10000.0  # RoPE base wavelength
    rope_scaling: str = ""  # "" | "linear:F" | "llama3:F,LOW,HIGH,CONTEXT": RoPE rescaled for a longer context, as
                            # in imported Llama folders (attention.rope_frequencies)
    norm_eps: float = 1e-5  # RMSNorm epsilon
    tie_embeddings: bool = False  # lm_head shares the token embedding matrix
    attn: str = "sdpa"  # one of ATTENTION: "sdpa" (fast) | "eager" (plain maths, the readable reference) |
                        # "flex" (flex_attention: the GPU path; on the CPU forward only, no backward)
    loss: str = "chunked"  # one of LOSSES: "chunked" (the output projection and cross-entropy a chunk of rows
                           # at a time: no (tokens, vocab) logits) | "plain" (the full logits, the readable reference)
    position: str = "rope"  # "rope" (Llama) | "alibi" (a per-head linear distance penalty on the scores) |
                            # "nope" (none: the causal mask alone tells tokens apart by position)
    alibi_trainable: bool = False  # ALiBi slopes are parameters, one per head (DeepOne), not constants
    qk_norm: bool = False  # RMSNorm of each head's queries and keys, before RoPE (Canon, Qwen3)
    norm_placement: str = "pre"  # "pre" (Llama: x + f(norm(x))) | "deepnet" (DeepNet's post-norm:
                                 # norm(alpha * x + f(x)) with alpha = (2L)^(1/4), and DeepNet's Xavier init; DeepOne)
    ffn_act: str = "silu"  # the MLP's gate activation: "silu" (SwiGLU, Llama) | "relu" (ReLU-GLU, DeepOne)
    canon: str = ""  # Canon layers, any of "ABCD" ("" = none): A on the attention input, B on q/k/v, C on the
                     # MLP input, D on the MLP's gate and up outputs

    def __post_init__(self):
        # Fail here, with the reason, rather than deep inside a matmul.
        for name in ("vocab_size", "dim", "n_layers", "n_heads", "ffn_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.dim % self.n_heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by n_heads ({self.n_heads})")
        for name in ("rope_theta", "norm_eps"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be greater than 0, got {getattr(self, name)}")
        for name, allowed in (("position", ("rope", "alibi", "nope")), ("attn", ATTENTION), ("loss", LOSSES),
                              ("norm_placement", ("pre", "deepnet")), ("ffn_act", ("silu", "relu"))):
            if getattr(self, name) not in allowed:
                choices = ", ".join(map(repr, allowed[:-1])) + f" or {allowed[-1]!r}"
                raise ValueError(f"{name} must be {choices}, got {getattr(self, name)!r}")
        if set(self.canon) - set("ABCD"):
            raise ValueError(f"canon must be letters from 'ABCD', got {self.canon!r}")
        if self.alibi_trainable and self.position != "alibi":
            raise ValueError(f"alibi_trainable needs position='alibi', got position={self.position!r}")
        rope_scaling_parameters(self.rope_scaling)  # raises its own one-line ValueError
        if self.position == "rope" and self.head_dim % 2:
            raise ValueError(f"head_dim = dim // n_heads = {self.head_dim} must be even for RoPE")
        if self.kv_heads < 1 or self.n_heads % self.kv_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.kv_heads})")

    @property
    def head_dim(self):
        return self.dim // self.n_heads

    @property
    def kv_heads(self):
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads


# Named shapes. These are shared objects: change a copy (dataclasses.replace), never the preset.
PRESETS: dict[str, ModelConfig] = {
    # tiny, trains on a laptop CPU in minutes; vocab_size is set by the trainer from the data
    "quickstart": ModelConfig(dim=128, n_layers=4, n_heads=4, ffn_dim=384),
    "llama-small": ModelConfig(vocab_size=32000, dim=512, n_layers=8, n_heads=8, ffn_dim=1408),
    # the reference model (docs/reference.md, "Model shape"): 162M parameters, MHA, untied
    "llama-medium": ModelConfig(vocab_size=32000, dim=768, n_layers=16, n_heads=8, ffn_dim=2048,
                                tie_embeddings=False),
}
# The reference's variants at llama-medium's shape (docs/reference.md, "DeepNet and DeepOne" and
# "Canon layers"): DeepOne (post-norm, ReLU-GLU, trainable ALiBi), and Canon (Canon-A, NoPE, QK-norm)
PRESETS["deepone-medium"] = replace(PRESETS["llama-medium"], norm_placement="deepnet", ffn_act="relu",
                                    position="alibi", alibi_trainable=True)
PRESETS["canon-medium"] = replace(PRESETS["llama-medium"], canon="A", position="nope", qk_norm=True)

# -----------------------------------------------------------------------------------------------
# Building blocks


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in fp32 and cast back before the weight (as Hugging Face does)."""

    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


class KVCache:
    """One layer's state in generation: keys and values (preallocated), and its Canon layers' last inputs."""

    def __init__(self, max_len):
        self.max_len = max_len
        self.length = 0  # tokens stored so far
        self.k = self.v = None  # (B, n_kv_heads, max_len, head_dim), allocated on first use
        self.canon_inputs = {}  # Canon layer ("a".."d") -> its last CANON_KERNEL - 1 inputs (B, 3, channels)

    def append(self, k, v):
        """Store new keys and values (B, n_kv_heads, T, head_dim); return all of them so far."""
        if self.k is None:
            B, H, _, D = k.shape
            self.k, self.v = k.new_empty(B, H, self.max_len, D), v.new_empty(B, H, self.max_len, D)
        end = self.length + k.size(2)
        self.k[:, :, self.length:end], self.v[:, :, self.length:end] = k, v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]


CANON_KERNEL = 4  # taps of a Canon layer's convolution: the token itself and the 3 before it


class Canon(nn.Module):
    """Canon layer: h plus a depthwise causal convolution over time, per channel h_t + sum_k w_k * h_{t-k}
    (k = 0..3), where a tap outside the token's document reads zero. The weight has nn.Conv1d's depthwise
    layout (channels, 1, 4): w_k = weight[:, 0, 3 - k], the last tap is the token itself."""

    def __init__(self, channels, name):
        super().__init__()
        self.name = name  # "a".."d": where the generation cache keeps this layer's last inputs
        # zeros: the layer starts as the identity (the model as the one without it); each tap still has a
        # gradient, sum over t of grad_t * h_{t-k}, and learns from the first step
        self.weight = nn.Parameter(torch.zeros(channels, 1, CANON_KERNEL))

    def forward(self, h, positions, cache=None):
        """h (B, T, channels); positions (B or 1, T) within each document; cache: a KVCache in generation."""
        T, before = h.size(1), CANON_KERNEL - 1
        past = cache.canon_inputs.get(self.name) if cache is not None else None
        padded = F.pad(h, (0, 0, before, 0)) if past is None else torch.cat([past, h], dim=1)
        if cache is not None:
            cache.canon_inputs[self.name] = padded[:, -before:]
        out = h
        for k in range(CANON_KERNEL):
            in_document = (positions[..., None] >= k).to(h.dtype)  # is h_{t-k} in t's document? (B or 1, T, 1)
            tap = padded[:, before - k:before - k + T] * in_document  # h_{t-k}, or 0
            out = out + self.weight[:, 0, before - k].to(h.dtype) * tap
        return out


class Attention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.kv_heads, config.head_dim
        self.backend = config.attn
        self.q_proj = nn.Linear(config.dim, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(config.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(config.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, config.dim, bias=False)
        self.canon_b = Canon((self.n_heads + 2 * self.n_kv_heads) * self.head_dim, "b") if "B" in config.canon else None
        if config.qk_norm:  # one weight per head_dim channel, shared by the heads (as Qwen3)
            self.q_norm = RMSNorm(self.head_dim, config.norm_eps)
            self.k_norm = RMSNorm(self.head_dim, config.norm_eps)
        self.qk_norm = config.qk_norm
        if config.alibi_trainable:
            self.alibi_slopes = nn.Parameter(alibi_slopes(self.n_heads))
        elif config.position == "alibi":  # a buffer: saved with the checkpoint, never trained
            self.register_buffer("alibi_slopes", alibi_slopes(self.n_heads))
        else:
            self.alibi_slopes = None

    def forward(self, x, cos, sin, mask, distance=None, positions=None, cache=None):
        """cos, sin: RoPE tables, None when position is not "rope"; mask: document_mask() or None (flex:
        flex_block_mask()); distance: key_minus_query(), for ALiBi (not flex); positions: for Canon-B."""
        B, T, _ = x.shape
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if self.canon_b is not None:  # one Canon layer over q, k and v side by side
            qkv = self.canon_b(torch.cat([q, k, v], dim=-1), positions, cache)
            q, k, v = qkv.split([q.size(-1), k.size(-1), v.size(-1)], dim=-1)
        q = q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k = k.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if cos is not None:
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if self.backend == "flex" and cache is None:  # generation decodes with sdpa (below): flex's
            y = flex_attend(q, k, v, mask, self.alibi_slopes)  # block mask is built for whole rows
            return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))
        if cache is not None:
            k, v = cache.append(k, v)
        # Grouped-query attention: kv head j serves query heads j*rep .. (j+1)*rep - 1 (HF's repeat_kv).
        rep = self.n_heads // self.n_kv_heads
        if rep > 1:
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        # No mask means one document per row: plain causal attention. Generation fills its cache with
        # the whole prompt first (causal), then adds one token at a time, which sees every cached key.
        causal = mask is None and T > 1
        bias = None
        if self.alibi_slopes is not None:
            bias = self.alibi_slopes.view(1, -1, 1, 1) * distance  # slope_h * (k - q): (B or 1, H, T, S)
            if causal:  # sdpa takes a causal flag or a mask, not both: spell the causal mask out
                mask, causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril(), False
        if self.backend == "eager":
            y = eager_attention(q, k, v, mask, causal, bias)
        elif bias is not None:  # sdpa adds a float mask to the scores: the bias, -inf where masked
            float_mask = bias.to(q.dtype)
            if mask is not None:
                float_mask = float_mask.masked_fill(~mask, float("-inf"))
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=float_mask)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))


class MLP(nn.Module):
    """Gated feed-forward: down(act(gate(x)) * up(x)), act = silu (SwiGLU) or relu (ReLU-GLU)."""

    def __init__(self, config):
        super().__init__()
        self.gate_proj = nn.Linear(config.dim, config.ffn_dim, bias=False)
        self.up_proj = nn.Linear(config.dim, config.ffn_dim, bias=False)
        self.down_proj = nn.Linear(config.ffn_dim, config.dim, bias=False)
        self.act = F.silu if config.ffn_act == "silu" else F.relu
        self.canon_d = Canon(2 * config.ffn_dim, "d") if "D" in config.canon else None

    def forward(self, x, positions=None, cache=None):
        gate, up = self.gate_proj(x), self.up_proj(x)
        if self.canon_d is not None:
            gate, up = self.canon_d(torch.cat([gate, up], dim=-1), positions, cache).chunk(2, dim=-1)
        return self.down_proj(self.act(gate) * up)


class Block(nn.Module):
    """Pre-norm: x + attention(norm(x)), then x + mlp(norm(x)); or DeepNet's post-norm: norm(alpha * x +
    attention(x)), then norm(alpha * x + mlp(x)). input_layernorm goes with attention, post_attention_layernorm
    with the MLP, wherever they sit (HF's names)."""

    def __init__(self, config):
        super().__init__()
        self.input_layernorm = RMSNorm(config.dim, config.norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.dim, config.norm_eps)
        self.mlp = MLP(config)
        self.canon_a = Canon(config.dim, "a") if "A" in config.canon else None
        self.canon_c = Canon(config.dim, "c") if "C" in config.canon else None
        # DeepNet scales the residual up by alpha so each sub-layer's update counts for less
        self.alpha = (2 * config.n_layers) ** 0.25 if config.norm_placement == "deepnet" else None

    def forward(self, x, cos, sin, mask, distance=None, positions=None, cache=None):
        h = x if self.alpha else self.input_layernorm(x)
        if self.canon_a is not None:
            h = self.canon_a(h, positions, cache)
        x = self.add(x, self.self_attn(h, cos, sin, mask, distance, positions, cache), self.input_layernorm)
        h = x if self.alpha else self.post_attention_layernorm(x)
        if self.canon_c is not None:
            h = self.canon_c(h, positions, cache)
        return self.add(x, self.mlp(h, positions, cache), self.post_attention_layernorm)

    def add(self, x, update, norm):
        """The residual addition: x + update (pre-norm), or norm(alpha * x + update) (post-norm)."""
        return norm(self.alpha * x + update) if self.alpha else x + update


# -----------------------------------------------------------------------------------------------
# The model


def sample_next(logits, temperature, top_k, generator):
    """One token id per row (B, 1) from last-position logits (B, vocab)."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None:
        kth_best = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    return torch.multinomial(F.softmax(logits, dim=-1), num_samples=1, generator=generator)


# The training loss without the logits. At 16,384 tokens a micro-batch and a 32,000-token vocabulary the fp32
# logits alone take 2.1 GB, and the plain loss's forward and backward hold about three such tensors. The chunked
# loss computes the output projection, the cross-entropy and their gradients LOSS_CHUNK_ROWS rows at a time.

LOSS_CHUNK_ROWS = 2048  # rows of logits alive at once: 2048 x 32,000 in fp32 is 262 MB


class ChunkedCrossEntropy(torch.autograd.Function):
    """sum(cross_entropy(hidden @ weight.T, targets)) over rows, targets of -1 ignored, a chunk of rows at a time.

    The gradients are computed in forward, where each chunk's softmax is at hand, and kept for backward, which
    only scales them by the incoming gradient: memory is one (rows, dim) and one (vocab, dim) tensor instead of
    the (rows, vocab) logits, and no chunk's logits are computed twice (recomputing them in backward would cost
    a third more matmuls). The price: forward always does the backward's work, so it is used for training only.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets):
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros_like(weight, dtype=torch.float32)
        for start in range(0, hidden.size(0), LOSS_CHUNK_ROWS):
            rows = slice(start, start + LOSS_CHUNK_ROWS)
            h, t = hidden[rows], targets[rows]
            logits = (h @ weight.t()).float()  # fp32 softmax even when autocast runs the matmul in bf16
            ignored = (t == -1)[:, None]
            t = t.clamp(min=0)[:, None]
            top, target_logits = logits.amax(dim=-1, keepdim=True), logits.gather(1, t)
            probs = logits.sub_(top).exp_()  # in place: one (rows, vocab) tensor per chunk, no logsumexp copy
            total = probs.sum(dim=-1, keepdim=True)
            loss += (total.log() + top - target_logits).masked_fill(ignored, 0).sum()
            # d loss / d logits = softmax - one_hot(target), and 0 on ignored rows
            grad_logits = probs.div_(total)
            grad_logits.scatter_add_(1, t, torch.full_like(total, -1.0)).masked_fill_(ignored, 0)
            grad_logits = grad_logits.to(weight.dtype)
            grad_hidden[rows] = grad_logits @ weight
            grad_weight += grad_logits.t() @ h
            del logits, probs, grad_logits  # before the next chunk's logits exist: one chunk alive at a time
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype  # the gradient is summed in fp32 and handed back in the weight's dtype
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_loss.to(grad_hidden.dtype), (grad_weight * grad_loss).to(ctx.weight_dtype), None


def chunked_cross_entropy(hidden, weight, targets):
    """The summed cross-entropy of hidden (rows, dim) @ weight.T against targets (rows,), -1 ignored, with no
    (rows, vocab) tensor: ChunkedCrossEntropy when gradients are wanted, else the same loop without them."""
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return ChunkedCrossEntropy.apply(hidden, weight, targets)
    loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
    for start in range(0, hidden.size(0), LOSS_CHUNK_ROWS):
        logits = (hidden[start:start + LOSS_CHUNK_ROWS] @ weight.t()).float()
        loss += F.cross_entropy(logits, targets[start:start + LOSS_CHUNK_ROWS], ignore_index=-1, reduction="sum")
    return loss


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.lm_head = nn.Linear(config.dim, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.rope_cache = None  # (cos, sin) tables, built on first use and rebuilt longer when needed
        self.init_weights()

    @torch.no_grad()
    def init_weights(self):
        """Initialise every parameter as the reference experiments did (docs/reference.md, "Initialization").
        Separate from __init__ so that a model built on the meta device can be initialised later."""
        def trunc_normal(weight, std):  # normal, cut at 3 standard deviations
            nn.init.trunc_normal_(weight, mean=0.0, std=std, a=-3 * std, b=3 * std)

        config = self.config
        # Each block adds its attention and MLP outputs to the residual stream: 2L additions in all.
        residual_std = 0.02 / math.sqrt(2 * config.n_layers)
        deepnet_gain = (8 * config.n_layers) ** -0.25  # DeepNet's beta
        for layer in self.layers:
            attn, mlp = layer.self_attn, layer.mlp
            if config.norm_placement == "deepnet":  # Xavier normal: gain 1 for q and k, beta for the rest
                for linear in (attn.q_proj, attn.k_proj):
                    nn.init.xavier_normal_(linear.weight)
                for linear in (attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj):
                    nn.init.xavier_normal_(linear.weight, gain=deepnet_gain)
            else:
                for linear in (attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj, mlp.up_proj):
                    trunc_normal(linear.weight, 0.02)
                trunc_normal(attn.o_proj.weight, residual_std)
                trunc_normal(mlp.down_proj.weight, residual_std)
            if attn.alibi_slopes is not None:
                attn.alibi_slopes.copy_(alibi_slopes(config.n_heads))
        for module in self.modules():  # every norm (QK-norms and the final one too) starts at 1, Canon at 0
            if isinstance(module, (RMSNorm, Canon)):
                nn.init.constant_(module.weight, 1.0 if isinstance(module, RMSNorm) else 0.0)
        if not config.tie_embeddings:
            nn.init.normal_(self.embed_tokens.weight, mean=0.0, std=1.0)  # as torchtitan does
        trunc_normal(self.lm_head.weight, config.dim**-0.5)  # when tied, this is the embedding too

    def rope(self, positions, max_positions):
        """cos and sin (B or 1, 1, T, head_dim) for positions (B or 1, T), all below max_positions."""
        cos, sin = self.rope_cache or (None, None)
        # Under torch.compile the tables are made inside the graph (cheap, fused) and never cached: touching the
        # cache there would guard on it, and the first call's graph (cache empty) would be compiled again.
        compiling = torch.compiler.is_compiling()
        if compiling or cos is None or cos.size(0) < max_positions or cos.device != positions.device:
            cos, sin = rope_tables(max_positions, self.config.head_dim, self.config.rope_theta, positions.device,
                                   self.config.rope_scaling)
            if not compiling:
                self.rope_cache = (cos, sin)
        return cos[positions].unsqueeze(1), sin[positions].unsqueeze(1)

    def position_inputs(self, positions, key_positions, max_positions, distances=True):
        """What attention needs of positions (B or 1, T) of queries and (B or 1, S) of keys, each None when
        unused: (cos, sin) for RoPE, key - query distances for ALiBi (not wanted by flex: distances=False)."""
        cos = sin = distance = None
        if self.config.position == "rope":
            cos, sin = self.rope(positions, max_positions)
        elif self.config.position == "alibi" and distances:
            distance = key_minus_query(positions, key_positions)
        return cos, sin, distance

    def embed(self, idx):
        """Token ids (B, T) -> the residual stream (B, T, dim). Under autocast the stream is fp32 whatever the
        weights' dtype: FSDP's bf16-mixed gathers bf16 weights, whose lookup would start it in bf16 where DDP's
        fp32 weights start it in fp32 (.float() of an fp32 tensor is the tensor itself)."""
        x = self.embed_tokens(idx)
        return x.float() if torch.is_autocast_enabled(x.device.type) else x

    def trunk(self, idx, cos, sin, distance, mask, positions, caches=None):
        """Token ids (B, T) through the embedding, every block and the final norm -> (B, T, dim)."""
        x = self.embed(idx)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, mask, distance, positions, caches[i] if caches else None)
        return self.norm(x)

    def forward(self, idx, doc_ids=None, targets=None):
        """Logits (B, T, vocab) for token ids (B, T); or, given targets (B, T), the summed cross-entropy.
        doc_ids (B, T), from document_ids(), packs several documents per row; None = one per row. Targets
        equal to -1 are ignored. The loss is a sum: the trainer divides by the global batch's target count."""
        cos, sin, distance, mask, positions = self.block_inputs(idx, doc_ids)
        hidden = self.trunk(idx, cos, sin, distance, mask, positions)
        return self.lm_head(hidden) if targets is None else self.loss(hidden, targets)

    def block_inputs(self, idx, doc_ids):
        """(cos, sin, distance, mask, positions): what every block needs besides its input, for the (B, T) rows
        of idx whose documents doc_ids gives (None: one per row)."""
        T = idx.size(1)
        positions = torch.arange(T, device=idx.device)[None] if doc_ids is None else document_positions(doc_ids)
        flex = self.config.attn == "flex"
        if flex:
            mask = flex_block_mask(doc_ids, T, idx.device)
        else:
            mask = None if doc_ids is None else document_mask(doc_ids)
        cos, sin, distance = self.position_inputs(positions, positions, max_positions=T, distances=not flex)
        return cos, sin, distance, mask, positions

    def loss(self, hidden, targets):
        """The summed cross-entropy of the final norm's output (B, T, dim) against targets (B, T), -1 ignored."""
        hidden, targets = hidden.reshape(-1, hidden.size(-1)), targets.reshape(-1)
        if self.config.loss == "chunked":
            return chunked_cross_entropy(hidden, self.lm_head.weight, targets)
        # fp32 cross-entropy even when the logits are bf16 under autocast
        return F.cross_entropy(self.lm_head(hidden).float(), targets, ignore_index=-1, reduction="sum")

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, generator=None, window=None):
        """Continue each prompt row of idx (B, T0); returns (B, T0 + max_new_tokens). temperature 0 is greedy;
        top_k keeps the k most likely tokens; generator (a torch.Generator) makes samples reproducible. Each
        row is one document. The prompt runs once to fill the caches; then each new token runs alone.
        window: the most tokens the model sees (the trained context, seq_len); each token is predicted from the
        last `window` tokens at positions 0..window-1, as nanoGPT crops to block_size. None: all of them."""
        total_len = idx.size(1) + max_new_tokens
        cache_len = total_len if window is None else min(total_len, window)
        out, caches, new_tokens = idx, None, None  # new_tokens: those not yet in the caches
        for _ in range(max_new_tokens):
            if caches is None or caches[0].length == cache_len:
                # first, or the window is full: start again from its last tokens. A cache cannot slide along:
                # each cached key depends on every token before it, back to the first, so past the window each
                # new token runs the whole window again.
                caches = [KVCache(cache_len) for _ in self.layers]
                new_tokens = out[:, -cache_len:]
            start = caches[0].length
            positions = torch.arange(start, start + new_tokens.size(1), device=idx.device)[None]
            key_positions = torch.arange(start + new_tokens.size(1), device=idx.device)[None]  # cached, then these
            cos, sin, distance = self.position_inputs(positions, key_positions, max_positions=cache_len)
            hidden = self.trunk(new_tokens, cos, sin, distance, None, positions, caches)  # no mask; flex: sdpa
            logits = self.lm_head(hidden[:, -1]).float()
            new_tokens = sample_next(logits, temperature, top_k, generator)
            out = torch.cat([out, new_tokens], dim=1)
        return out


class SkipInitialisers(torch.overrides.TorchFunctionMode):
    """torch.nn.init's functions and the random fills they use do nothing: on the meta device there are no values
    to set, and the meta versions of normal_ and erfinv_ import torch._dynamo at their first use, 1.3 s a process."""
    RANDOM_FILLS = (torch.Tensor.normal_, torch.Tensor.uniform_, torch.Tensor.erfinv_)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__module__", None) == "torch.nn.init" or func in self.RANDOM_FILLS:
            return next(t for t in [*args, *kwargs.values()] if isinstance(t, torch.Tensor))  # filled in place
        return func(*args, **kwargs)


def meta_model(config):
    """A Transformer of this config on the meta device, uninitialised: its names and shapes, with no memory and
    no time spent."""
    with torch.device("meta"), SkipInitialisers():
        return Transformer(config)


# -----------------------------------------------------------------------------------------------
# Parameter and FLOP counts
#
# The FLOP count is the model's, not the kernels': 6 FLOPs per matmul weight per token (2 forward, 4 backward;
# Kaplan et al., 2020), "6N", plus attention's two matmuls over the sequence (PaLM's count, Chowdhery et al., 2022,
# appendix B), with no discount for the causal or document mask, as nanoGPT and torchtitan count it. A
# recomputation, padding or a masked-out score costs real time and no model FLOPs, so it shows as lower MFU
# (model FLOPs utilisation: runs.py sets the device's peak beside it).


def matmul_weights(config):
    """Weights that take part in a matmul (or a convolution) for every token: every projection, the MLP, Canon's
    convolutions and the output projection; not the embedding lookup, the norms or ALiBi's slopes."""
    model = meta_model(config)
    count = sum(p.numel() for name, p in model.named_parameters() if p.ndim >= 2 and name != "embed_tokens.weight")
    if config.tie_embeddings:  # the shared matrix is listed once, as the embedding, but is the output projection too
        count += model.lm_head.weight.numel()
    return count


def flops_per_token(config, seq_len=None):
    """Training FLOPs (forward and backward) per token: 6N alone, or with attention at this sequence length."""
    # QK^T and AV: 2 x 2 x 3 FLOPs per query-key pair per head channel, in every layer
    attention = 0 if seq_len is None else 12 * config.n_layers * config.n_heads * config.head_dim * seq_len
    return 6 * matmul_weights(config) + attention


def parameter_summary(config, seq_len=None):
    """Parameter counts of a model of this config, with Chinchilla tokens and training FLOPs per token: 6N, and
    with attention where a sequence length is given (else None)."""
    model = meta_model(config)
    total = sum(p.numel() for p in model.parameters())  # a tied matrix is listed once
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    embedding = model.embed_tokens.weight.numel()
    if not config.tie_embeddings:
        embedding += model.lm_head.weight.numel()
    non_embedding = total - embedding
    return {"total": total, "trainable": trainable, "embedding": embedding, "non_embedding": non_embedding,
            "tied": config.tie_embeddings,
            "chinchilla_tokens": 20 * non_embedding,  # compute-optimal tokens: 20 per parameter
            "flops_6n": flops_per_token(config),
            "flops_with_attention": None if seq_len is None else flops_per_token(config, seq_len)}


def human(n):
    """3 significant figures with a K/M/G suffix: 162_364_416 -> '162M', 49_152_000 -> '49.2M'."""
    n = float(f"{n:.3g}")  # round first, so 999_999 reads 1M rather than 1e+03K
    for unit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if n >= unit:
            return f"{n / unit:.3g}{suffix}"
    return f"{n:.3g}"


def format_summary(config, seq_len=None):
    summary = parameter_summary(config, seq_len)
    rows = [(label, human(summary[key])) for label, key in (("Total", "total"), ("Trainable", "trainable"),
            ("Embedding", "embedding"), ("Non-embedding", "non_embedding"))]
    rows += [("Tied embeddings", str(summary["tied"])), ("Chinchilla tokens", human(summary["chinchilla_tokens"])),
             ("FLOPs/token (6N)", f"{summary['flops_6n']:.2e}")]
    if seq_len is not None:
        rows.append((f"FLOPs/token (with attention, seq_len {seq_len})", f"{summary['flops_with_attention']:.2e}"))
    width = max(len(label) for label, _ in rows) + 2
    return "\n".join(f"{label + ':':<{width}}{value}" for label, value in rows)


# -----------------------------------------------------------------------------------------------
# A trained model back from a checkpoint (files.py finds, checks and loads the file)


def checkpoint_config(checkpoint, source="the checkpoint"):
    """The ModelConfig of a checkpoint dict whose weights are a model of it. UserError, one line naming source, when
    its model_config is not a config of this model.py, or a weight is missing, extra or of another shape (a
    hand-edited or mixed-up file): load_state_dict would stop with a page of names instead."""
    try:
        config = ModelConfig(**checkpoint["model_config"])
    except (TypeError, ValueError) as e:  # an unknown field; a value out of range
        raise UserError(f"{source}: its model_config is not a model of this model.py ({e})") from None
    expected = {name: tuple(t.shape) for name, t in meta_model(config).state_dict().items()}
    weights = {name: tuple(getattr(t, "shape", ())) for name, t in checkpoint["model"].items()}
    missing, extra = sorted(expected.keys() - weights.keys()), sorted(weights.keys() - expected.keys())
    wrong = [f"{name} {weights[name]} for {expected[name]}" for name in expected.keys() & weights.keys()
             if weights[name] != expected[name]]
    problems = [f"{what} {files.some_names(names)}" for what, names in
                (("missing", missing), ("unexpected", extra), ("wrong shape:", sorted(wrong))) if names]
    if problems:
        raise UserError(f"{source}: its weights do not match its model_config ({'; '.join(problems)})")
    return config


def model_from_checkpoint(checkpoint, device="cpu", source="the checkpoint"):
    """The eval-mode Transformer of a checkpoint dict (checkpoint_config checks it; source names it in an error)."""
    model = Transformer(checkpoint_config(checkpoint, source))
    model.load_state_dict(checkpoint["model"])
    return model.to(device).eval()


def load_model(path, device="cpu"):
    """The eval-mode Transformer of a checkpoint file, or of the newest checkpoint of a run directory that loads
    (a damaged newer one is skipped with a warning); config.UserError when there is none, or when its weights do
    not match its model_config."""
    checkpoint_path, checkpoint = files.load_checkpoint(path)
    return model_from_checkpoint(checkpoint, device, checkpoint_path)


def trained_context(checkpoint):
    """The most tokens a checkpoint's model was trained on at once: its run's seq_len (an import from Hugging Face
    records its max_position_embeddings there); None when the checkpoint does not say."""
    return (checkpoint.get("config") or {}).get("seq_len")


# -----------------------------------------------------------------------------------------------
# Text from a model: sample.py's samples and the trainer's


def generate_text(model, tokenizer, prompt, tokens, temperature, top_k, generator, window=None):
    """The prompt and its continuation as text; the continuation stops where the model ends the document.
    window: as in generate (the trained context; None: no limit)."""
    prompt_ids = [tokenizer.eot_token] + tokenizer.encode_ordinary(prompt)
    device = next(model.parameters()).device
    out = model.generate(torch.tensor([prompt_ids], device=device), tokens, temperature=temperature, top_k=top_k,
                         generator=generator, window=window)
    new_ids = out[0, len(prompt_ids):].tolist()
    if tokenizer.eot_token in new_ids:
        new_ids = new_ids[:new_ids.index(tokenizer.eot_token)]
    return prompt + tokenizer.decode(new_ids, errors="replace")


def sample_texts(model, tokenizer, prompts, tokens, temperature, top_k, seed, heading="sample", window=None):
    """Each prompt continued, under a "----- heading i/n -----" line; reproducible from the seed."""
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    return "".join(f"----- {heading} {i}/{len(prompts)} -----\n"
                   f"{generate_text(model, tokenizer, prompt, tokens, temperature, top_k, generator, window)}\n"
                   for i, prompt in enumerate(prompts, 1))


# -----------------------------------------------------------------------------------------------
# Command line: python model.py PRESET [key=value ...] [seq_len=N]


def preset_and_pairs(argv, usage):
    """(preset name, key=value texts) of a summary command's line (this file's and memory.py's), or UserError."""
    if not argv:
        raise UserError(f"no preset given; {usage}")
    name, *args = argv
    if name not in PRESETS:
        close = difflib.get_close_matches(name, PRESETS, n=1)
        raise UserError(f"unknown preset {name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    for arg in args:
        if "=" not in arg:
            raise UserError(f"expected key=value, got {arg!r}")
    return name, args


def main(argv):
    usage = f"usage: python model.py PRESET [key=value ...] [seq_len=N]  (presets: {', '.join(PRESETS)})"
    if argv[:1] in (["-h"], ["--help"]):
        print(usage)
        print(describe(ModelConfig))
        print("  seq_len: a sequence length, to show the FLOPs of attention too")
        return 0
    keys = typing.get_type_hints(ModelConfig) | {"seq_len": int | None}
    name, args = preset_and_pairs(argv, usage)
    overrides = {}
    for key, value in read_overrides(args).items():
        if key not in keys:
            raise unknown_key(key, keys)
        overrides[key] = check_type(key, value, keys[key])
    seq_len = overrides.pop("seq_len", None)
    if seq_len is not None and seq_len < 1:
        raise UserError(f"seq_len must be at least 1, got {seq_len}")
    try:
        model_config = replace(PRESETS[name], **overrides)
    except ValueError as e:  # an invalid shape, such as dim % n_heads != 0
        raise UserError(str(e))
    print(format_summary(model_config, seq_len))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, sys.argv[1:]))
