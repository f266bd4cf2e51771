#!/usr/bin/env python3
"""PyTorch + transformers + peft reference for `cargo xtask bench --suite finetune`.

Fine-tunes a Llama checkpoint (a Hugging Face directory: `config.json` + float32
`model.safetensors`, as `ember export` writes it) for `--steps` optimizer steps, either
through a LoRA adapter (`--mode lora`, the default) or on every parameter (`--mode full`):

    python3 finetune_peft.py --model HF_DIR --adapter PEFT_DIR --data ROWS.jsonl --steps N \
        --batch 4 --lr 2e-4 --beta1 0.9 --beta2 0.999 --eps 1e-8 --weight-decay 0.0 \
        --grad-clip 1.0 --out RESULT.json [--mode lora|full]

Both sides start from the same weights: the base model from `--model` and, in LoRA mode,
the adapter's initial A/B matrices from `--adapter` (a peft directory, loaded trainable).
Both see the same batches: step `s` takes rows `s*batch .. s*batch+batch` of ROWS.jsonl
(`{"input_ids": [257 ids]}` per line, wrapping around), inputs ids[:256], targets
ids[1:257]. The loss is the mean cross-entropy over all batch x 256 targets, computed here
from the logits (no `labels=`, so transformers does not shift a second time). AdamW with a
constant learning rate, global-norm gradient clipping when `--grad-clip` > 0.

What is timed: the wall time of each whole optimizer step (zero_grad, forward, loss,
backward, clip, AdamW update), nothing left out. Only building the step's input tensors
from the already-parsed rows happens before the clock starts. Thread settings are left at
torch's defaults. Writes the per-step losses (before each update) and times, the median
step time, tokens/s at that median, peak RSS and the library versions as JSON.
"""

import argparse
import json
import os
import resource
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch
import torch.nn.functional as F
import transformers
from transformers import LlamaForCausalLM

SEQ = 256  # tokens per row fed to the model; each row holds SEQ + 1 ids


def load_rows(path):
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            ids = json.loads(line)["input_ids"]
            if len(ids) != SEQ + 1:
                raise SystemExit(f"{path}:{n}: expected {SEQ + 1} input_ids, got {len(ids)}")
            rows.append(ids)
    if not rows:
        raise SystemExit(f"{path}: no rows")
    return torch.tensor(rows, dtype=torch.long)


def step_batch(rows, step, batch):
    """Rows `step*batch .. step*batch+batch` in file order, wrapping around."""
    idx = torch.tensor([(step * batch + i) % rows.shape[0] for i in range(batch)])
    b = rows[idx]
    return b[:, :SEQ].contiguous(), b[:, 1:].contiguous()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="Hugging Face Llama directory")
    ap.add_argument("--adapter", help="peft LoRA directory (initial adapter weights; lora mode)")
    ap.add_argument("--data", required=True, help="JSONL rows of 257 input_ids")
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--beta1", type=float, default=0.9)
    ap.add_argument("--beta2", type=float, default=0.999)
    ap.add_argument("--eps", type=float, default=1e-8)
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--grad-clip", type=float, default=1.0, help="global-norm clip; <= 0 disables")
    ap.add_argument("--mode", choices=("lora", "full"), default="lora")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if args.mode == "lora" and not args.adapter:
        ap.error("--mode lora needs --adapter")

    rows = load_rows(args.data)
    model = LlamaForCausalLM.from_pretrained(args.model, torch_dtype=torch.float32)
    peft_version = None
    try:
        import peft

        peft_version = peft.__version__
    except ImportError:
        if args.mode == "lora":
            raise
    if args.mode == "lora":
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, args.adapter, is_trainable=True)
        # The same counts `print_trainable_parameters` prints.
        trainable_count, all_count = model.get_nb_trainable_parameters()
    else:
        # Every parameter trains; `parameters()` counts tied embeddings once, as peft does.
        for p in model.parameters():
            p.requires_grad_(True)
        all_count = sum(p.numel() for p in model.parameters())
        trainable_count = all_count
    model.train()  # dropout is 0 in both the model and the adapter anyway

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(
        params,
        lr=args.lr,
        betas=(args.beta1, args.beta2),
        eps=args.eps,
        weight_decay=args.weight_decay,
    )

    losses, times = [], []
    for step in range(args.steps):
        x, y = step_batch(rows, step, args.batch)
        # Timed: one whole optimizer step.
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
        loss.backward()
        if args.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, args.grad_clip)
        opt.step()
        ms = (time.perf_counter() - start) * 1e3
        times.append(ms)
        losses.append(loss.item())  # computed before this step's update
        print(f"step {step} loss {losses[-1]:.6f} ms {ms:.2f}", file=sys.stderr, flush=True)

    median = statistics.median(times) if times else float("nan")
    result = {
        "mode": args.mode,
        "losses": losses,
        "step_ms": times,
        "median_step_ms": median,
        "tokens_per_s": args.batch * SEQ / (median / 1e3) if times else float("nan"),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "trainable_params": trainable_count,
        "all_params": all_count,
        "batch": args.batch,
        "seq_len": SEQ,
        "steps": args.steps,
        "attn_implementation": getattr(
            model.config, "_attn_implementation", None
        ),
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "peft_version": peft_version,
        "threads": torch.get_num_threads(),
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
