"""Worker for tests/test_optim.py: do bf16 weights stay bit-identical across DDP ranks under stochastic rounding?

    OMP_NUM_THREADS=1 python -m torch.distributed.run --standalone --nproc_per_node=2 tests/ddp_bf16_worker.py

Each rank trains the same tiny bf16 Transformer, wrapped in DistributedDataParallel, on its own data
for 50 steps: with our AdamW (bf16 state), then with our Adafactor. After each, the ranks compare a
digest of the raw bits of their weights. Then the same again with each rank given its own rounding
seed, where the digests must differ: the proof that the check can fail. Exit 0 if the shared seed kept
every digest equal and the seed per rank made every one differ, 1 otherwise.
"""

import hashlib
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for model and optim
import optim  # noqa: E402
from model import ModelConfig, Transformer  # noqa: E402

VOCAB, STEPS = 64, 50


def weights_digest(model):
    """sha256 of the raw bits of every weight: equal digests mean bit-identical weights."""
    bits = torch.cat([p.detach().view(torch.int16).flatten() for p in model.parameters()])
    return hashlib.sha256(bits.numpy().tobytes()).hexdigest()


def train_and_compare(name, state_dtype, seed_per_rank, rank, world_size):
    """Whether the ranks' bf16 weights are bit-identical after STEPS steps of optimizer `name`; None if the weights
    never changed (nothing tested)."""
    torch.manual_seed(0)  # the same initial weights on every rank
    model = Transformer(ModelConfig(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=2, ffn_dim=64)).to(torch.bfloat16)
    initial = weights_digest(model)
    ddp_model = DistributedDataParallel(model)
    optimizer = optim.build_optimizer(name, model, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8,
                                      seed=rank if seed_per_rank else 0, state_dtype=state_dtype)
    data = torch.Generator().manual_seed(1000 + rank)  # every rank its own batches
    for _ in range(STEPS):
        tokens = torch.randint(0, VOCAB, (2, 17), generator=data)
        loss = ddp_model(tokens[:, :-1], targets=tokens[:, 1:]) / tokens[:, 1:].numel()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    digest = weights_digest(model)
    if digest == initial:
        return None
    mine = torch.tensor([int(digest[:15], 16)])  # 60 bits of the digest as an int64
    digests = [torch.zeros_like(mine) for _ in range(world_size)]
    dist.all_gather(digests, mine)
    return len({int(d) for d in digests}) == 1


def main():
    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    as_expected = True
    for seed_per_rank in (False, True):
        seeds = "a rounding seed per rank" if seed_per_rank else "one rounding seed"
        for name, state_dtype in (("adamw", torch.bfloat16), ("adafactor", None)):
            identical = train_and_compare(name, state_dtype, seed_per_rank, rank, world_size)
            if identical is None:
                print(f"rank {rank} {name}: the weights never changed; nothing was tested", file=sys.stderr)
                return 2
            as_expected &= identical != seed_per_rank
            print(f"rank {rank} {name}, {seeds}: bf16 weights after {STEPS} steps "
                  f"{'identical' if identical else 'DIFFER'} across ranks")
    dist.destroy_process_group()
    return 0 if as_expected else 1


if __name__ == "__main__":
    exit_code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip the interpreter's shutdown: there a gloo thread still releasing a finished collective can
    # need the GIL and abort the process ("terminate called without an active exception"), now and
    # then (torch 2.13, CPU) -- which would fail this check for a reason that has nothing to do with it.
    os._exit(exit_code)
