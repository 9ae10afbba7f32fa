"""Deformable self-attention against plain multi-head attention: time and memory of a forward + backward pass.

The paper's setting is a sequence of 64 slice embeddings of 640 features per volume (batch 12 volumes, 8 heads,
reference grid stride 4). Each model runs on random ``(batch, slices, 640)`` tokens; a step is forward, ``sum()``,
backward (input and parameter gradients). Reported per model and sequence length:

- the median and the fastest step time (the minimum is the better estimate on a shared machine);
- the activations saved for backward (bytes of the distinct tensors autograd keeps, parameters excluded), which is
  what grows with the sequence length;
- the peak memory of the step: on CUDA ``max_memory_allocated`` above the set-up, on the CPU the peak resident set
  size above the set-up (model and inputs) of a child process that runs only that model (coarse: it includes the
  allocator's and the threads' overhead).

    python benchmarks/deformable_attention.py                              # 64 slices, batch 12, CPU
    python benchmarks/deformable_attention.py --slices 64 256 1024 --batch-size 4 --no-relative-bias
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

MODELS = ("deformable", "mha")


def peak_rss_mib() -> float:
    """Peak resident set size of this process in MiB (Linux reports kibibytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build(args: argparse.Namespace, name: str):
    """The attention module and a function mapping ``(B, L, dim)`` tokens to its output."""
    import torch

    if name == "deformable":
        from medssl.attention import DeformableAttention1d

        module = DeformableAttention1d(
            args.dim, num_heads=args.heads, stride=args.stride, relative_position_bias=args.relative_bias
        )
        return module, module
    module = torch.nn.MultiheadAttention(args.dim, args.heads, batch_first=True)
    return module, lambda x: module(x, x, x, need_weights=False)[0]


def saved_activation_bytes(run, x, params) -> int:
    """Bytes of the distinct storages autograd saves for backward in ``run(x)``, parameters excluded."""
    import torch

    skip = {p.untyped_storage().data_ptr() for p in params}
    storages: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run(x).sum().backward()
    return sum(storages.values())


def measure(args: argparse.Namespace, name: str, slices: int) -> dict:
    """Time ``args.steps`` forward + backward passes after ``args.warmup`` untimed ones, in this process."""
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    module, run = build(args, name)
    module = module.to(device).train()
    x = torch.randn(args.batch_size, slices, args.dim, device=device, requires_grad=True)
    params = list(module.parameters())
    activations = saved_activation_bytes(run, x, params)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    base_rss = peak_rss_mib()
    times = []
    for step in range(args.warmup + args.steps):
        for tensor in (x, *params):
            tensor.grad = None
        start = time.perf_counter()
        run(x).sum().backward()
        if cuda:
            torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if cuda else peak_rss_mib() - base_rss
    return {
        "model": name,
        "slices": slices,
        "batch_size": args.batch_size,
        "dim": args.dim,
        "heads": args.heads,
        "keys_per_query": -(-slices // args.stride) if name == "deformable" else slices,
        "relative_bias": args.relative_bias and name == "deformable",
        "parameters": sum(p.numel() for p in params),
        "device": args.device,
        "threads": args.threads,
        "median_step_ms": 1000 * sorted(times)[len(times) // 2],
        "min_step_ms": 1000 * min(times),
        "saved_activations_mib": activations / 2**20,
        "peak_memory_mib": peak,
        "peak_memory_kind": "cuda max_memory_allocated" if cuda else "peak RSS above set-up",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--slices", nargs="+", type=int, default=[64], help="sequence lengths")
    parser.add_argument("--batch-size", type=int, default=12, help="sequences (volumes) per step")
    parser.add_argument("--dim", type=int, default=640, help="features per slice")
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--stride", type=int, default=4, help="reference-grid stride of the deformable attention")
    parser.add_argument(
        "--relative-bias",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="relative-position bias of the deformable attention (plain attention has none)",
    )
    parser.add_argument("--steps", type=int, default=20, help="timed steps (median and minimum are reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this file")
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "SLICES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args, args.child[0], int(args.child[1]))))
        return
    results = []
    for slices in args.slices:
        for name in args.models:
            command = [sys.executable, __file__, "--child", name, str(slices)]
            for option in ("batch_size", "dim", "heads", "stride", "steps", "warmup", "threads", "device"):
                command += [f"--{option.replace('_', '-')}", str(getattr(args, option))]
            command.append("--relative-bias" if args.relative_bias else "--no-relative-bias")
            done = subprocess.run(command, check=True, capture_output=True, text=True)
            result = json.loads(done.stdout.strip().splitlines()[-1])
            results.append(result)
            print(
                f"{name:10s} {slices:5d} slices × {result['dim']} (batch {result['batch_size']}, "
                f"{result['keys_per_query']:4d} keys/query{', bias' if result['relative_bias'] else ''}, "
                f"{result['parameters'] / 1e6:.2f} M params)  "
                f"{result['median_step_ms']:8.2f} ms/step (min {result['min_step_ms']:.2f})  "
                f"saved activations {result['saved_activations_mib']:7.1f} MiB  "
                f"peak {result['peak_memory_mib']:7.1f} MiB ({result['peak_memory_kind']})",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
