"""PyTorch reference for `cargo xtask bench`: nanoGPT's CPU shakespeare_char run.

Same model (4 layers, 4 heads, d_model 128, block 64, LayerNorm and Linear without bias,
exact GELU, tied embeddings), same data (sorted-character vocabulary, last 10% held out),
same batches (SplitMix64 offsets, exactly as Ember's BatchSampler draws them), same
schedule (warmup 100, cosine 1e-3 -> 1e-4 at 2000, AdamW beta2 0.99, weight decay 0.1 on
matrices, global-norm clip 1.0) and the same evaluation (20 fixed validation batches
every 250 steps). Writes a JSON summary with median ms/step and tokens/s.

With `--init DIR` the model starts from the weights of a Hugging Face GPT-2 directory (what
`ember export` writes for Ember's untrained nanoGPT model) instead of its own draw, so both
runs share their initial weights as well as their batches: the val losses then differ by
the arithmetic alone, not by which random initialisation each side happened to draw.
"""

import argparse
import json
import math
import os
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

MASK64 = (1 << 64) - 1


class SplitMix64:
    def __init__(self, seed):
        self.state = seed & MASK64

    def next(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        return z ^ (z >> 31)


def batch(tokens, rng, batch_size, block):
    span = len(tokens) - block
    offsets = [rng.next() % span for _ in range(batch_size)]
    x = torch.stack([tokens[o : o + block] for o in offsets])
    y = torch.stack([tokens[o + 1 : o + block + 1] for o in offsets])
    return x, y


class LayerNorm(nn.Module):
    """LayerNorm without bias (nn.LayerNorm's `bias=` needs torch >= 2.1)."""

    def __init__(self, d):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, None, 1e-5)


def causal_attention(q, k, v):
    if hasattr(F, "scaled_dot_product_attention"):  # torch >= 2.0
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    t = q.size(-2)
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))
    mask = torch.ones(t, t, dtype=torch.bool).triu(1)
    return F.softmax(scores.masked_fill(mask, float("-inf")), dim=-1) @ v


class Block(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.ln1 = LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.proj = nn.Linear(d, d, bias=False)
        self.ln2 = LayerNorm(d)
        self.fc = nn.Linear(d, 4 * d, bias=False)
        self.out = nn.Linear(4 * d, d, bias=False)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        y = causal_attention(q, k, v)
        x = x + self.proj(y.transpose(1, 2).contiguous().view(b, t, d))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class GPT(nn.Module):
    def __init__(self, vocab, d=128, layers=4, heads=4, block=64):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(block, d)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln_f = LayerNorm(d)
        self.apply(self._init)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight") or name.endswith("out.weight"):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * layers))

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, 0.02)

    def forward(self, idx, targets):
        t = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(t))
        for blk in self.blocks:
            x = blk(x)
        logits = self.ln_f(x) @ self.wte.weight.T
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def load_init(model, directory):
    """Copies an exported GPT-2 checkpoint's weights into `model` (biases must be zero)."""
    from safetensors.torch import load_file

    path = os.path.join(directory, "model.safetensors")
    w = load_file(path)
    used = set()

    def take(name, transpose=False):
        if name not in w:
            raise SystemExit(f"{path}: missing tensor {name}")
        used.add(name)
        t = w[name].float()
        return t.T if transpose else t

    with torch.no_grad():
        model.wte.weight.copy_(take("transformer.wte.weight"))
        model.wpe.weight.copy_(take("transformer.wpe.weight"))
        for i, blk in enumerate(model.blocks):
            p = f"transformer.h.{i}"
            blk.ln1.weight.copy_(take(f"{p}.ln_1.weight"))
            blk.qkv.weight.copy_(take(f"{p}.attn.c_attn.weight", transpose=True))
            blk.proj.weight.copy_(take(f"{p}.attn.c_proj.weight", transpose=True))
            blk.ln2.weight.copy_(take(f"{p}.ln_2.weight"))
            blk.fc.weight.copy_(take(f"{p}.mlp.c_fc.weight", transpose=True))
            blk.out.weight.copy_(take(f"{p}.mlp.c_proj.weight", transpose=True))
        model.ln_f.weight.copy_(take("transformer.ln_f.weight"))
    for name in sorted(set(w) - used):
        if name.endswith(".bias") and not w[name].any():
            continue
        if name == "lm_head.weight" and torch.equal(w[name], w["transformer.wte.weight"]):
            continue
        raise SystemExit(f"{path}: tensor {name} has no place in the reference model")


def lr_at(step, peak=1e-3, floor=1e-4, warmup=100, decay=2000):
    if step < warmup:
        return peak * (step + 1) / (warmup + 1)
    if step > decay:
        return floor
    ratio = (step - warmup) / (decay - warmup)
    return floor + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (peak - floor)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--out", required=True)
    # nanoGPT's CPU shape by default; `--d 384 --layers 6 --heads 6 --block 256 --batch 8`
    # is its GPU shape (the gpt-wide benchmark).
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--block", type=int, default=64)
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--init", help="start from this exported GPT-2 directory's weights")
    args = ap.parse_args()

    # One intra-op thread per core, as PyTorch picks on a machine it has to itself.
    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(1337)
    text = open(args.data, encoding="utf-8").read()
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    data = torch.tensor([stoi[c] for c in text], dtype=torch.long)
    n = int(len(data) * 0.9)
    train, val = data[:n], data[n:]

    model = GPT(len(chars), d=args.d, layers=args.layers, heads=args.heads, block=args.block)
    if args.init:
        load_init(model, args.init)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=1e-3, betas=(0.9, 0.99), eps=1e-8,
    )
    rng = SplitMix64(1337)
    losses, times = {}, []
    for step in range(args.steps):
        start = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        x, y = batch(train, rng, args.batch, args.block)
        loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        times.append((time.perf_counter() - start) * 1e3)
        done = step + 1
        if done % args.eval_every == 0 or done == args.steps:
            model.eval()
            eval_rng = SplitMix64(1337 ^ 0x5EED5EED5EED5EED)
            with torch.no_grad():
                total = sum(
                    model(*batch(val, eval_rng, args.batch, args.block)).item() for _ in range(20)
                )
            losses[done] = total / 20
            model.train()
            print(f"reference step {done}: val {losses[done]:.4f}", flush=True)
    times.sort()
    ms = times[len(times) // 2]
    json.dump(
        {
            "ms_per_step": ms,
            "tokens_per_s": args.batch * args.block / (ms / 1e3),
            "val_loss": losses[args.steps],
            "val_losses": losses,
            "torch_version": torch.__version__,
            "threads": torch.get_num_threads(),
            "init": args.init or "torch.manual_seed(1337)",
        },
        open(args.out, "w"),
    )


if __name__ == "__main__":
    main()
