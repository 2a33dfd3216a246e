"""The small-lm model: a Llama-style decoder-only transformer.

Top to bottom:
- ModelConfig and PRESETS: the shape of a model, and the named shapes we train.
- document_ids, document_positions, document_mask: several documents packed into one row.
- RMSNorm, positions (RoPE, ALiBi or none), attention (sdpa and eager back-ends), SwiGLU MLP, Block.
- Transformer: forward (logits, or the summed cross-entropy) and generate (with a key/value cache).
- parameter_summary, format_summary: parameter counts, Chinchilla tokens, FLOPs per token.
- newest_checkpoint, load_model: a trained model back from a run directory or checkpoint file.
- `python model.py PRESET [key=value ...]` prints the summary of a preset.

Parameter names are those of Hugging Face's LlamaForCausalLM without its "model." prefix
(embed_tokens, layers.N.self_attn.q_proj, layers.N.mlp.gate_proj, norm, lm_head, ...), and the
maths follows its conventions (RoPE "rotate half", fp32 RMSNorm), so exporting is plain copying.
The variants (ALiBi, NoPE, QK-norm) are off by default; their parameters have plain names
(self_attn.alibi_slopes; self_attn.q_norm and k_norm as in Hugging Face's Qwen3) and exist only
when switched on, so a default config is exactly a Llama.
"""

import difflib
import math
import re
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

# -----------------------------------------------------------------------------------------------
# Configuration


@dataclass
class ModelConfig:
    vocab_size: int = 32000  # tokens in the vocabulary (the trainer sets it from the data)
    dim: int = 768  # hidden size: width of the residual stream
    n_layers: int = 16  # transformer blocks
    n_heads: int = 8  # query heads; head_dim = dim // n_heads
    n_kv_heads: int | None = None  # None = n_heads (MHA); fewer = grouped-query attention
    ffn_dim: int = 2048  # SwiGLU intermediate size
    rope_theta: float = 10000.0  # RoPE base wavelength
    norm_eps: float = 1e-5  # RMSNorm epsilon
    tie_embeddings: bool = False  # lm_head shares the token embedding matrix
    attn: str = "sdpa"  # "sdpa" (fast) | "eager" (plain maths, the readable reference)
    # "rope" (Llama) | "alibi" (a per-head linear distance penalty on the scores) | "nope" (none:
    # the causal mask alone tells tokens apart by position)
    position: str = "rope"
    alibi_trainable: bool = False  # ALiBi slopes are parameters, one per head (DeepOne), not constants
    qk_norm: bool = False  # RMSNorm of each head's queries and keys, before RoPE (Canon, Qwen3)

    def __post_init__(self):
        # Fail here, with the reason, rather than deep inside a matmul.
        for name in ("vocab_size", "dim", "n_layers", "n_heads", "ffn_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.dim % self.n_heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by n_heads ({self.n_heads})")
        if self.position not in ("rope", "alibi", "nope"):
            raise ValueError(f"position must be 'rope', 'alibi' or 'nope', got {self.position!r}")
        if self.alibi_trainable and self.position != "alibi":
            raise ValueError(f"alibi_trainable needs position='alibi', got position={self.position!r}")
        if self.position == "rope" and self.head_dim % 2:
            raise ValueError(f"head_dim = dim // n_heads = {self.head_dim} must be even for RoPE")
        if self.kv_heads < 1 or self.n_heads % self.kv_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.kv_heads})")
        if self.attn not in ("sdpa", "eager"):
            raise ValueError(f"attn must be 'sdpa' or 'eager', got {self.attn!r}")

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
    # the reference model of REFERENCE.md: 162M parameters, MHA, untied
    "llama-medium": ModelConfig(vocab_size=32000, dim=768, n_layers=16, n_heads=8, ffn_dim=2048,
                                tie_embeddings=False),
}

# -----------------------------------------------------------------------------------------------
# Packed sequences: a row of (B, T) token ids may hold several documents, each opened by the
# end-of-text token. Attention stays within a document and positions restart at each one.


def document_ids(idx, eot_id):
    """Document index of every token (B, T) -> (B, T): the end-of-text token opens the next document.

    [a a EOT b b EOT c] -> [0 0 1 1 1 2 2]. The EOT acts as the BOS of the document after it, so a
    packed document sees exactly [EOT, its tokens], as it would when run alone after an EOT.
    """
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


def rope_tables(n_positions, head_dim, theta, device):
    """fp32 cos and sin (n_positions, head_dim) for positions 0..n_positions-1.

    Hugging Face layout: frequency i sits at columns i and i + head_dim/2 (the halves are
    concatenated, not interleaved), matching rotate_half below.
    """
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=device).float() / head_dim)
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
    (REFERENCE.md). A zero-slope head starts position-free (NoPE) and, when trainable, can learn one."""
    slopes = 1.0 / 2.0 ** torch.linspace(1, 8, n_heads)
    slopes[n_heads - n_heads // 2:] = 0.0
    return slopes


def key_minus_query(query_positions, key_positions):
    """fp32 (B or 1, 1, T, S): key position minus query position, the distance that ALiBi scales.

    Positions are within each document; across documents the value is meaningless but masked out."""
    return (key_positions[:, None, None, :] - query_positions[:, None, :, None]).float()


def eager_attention(q, k, v, mask, causal, bias=None):
    """Attention in plain tensor maths: the readable reference that the sdpa back-end is tested against.

    bias (B or 1, H, T, S), added to the scaled scores before masking, is ALiBi's."""
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


class KVCache:
    """Keys and values of one attention layer during generation, preallocated to the final length."""

    def __init__(self, max_len):
        self.max_len = max_len
        self.length = 0  # tokens stored so far
        self.k = self.v = None  # (B, n_kv_heads, max_len, head_dim), allocated on first use

    def append(self, k, v):
        """Store new keys and values (B, n_kv_heads, T, head_dim); return all of them so far."""
        if self.k is None:
            B, H, _, D = k.shape
            self.k, self.v = k.new_empty(B, H, self.max_len, D), v.new_empty(B, H, self.max_len, D)
        end = self.length + k.size(2)
        self.k[:, :, self.length:end], self.v[:, :, self.length:end] = k, v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]


class Attention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.kv_heads, config.head_dim
        self.backend = config.attn
        self.q_proj = nn.Linear(config.dim, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(config.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(config.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, config.dim, bias=False)
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

    def forward(self, x, cos, sin, mask, distance=None, cache=None):
        """cos, sin: RoPE tables, None when position is not "rope"; distance: key_minus_query(), for ALiBi."""
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if cos is not None:
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
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
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

    def __init__(self, config):
        super().__init__()
        self.gate_proj = nn.Linear(config.dim, config.ffn_dim, bias=False)
        self.up_proj = nn.Linear(config.dim, config.ffn_dim, bias=False)
        self.down_proj = nn.Linear(config.ffn_dim, config.dim, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    """Pre-norm residual block: x + attention(norm(x)), then x + mlp(norm(x)). Norm names are HF's."""

    def __init__(self, config):
        super().__init__()
        self.input_layernorm = RMSNorm(config.dim, config.norm_eps)  # the norm before attention
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.dim, config.norm_eps)  # the norm before the MLP
        self.mlp = MLP(config)

    def forward(self, x, cos, sin, mask, distance=None, cache=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, distance, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


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
        """Initialise every parameter as the reference experiments did (REFERENCE.md).

        Separate from __init__ so that a model built on the meta device can be initialised later.
        """
        def trunc_normal(weight, std):  # normal, cut at 3 standard deviations
            nn.init.trunc_normal_(weight, mean=0.0, std=std, a=-3 * std, b=3 * std)

        config = self.config
        # Each block adds its attention and MLP outputs to the residual stream: 2L additions in all.
        residual_std = 0.02 / math.sqrt(2 * config.n_layers)
        for layer in self.layers:
            attn, mlp = layer.self_attn, layer.mlp
            for linear in (attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj, mlp.up_proj):
                trunc_normal(linear.weight, 0.02)
            trunc_normal(attn.o_proj.weight, residual_std)
            trunc_normal(mlp.down_proj.weight, residual_std)
            nn.init.ones_(layer.input_layernorm.weight)
            nn.init.ones_(layer.post_attention_layernorm.weight)
            if config.qk_norm:
                nn.init.ones_(attn.q_norm.weight)
                nn.init.ones_(attn.k_norm.weight)
            if attn.alibi_slopes is not None:
                attn.alibi_slopes.copy_(alibi_slopes(config.n_heads))
        nn.init.ones_(self.norm.weight)
        if not config.tie_embeddings:
            nn.init.normal_(self.embed_tokens.weight, mean=0.0, std=1.0)  # as torchtitan does
        trunc_normal(self.lm_head.weight, config.dim**-0.5)  # when tied, this is the embedding too

    def rope(self, positions, max_positions):
        """cos and sin (B or 1, 1, T, head_dim) for positions (B or 1, T), all below max_positions."""
        cos, sin = self.rope_cache or (None, None)
        if cos is None or cos.size(0) < max_positions or cos.device != positions.device:
            cos, sin = rope_tables(max_positions, self.config.head_dim, self.config.rope_theta,
                                   positions.device)
            self.rope_cache = (cos, sin)
        return cos[positions].unsqueeze(1), sin[positions].unsqueeze(1)

    def position_inputs(self, positions, key_positions, max_positions):
        """What attention needs to know of positions (B or 1, T) of queries and (B or 1, S) of keys:
        (cos, sin) for RoPE and key - query distances for ALiBi, each None when not used."""
        cos = sin = distance = None
        if self.config.position == "rope":
            cos, sin = self.rope(positions, max_positions)
        elif self.config.position == "alibi":
            distance = key_minus_query(positions, key_positions)
        return cos, sin, distance

    def trunk(self, idx, cos, sin, distance, mask, caches=None):
        """Token ids (B, T) through the embedding, every block and the final norm -> (B, T, dim)."""
        x = self.embed_tokens(idx)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, mask, distance, caches[i] if caches else None)
        return self.norm(x)

    def forward(self, idx, doc_ids=None, targets=None):
        """Logits (B, T, vocab) for token ids (B, T); or, given targets (B, T), the summed cross-entropy.

        doc_ids (B, T), from document_ids(), packs several documents per row; None = one per row.
        Targets equal to -1 are ignored. The loss is a sum, not a mean: the trainer divides by the
        number of target tokens in the whole global batch.
        """
        T = idx.size(1)
        if doc_ids is None:
            positions, mask = torch.arange(T, device=idx.device)[None], None
        else:
            positions, mask = document_positions(doc_ids), document_mask(doc_ids)
        cos, sin, distance = self.position_inputs(positions, positions, max_positions=T)
        logits = self.lm_head(self.trunk(idx, cos, sin, distance, mask))
        if targets is None:
            return logits
        # fp32 cross-entropy even when the logits are bf16 under autocast
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1),
                               ignore_index=-1, reduction="sum")

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, generator=None):
        """Continue each prompt row of idx (B, T0); returns (B, T0 + max_new_tokens).

        temperature 0 takes the most likely token (greedy); top_k keeps the k most likely tokens;
        generator (a torch.Generator) makes the samples reproducible. Each prompt row is one
        document. The prompt runs once to fill a key/value cache; then each new token runs alone.
        """
        total_len = idx.size(1) + max_new_tokens
        caches = [KVCache(total_len) for _ in self.layers]
        out = idx
        new_tokens = idx  # tokens not yet in the cache: the prompt, then the latest sampled token
        for _ in range(max_new_tokens):
            start = out.size(1) - new_tokens.size(1)
            positions = torch.arange(start, out.size(1), device=idx.device)[None]
            key_positions = torch.arange(out.size(1), device=idx.device)[None]  # cached keys, then these
            cos, sin, distance = self.position_inputs(positions, key_positions, max_positions=total_len)
            hidden = self.trunk(new_tokens, cos, sin, distance, mask=None, caches=caches)
            logits = self.lm_head(hidden[:, -1]).float()
            new_tokens = sample_next(logits, temperature, top_k, generator)
            out = torch.cat([out, new_tokens], dim=1)
        return out


# -----------------------------------------------------------------------------------------------
# Parameter summary


def parameter_summary(config):
    """Parameter counts of a model of this config, with Chinchilla tokens and training FLOPs per token."""
    with torch.device("meta"):  # shapes only: no memory, no time spent initialising
        model = Transformer(config)
    total = sum(p.numel() for p in model.parameters())  # a tied matrix is listed once
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    embedding = model.embed_tokens.weight.numel()
    if not config.tie_embeddings:
        embedding += model.lm_head.weight.numel()
    non_embedding = total - embedding
    return {
        "total": total,
        "trainable": trainable,
        "embedding": embedding,
        "non_embedding": non_embedding,
        "tied": config.tie_embeddings,
        "chinchilla_tokens": 20 * non_embedding,  # compute-optimal tokens: 20 per parameter
        "flops_per_token": 6 * non_embedding,  # forward + backward: 6 FLOPs per parameter per token
    }


def human(n):
    """3 significant figures with a K/M/G suffix: 162_364_416 -> '162M', 49_152_000 -> '49.2M'."""
    n = float(f"{n:.3g}")  # round first, so 999_999 reads 1M rather than 1e+03K
    for unit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if n >= unit:
            return f"{n / unit:.3g}{suffix}"
    return f"{n:.3g}"


def format_summary(config):
    summary = parameter_summary(config)
    rows = [
        ("Total", human(summary["total"])),
        ("Trainable", human(summary["trainable"])),
        ("Embedding", human(summary["embedding"])),
        ("Non-embedding", human(summary["non_embedding"])),
        ("Tied embeddings", str(summary["tied"])),
        ("Chinchilla tokens", human(summary["chinchilla_tokens"])),
        ("FLOPs/token", f"{summary['flops_per_token']:.2e}"),
    ]
    return "\n".join(f"{label + ':':<19}{value}" for label, value in rows)


# -----------------------------------------------------------------------------------------------
# Loading checkpoints. The trainer writes ckpt_{step:08d}.pt atomically (a .tmp file, then a rename),
# so any file with the final name is complete.

CHECKPOINT_NAME = re.compile(r"ckpt_(\d+)\.pt")


def newest_checkpoint(run_dir):
    """The complete checkpoint with the highest step in run_dir, or None if there is none."""
    steps = {}
    for path in Path(run_dir).glob("ckpt_*.pt"):
        match = CHECKPOINT_NAME.fullmatch(path.name)
        if match:
            steps[int(match.group(1))] = path
    return steps[max(steps)] if steps else None


def checkpoint_file(path):
    """A checkpoint file as given, or the newest checkpoint of a run directory; FileNotFoundError if none."""
    path = Path(path)
    if path.is_dir():
        checkpoint_path = newest_checkpoint(path)
        if checkpoint_path is None:
            raise FileNotFoundError(f"no checkpoint (ckpt_*.pt) in run directory {path}")
        return checkpoint_path
    if path.is_file():
        return path
    raise FileNotFoundError(f"no such checkpoint file or run directory: {path}")


def load_model(path, device="cpu"):
    """The eval-mode Transformer of a checkpoint file, or of the newest checkpoint in a run directory."""
    checkpoint = torch.load(checkpoint_file(path), map_location="cpu", weights_only=True)
    model = Transformer(ModelConfig(**checkpoint["model_config"]))
    model.load_state_dict(checkpoint["model"])
    return model.to(device).eval()


# -----------------------------------------------------------------------------------------------
# Command line: python model.py PRESET [key=value ...]


def fail(message):
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def main(argv):
    # key=value is parsed and type-checked by the trainer's config code, so both commands read values alike
    from train import MODEL_KEYS, UserError, check_type, parse_value
    usage = f"usage: python model.py PRESET [key=value ...]  (presets: {', '.join(PRESETS)})"
    if argv[:1] in (["-h"], ["--help"]):
        print(usage)
        return
    if not argv:
        fail(f"no preset given; {usage}")
    name, *args = argv
    if name not in PRESETS:
        fail(f"unknown preset {name!r} (closest: {difflib.get_close_matches(name, PRESETS, n=1, cutoff=0)[0]!r})")
    overrides = {}
    for arg in args:
        key, sep, text = arg.partition("=")
        if not sep:
            fail(f"expected key=value, got {arg!r}")
        if key not in MODEL_KEYS:
            fail(f"unknown ModelConfig field {key!r} (closest: {difflib.get_close_matches(key, MODEL_KEYS, n=1, cutoff=0)[0]!r})")
        try:
            overrides[key] = check_type(key, parse_value(text), MODEL_KEYS[key])
            config = replace(PRESETS[name], **overrides)
        except (UserError, ValueError) as e:  # a wrong type, or an invalid shape such as dim % n_heads != 0
            fail(str(e))
    print(format_summary(PRESETS[name] if not overrides else config))


if __name__ == "__main__":
    main(sys.argv[1:])
