#!/usr/bin/env python3
"""How long a small transformer sits at chance on key-value recall.

docs/testbed.md ("Why there is no key-value recall task") quotes this run:
a 2-layer dense transformer of width 64 trained on prompts like
"b=2 v=1 r=9. What is v?" (2-4 distinct letter keys, digit values) stays at
chance for thousands of steps, then learns the lookup abruptly. It prints the
answer loss and the greedy accuracy on 500 held-out prompts every --every
steps. Plain PyTorch on CPU, seeded by --seed; about a minute per
1000 steps on 2 cores.

usage: .venv/bin/python scripts/recall_plateau.py [--steps 20000] [--seed 0]
"""
import argparse
import math
import random
import time

import torch
import torch.nn.functional as F
from torch import nn

BOS, VOCAB = 256, 258
# The loss of guessing evenly among a prompt's 2, 3 or 4 values.
CHANCE_LOSS = sum(math.log(n) for n in (2, 3, 4)) / 3


def prompt(rng):
    keys = rng.sample("abcdefghijklmnopqrstuvwxyz", rng.randint(2, 4))
    values = [str(rng.randint(0, 9)) for _ in keys]
    asked = rng.randrange(len(keys))
    pairs = " ".join(f"{k}={v}" for k, v in zip(keys, values))
    return f"{pairs}. What is {keys[asked]}?", values[asked]


def rms_norm(x, weight):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * weight


class Block(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads, self.head_dim = heads, d // heads
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.out = nn.Linear(d, d, bias=False)
        self.norm1, self.norm2 = nn.Parameter(torch.ones(d)), nn.Parameter(torch.ones(d))
        self.gate, self.up = nn.Linear(d, 4 * d, bias=False), nn.Linear(d, 4 * d, bias=False)
        self.down = nn.Linear(4 * d, d, bias=False)

    def forward(self, x, cos, sin):
        b, n, d = x.shape
        q, k, v = self.qkv(rms_norm(x, self.norm1)).view(b, n, 3, self.heads, self.head_dim).unbind(2)

        def rope(t):  # rotate-half RoPE, as Qwen3 does
            t1, t2 = t[..., : self.head_dim // 2], t[..., self.head_dim // 2 :]
            return torch.cat([t1 * cos - t2 * sin, t2 * cos + t1 * sin], -1)

        y = F.scaled_dot_product_attention(rope(q).transpose(1, 2), rope(k).transpose(1, 2),
                                           v.transpose(1, 2), is_causal=True)
        x = x + self.out(y.transpose(1, 2).reshape(b, n, d))
        h = rms_norm(x, self.norm2)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


class Model(nn.Module):
    def __init__(self, d, layers, heads):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, d)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.norm = nn.Parameter(torch.ones(d))
        self.head = nn.Linear(d, VOCAB, bias=False)
        head_dim = d // heads
        inv = 1.0 / 10000 ** (torch.arange(0, head_dim, 2).float() / head_dim)
        angles = torch.outer(torch.arange(128).float(), inv)[:, None, :]
        self.register_buffer("cos", angles.cos())
        self.register_buffer("sin", angles.sin())

    def forward(self, ids):
        n = ids.shape[1]
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x, self.cos[:n], self.sin[:n])
        return self.head(rms_norm(x, self.norm))


def batch(samples):
    """Token ids (right-padded), answer targets at the last prompt position, and that position."""
    seqs = [[BOS] + list(p.encode()) for p, _ in samples]
    ids = torch.zeros(len(seqs), max(map(len, seqs)), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
    last = torch.tensor([len(s) - 1 for s in seqs])
    answers = torch.tensor([ord(a) for _, a in samples])
    return ids, last, answers


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--every", type=int, default=500)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    train_rng, eval_rng = random.Random(args.seed), random.Random(args.seed + 1_000_003)
    held_out = [prompt(eval_rng) for _ in range(500)]
    model = Model(args.width, args.layers, args.heads)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=0.0)
    rows = torch.arange(args.batch)
    start = time.time()
    for step in range(1, args.steps + 1):
        for group in opt.param_groups:  # linear warmup over 100 steps, then constant
            group["lr"] = args.lr * min(1.0, step / 100)
        ids, last, answers = batch([prompt(train_rng) for _ in range(args.batch)])
        loss = F.cross_entropy(model(ids)[rows, last], answers)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % args.every == 0:
            with torch.no_grad():
                ids, last, answers = batch(held_out)
                predicted = model(ids)[torch.arange(len(held_out)), last].argmax(-1)
                accuracy = (predicted == answers).float().mean().item()
            print(f"step {step:6d}  answer loss {loss.item():.3f} (chance {CHANCE_LOSS:.2f})  "
                  f"held-out accuracy {accuracy:6.1%}  {time.time() - start:5.0f}s", flush=True)


if __name__ == "__main__":
    main()
