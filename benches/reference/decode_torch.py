#!/usr/bin/env python3
"""PyTorch reference for Ember's batch-1 decoding benchmarks (`cargo xtask bench --suite decode`).

A minimal KV-cached decoder written directly in PyTorch (no `generate`, no logits
processors: the fastest plain PyTorch loop), for the two shapes the benchmark uses, with
weights read from a Hugging Face directory (`ember export` of the same model):

- `llama` (RMSNorm, RoPE, SwiGLU, GQA): stories15M's shape;
- `gpt2` (LayerNorm with biases, learned positions, GELU): nanoGPT's.

    python3 decode_torch.py --model HF_DIR --new-tokens 255 --prompt-len 256 --out OUT.json

It decodes greedily from token 1 (`--new-tokens` tokens, median of `--repeats` runs) and
times one batched forward pass over a `--prompt-len` prompt (prefill); it checks that its
logits match `transformers`' for the same prompt. Writes tokens/s, prefill tokens/s, the
generated ids and peak RSS.
"""

import argparse
import json
import math
import os
import resource
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import torch.nn.functional as F
from safetensors.torch import load_file


class Decoder:
    def __init__(self, model_dir):
        self.cfg = json.load(open(os.path.join(model_dir, "config.json")))
        self.w = load_file(os.path.join(model_dir, "model.safetensors"))
        self.w = {k: v.float() for k, v in self.w.items()}
        c = self.cfg
        self.gpt2 = c["model_type"] == "gpt2"
        if self.gpt2:
            self.d, self.layers, self.heads = c["n_embd"], c["n_layer"], c["n_head"]
            self.kv_heads, self.ctx = self.heads, c["n_positions"]
            self.eps = c["layer_norm_epsilon"]
            self.exact_gelu = c.get("activation_function") == "gelu"
            self.head = self.w.get("lm_head.weight", self.w["transformer.wte.weight"])
        else:
            self.d, self.layers, self.heads = c["hidden_size"], c["num_hidden_layers"], c["num_attention_heads"]
            self.kv_heads, self.ctx = c["num_key_value_heads"], c["max_position_embeddings"]
            self.eps = c["rms_norm_eps"]
            self.head = self.w.get("lm_head.weight", self.w["model.embed_tokens.weight"])
            hd = self.d // self.heads
            inv = 1.0 / (c.get("rope_theta", 10000.0) ** (torch.arange(0, hd, 2).float() / hd))
            ang = torch.outer(torch.arange(self.ctx).float(), inv)
            self.cos = torch.cat([ang.cos(), ang.cos()], -1)
            self.sin = torch.cat([ang.sin(), ang.sin()], -1)
        self.hd = self.d // self.heads

    def rope(self, x, start):
        t = x.shape[1]
        cos, sin = self.cos[start : start + t, None, :], self.sin[start : start + t, None, :]
        half = self.hd // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], -1)
        return x * cos + rotated * sin

    def forward(self, ids, cache):
        """ids [1, T] after `cache` (list of per-layer (k, v) [1, kv, S, hd] or None)."""
        start = 0 if cache[0] is None else cache[0][0].shape[2]
        t = ids.shape[1]
        w, d, hd = self.w, self.d, self.hd
        if self.gpt2:
            x = w["transformer.wte.weight"][ids] + w["transformer.wpe.weight"][start : start + t]
        else:
            x = w["model.embed_tokens.weight"][ids]
        for l in range(self.layers):
            if self.gpt2:
                p = f"transformer.h.{l}"
                h = F.layer_norm(x, (d,), w[f"{p}.ln_1.weight"], w[f"{p}.ln_1.bias"], self.eps)
                qkv = h @ w[f"{p}.attn.c_attn.weight"] + w[f"{p}.attn.c_attn.bias"]
                q, k, v = qkv.split(d, dim=-1)
            else:
                p = f"model.layers.{l}"
                h = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * w[f"{p}.input_layernorm.weight"]
                q = h @ w[f"{p}.self_attn.q_proj.weight"].T
                k = h @ w[f"{p}.self_attn.k_proj.weight"].T
                v = h @ w[f"{p}.self_attn.v_proj.weight"].T
            q = q.view(1, t, self.heads, hd)
            k = k.view(1, t, self.kv_heads, hd)
            v = v.view(1, t, self.kv_heads, hd)
            if not self.gpt2:
                q, k = self.rope(q, start), self.rope(k, start)
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            if cache[l] is not None:
                k = torch.cat([cache[l][0], k], 2)
                v = torch.cat([cache[l][1], v], 2)
            cache[l] = (k, v)
            y = F.scaled_dot_product_attention(
                q, k, v, is_causal=t > 1, enable_gqa=self.kv_heads != self.heads
            )
            y = y.transpose(1, 2).reshape(1, t, d)
            if self.gpt2:
                x = x + y @ w[f"{p}.attn.c_proj.weight"] + w[f"{p}.attn.c_proj.bias"]
                h = F.layer_norm(x, (d,), w[f"{p}.ln_2.weight"], w[f"{p}.ln_2.bias"], self.eps)
                h = h @ w[f"{p}.mlp.c_fc.weight"] + w[f"{p}.mlp.c_fc.bias"]
                h = F.gelu(h) if self.exact_gelu else F.gelu(h, approximate="tanh")
                x = x + h @ w[f"{p}.mlp.c_proj.weight"] + w[f"{p}.mlp.c_proj.bias"]
            else:
                x = x + y @ w[f"{p}.self_attn.o_proj.weight"].T
                h = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * w[f"{p}.post_attention_layernorm.weight"]
                h = F.silu(h @ w[f"{p}.mlp.gate_proj.weight"].T) * (h @ w[f"{p}.mlp.up_proj.weight"].T)
                x = x + h @ w[f"{p}.mlp.down_proj.weight"].T
        if self.gpt2:
            x = F.layer_norm(x, (d,), w["transformer.ln_f.weight"], w["transformer.ln_f.bias"], self.eps)
        else:
            x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * w["model.norm.weight"]
        return x[:, -1] @ self.head.T

    def greedy(self, first, n):
        cache = [None] * self.layers
        ids, out = torch.tensor([[first]]), []
        for _ in range(n):
            nxt = int(self.forward(ids, cache).argmax(-1))
            out.append(nxt)
            ids = torch.tensor([[nxt]])
        return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--new-tokens", type=int, default=255)
    ap.add_argument("--prompt-len", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.manual_seed(0)
    dec = Decoder(args.model)
    result = {"torch_version": torch.__version__, "threads": torch.get_num_threads()}
    with torch.inference_mode():
        # Agreement with transformers on a short prompt (the reference must be right).
        from transformers import AutoModelForCausalLM

        hf = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
        probe = torch.arange(1, 9)[None]
        want = hf(probe).logits[0, -1]
        got = dec.forward(probe, [None] * dec.layers)[0]
        result["max_rel_logit_error_vs_transformers"] = ((got - want).abs().max() / want.abs().max()).item()
        del hf
        dec.greedy(1, 8)  # warm-up
        times, ids = [], None
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            ids = dec.greedy(1, args.new_tokens)
            times.append(time.perf_counter() - t0)
        result["tokens_per_s"] = args.new_tokens / statistics.median(times)
        result["ids"] = ids
        if args.prompt_len:
            prompt = (torch.arange(args.prompt_len) * 7 % 1000 + 1)[None]
            dec.forward(prompt, [None] * dec.layers)
            prefill = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                dec.forward(prompt, [None] * dec.layers)
                prefill.append(time.perf_counter() - t0)
            result["prefill_ms"] = statistics.median(prefill) * 1e3
            result["prefill_tokens_per_s"] = args.prompt_len / statistics.median(prefill)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    json.dump(result, open(args.out, "w"), indent=1)
    print(json.dumps({k: v for k, v in result.items() if k != "ids"}))


if __name__ == "__main__":
    main()
