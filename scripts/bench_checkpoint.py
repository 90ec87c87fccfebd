"""What checking a checkpoint costs at a real size: the manifest's SHA-256 on save and on resume.

    python scripts/bench_checkpoint.py                       # Qwen2.5-Math-1.5B's file sizes, under /tmp
    python scripts/bench_checkpoint.py --shape qwen2.5-math-7b --dir /big/disk/ckpt

Builds a checkpoint directory with the file sizes of the 1-GPU 1.5B recipe (configs/paper): the policy's
weights in float32 as model.safetensors (scripts/random_model.py, random values) and AdamW's two moments
(2 x 4 bytes per parameter) as an optimizer shard. The shard is a sparse file: SHA-256's cost does not depend
on the bytes, and this keeps the disk out of the measurement. Then it times, each `--repeats` times:
  read     reading every file once (what loading the checkpoint costs at least): the baseline
  manifest trust.write_manifest, what a save adds
  verify   trust.verify, what a resume adds
and prints each time with its ratio to `read`. Run it alone: two busy processes on 2 cores distort every timing.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch  # noqa: E402

from dynamo import trust  # noqa: E402
from scripts.random_model import SHAPES, build  # noqa: E402


def read_all(directory: str) -> None:
    for root, _, names in os.walk(directory):
        for name in names:
            with open(os.path.join(root, name), "rb") as f:
                while f.read(16 << 20):
                    pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="qwen2.5-math-1.5b")
    parser.add_argument("--dir", default="/tmp/bench-checkpoint", help="where to build the checkpoint (kept)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    weights = os.path.join(args.dir, "model.safetensors")
    if not os.path.exists(weights):
        print(f"building {args.shape} in float32 under {args.dir} (random weights) ...", flush=True)
        build(SHAPES[args.shape], args.dir, torch.float32)
    params = (os.path.getsize(weights) - 100_000) // 4  # float32; the header is a few kB
    shard = os.path.join(args.dir, "optimizer", "__0_0.distcp")
    os.makedirs(os.path.dirname(shard), exist_ok=True)
    with open(shard, "wb") as f:
        f.truncate(2 * 4 * params)  # AdamW's exp_avg and exp_avg_sq in float32
    total = sum(os.path.getsize(os.path.join(r, n)) for r, _, ns in os.walk(args.dir) for n in ns)
    print(f"{args.dir}: {total / 2 ** 30:.2f} GiB in all ({os.path.getsize(weights) / 2 ** 30:.2f} GiB weights, "
          f"{os.path.getsize(shard) / 2 ** 30:.2f} GiB optimizer shard); {os.cpu_count()} CPUs")
    times = {"read": [], "manifest": [], "verify": []}
    for _ in range(args.repeats):
        for name, fn in (("read", lambda: read_all(args.dir)), ("manifest", lambda: trust.write_manifest(args.dir)),
                         ("verify", lambda: trust.verify(args.dir))):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["read"])
    print(f"{'':10s} {'seconds':>9s} {'GiB/s':>7s} {'/ read':>7s}   (median of {args.repeats})")
    for name, ts in times.items():
        t = statistics.median(ts)
        print(f"{name:10s} {t:9.2f} {total / 2 ** 30 / t:7.2f} {t / base:7.2f}")


if __name__ == "__main__":
    main()
