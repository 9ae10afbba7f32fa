"""MedMAE pre-training speed on the CPU: images/s of a full training step and peak memory, per model size.

A step is forward (random 75 % masking, encoder, decoder), the masked-patch loss with norm-pix targets, backward and
an AdamW update, on random 1-channel images. Every model runs in its own child process, so its peak resident memory
(``ru_maxrss``) is its own; the report gives it in total and above the process after its imports.

    python benchmarks/medmae_pretrain.py                                 # ViT-B/16 at 224² and the demo models
    python benchmarks/medmae_pretrain.py --models demo --batch-size 64 --threads 2 --steps 20
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# the proposed demo model: ViT-Tiny width (192, 3 heads), 4 blocks, decoder 128 × 2, on the paper's geometry
# (224², 16² patches: 196 tokens, 49 visible), so grids, heads and figures stay those of ViT-B/16
DEMO = {
    "img_size": 224,
    "patch_size": 16,
    "hidden_size": 192,
    "num_layers": 4,
    "num_heads": 3,
    "mlp_dim": 768,
    "decoder_hidden_size": 128,
    "decoder_num_layers": 2,
    "decoder_num_heads": 4,
    "decoder_mlp_dim": 512,
}

#: ``MaskedAutoencoderViT`` arguments and the default batch size of each benchmarked model.
MODELS = {
    "vit-b16": (
        {
            "img_size": 224,
            "patch_size": 16,
            "hidden_size": 768,
            "num_layers": 12,
            "num_heads": 12,
            "mlp_dim": 3072,
            "decoder_hidden_size": 512,
            "decoder_num_layers": 8,
            "decoder_num_heads": 16,
            "decoder_mlp_dim": 2048,
        },
        8,
    ),
    "demo": (DEMO, 32),
    # the same widths on 96² images with 8² patches (144 tokens, 36 visible)
    "demo-96": ({**DEMO, "img_size": 96, "patch_size": 8}, 32),
}


def peak_rss_mib() -> float:
    """Peak resident set size of this process in MiB (Linux reports kibibytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(name: str, batch_size: int, steps: int, warmup: int, threads: int) -> dict:
    """Time ``steps`` training steps after ``warmup`` untimed ones, in this process."""
    import torch

    sys.path.insert(0, str(ROOT / "bundles" / "medmae"))
    from scripts.networks import MaskedAutoencoderViT, MaskedPatchLoss, param_groups_weight_decay

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    base_rss = peak_rss_mib()
    config, _ = MODELS[name]
    net = MaskedAutoencoderViT(**config).train()
    loss_fn = MaskedPatchLoss(config["patch_size"])
    optimizer = torch.optim.AdamW(param_groups_weight_decay(net, 0.05), lr=1.5e-4, betas=(0.9, 0.95))
    images = torch.rand(batch_size, 1, config["img_size"], config["img_size"])
    times = []
    for step in range(warmup + steps):
        start = time.perf_counter()
        loss = loss_fn(net(images), images)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step >= warmup:
            times.append(time.perf_counter() - start)
    step_s = sorted(times)[len(times) // 2]
    return {
        "model": name,
        "parameters": sum(p.numel() for p in net.parameters()),
        "batch_size": batch_size,
        "threads": threads,
        "median_step_s": step_s,
        "images_per_s": batch_size / step_s,
        "peak_rss_mib": peak_rss_mib(),
        "peak_rss_above_imports_mib": peak_rss_mib() - base_rss,
        "loss": loss.item(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["vit-b16", "demo", "demo-96"])
    parser.add_argument("--batch-size", type=int, default=None, help="default: 8 for vit-b16, 32 for the demos")
    parser.add_argument("--steps", type=int, default=5, help="timed steps (the median is reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this file")
    parser.add_argument("--child", choices=sorted(MODELS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        batch = args.batch_size or MODELS[args.child][1]
        print(json.dumps(measure(args.child, batch, args.steps, args.warmup, args.threads)))
        return
    results = []
    for name in args.models:
        command = [sys.executable, __file__, "--child", name, "--steps", str(args.steps)]
        command += ["--warmup", str(args.warmup), "--threads", str(args.threads)]
        if args.batch_size:
            command += ["--batch-size", str(args.batch_size)]
        done = subprocess.run(command, check=True, capture_output=True, text=True)
        result = json.loads(done.stdout.strip().splitlines()[-1])
        results.append(result)
        print(
            f"{name:9s} {result['parameters'] / 1e6:7.2f} M params  batch {result['batch_size']:3d}  "
            f"{result['threads']} threads  {result['median_step_s']:7.3f} s/step  "
            f"{result['images_per_s']:8.2f} images/s  peak RSS {result['peak_rss_mib']:7.0f} MiB "
            f"(+{result['peak_rss_above_imports_mib']:.0f} over imports)",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
