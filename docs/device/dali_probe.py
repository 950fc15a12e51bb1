"""Where a DALI GPU pass spends its time, for a machine with a GPU and DALI (measure_gpu.sh dali runs it).

On the H200 (2026-11-27) the DALI loader gave 1.69k img/s to the GPU whatever its thread count (4, 8, 16) and
batch size (128, 256): not a CPU-thread limit. This splits a pass into the Python feed alone (the JPEG bytes,
their sizes and crop windows, ``DaliLoader._batches``; its first pass reads the sizes from the JPEG headers,
later ones use the kept sizes), the pipeline's build, its first batch and the steady batches after it, for
nvJPEG's default split between the hardware decoder and the hybrid (CPU Huffman) path, for the hybrid path
alone (``hw_decoder_load=0``), and without libjpeg's fancy chroma upsampling (``jpeg_fancy_upsampling=False``),
which the loader asks nvJPEG for so that its pixels match the CPU decoders' and which nvJPEG supports through
flags of its own: if it turns the hardware decoder off, the decoding falls to the hybrid path.

    python docs/device/dali_probe.py --data DATASET_DIR --json PATH [--threads 4 16] [--batch-size 128]

``--device cpu`` runs the same split of a CPU pass (one decoder variant), to check the script without a GPU.
"""
import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
import torch  # noqa: E402

from pipelines import dali_loader  # noqa: E402
from pipelines.base import build_loader  # noqa: E402

DECODER_VARIANTS = {"default": {}, "hybrid_only": {"hw_decoder_load": 0.0},
                    "plain_upsampling": {"jpeg_fancy_upsampling": False}}


def probe_pass(loader, epoch: int, sync) -> dict:
    """One pass of ``loader._iter_uint8``'s work, timed in its parts (seconds, images/s)."""
    t0 = time.perf_counter()
    pipe = loader._pipeline(loader._batches(epoch, 0))
    t_built = time.perf_counter()
    n = n_first = 0
    t_first = None
    try:
        while True:
            try:
                images, _ = pipe.run()
            except StopIteration:
                break
            batch = loader._to_torch(images)
            sync()
            n += batch.shape[0]
            if t_first is None:
                t_first, n_first = time.perf_counter(), batch.shape[0]
    finally:
        del pipe
    t_end = time.perf_counter()
    return {"build_s": t_built - t0, "first_batch_s": t_first - t_built, "images": n,
            "steady_img_per_s": (n - n_first) / (t_end - t_first), "pass_img_per_s": n / (t_end - t0)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="a converted dataset dir with DALI shards")
    p.add_argument("--json", required=True)
    p.add_argument("--threads", type=int, nargs="+", default=[4, 16])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="cuda")
    args = p.parse_args()
    cuda = args.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    variants = DECODER_VARIANTS if cuda else {"cpu": {}}  # the decoder arguments are nvJPEG's
    results = {"device": torch.cuda.get_device_name() if cuda else "cpu", "batch_size": args.batch_size,
               "runs": []}
    base_args = dict(dali_loader.MIXED_DECODER_ARGS)
    for threads in args.threads:
        loader = build_loader(args.data, split="train", backend="dali", batch_size=args.batch_size, image_size=224,
                              train=True, seed=0, device=args.device, num_workers=threads)
        feed = []  # the first pass reads each JPEG's header for its size, later passes use the kept sizes
        for _ in range(2):
            t0 = time.perf_counter()
            fed = sum(len(batch[0]) for batch in loader._batches(0, 0))
            feed.append(fed / (time.perf_counter() - t0))
        for variant, extra in variants.items():
            dali_loader.MIXED_DECODER_ARGS.clear()
            dali_loader.MIXED_DECODER_ARGS.update(base_args, **extra)
            passes = [probe_pass(loader, epoch, sync) for epoch in range(3)]  # the first warms up
            run = {"threads": threads, "decoder": variant, "feed_img_per_s": feed, "passes": passes[1:]}
            results["runs"].append(run)
            best = max(passes[1:], key=lambda r: r["steady_img_per_s"])
            print(f"threads {threads:2d} {variant:16s} feed {feed[0]:6.0f}, then {feed[1]:6.0f} img/s | "
                  f"build {best['build_s']:.3f} s, "
                  f"1st batch {best['first_batch_s']:.3f} s, steady {best['steady_img_per_s']:8.0f} img/s, "
                  f"whole pass {best['pass_img_per_s']:8.0f} img/s", flush=True)
    with open(args.json, "w") as f:
        json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
