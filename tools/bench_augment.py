"""On-device augmentation vs timm's PIL train transform, side by side, images/s (higher is better).

    .venv/bin/python tools/bench_augment.py                          # --aa v0, 224 px, batch 64, 1 thread
    .venv/bin/python tools/bench_augment.py --aa rand-m9-mstd0.5-inc1 --json bench-augment.json
    .venv/bin/python tools/bench_augment.py --device cuda            # DeviceAugment on the GPU

Both sides do the same work from the same 224x224 uint8 RGB images (real photos from scikit-learn and
scikit-image, cropped and resized; i.e. what comes out of RandomResizedCrop): horizontal flip 0.5 -> `--aa`
policy -> to float / 255 -> normalize (ImageNet mean/std) -> random erasing (`--reprob`, `--remode`), ending
with one float32 (B, 3, 224, 224) batch. timm: `create_transform(is_training=True, ...)` without its
RandomResizedCrop, called per PIL image, then `torch.stack` (the DataLoader's collate). DeviceAugment: one
call on the uint8 batch (channels_last, as the FFCV/DALI loaders give it), into a new output tensor (the
headline ratio) and, as extra rows, into a recycled one (`out=`) and, on CPU, through the batched torch ops
that accelerators run (`compiled_cpu=False`) instead of the compiled CPU kernel. Rounds alternate between the
pipelines and the best round of each counts, so load from other processes hits all alike; the warm-up round
(numba's compilation or cache load) is not timed. Torch uses `--threads` threads on both sides (timm's
ToTensor/Normalize/RandomErasing run in torch too), and the compiled kernel as many numba threads.

Every round of a side re-seeds its RNGs (timm: Python's `random` and torch's; ours: its generator), so a side
repeats the same draws each round and the best round filters only the machine's noise. The two sides draw
differently (their RNGs differ), so each round covers `--images` photos (default 256, in batches of
`--batch-size`), enough that the mix of ops drawn (how many warps, say) evens out between the sides.

timm's v0/v0r policies ask for Posterize with 0 bits, which Pillow >= 11 rejects; this benchmark replaces
timm's posterize with one that returns a black image for 0 bits (the TF EfficientNet behaviour DeviceAugment
implements), only while it builds the timm transform.
"""
import argparse
import os
import random
import sys
import time
from contextlib import contextmanager

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import neatt  # noqa: E402,F401  (first, so that its OpenMP setting precedes torch's load, as in the trainer)
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from pipelines.augment import AugmentConfig, DeviceAugment  # noqa: E402
from neatt.runtime import configure_cpu_allocator  # noqa: E402
from neatt.fileio import write_json_atomic  # noqa: E402


def sample_photos(n: int, size: int, seed: int = 0) -> np.ndarray:
    """n distinct (size, size, 3) uint8 crops of real photos: random square crops, bicubic resize."""
    from sklearn.datasets import load_sample_images
    from skimage import data as skdata
    photos = list(load_sample_images().images) + [skdata.astronaut(), skdata.chelsea(), skdata.coffee(),
                                                   skdata.rocket()]
    rng = np.random.default_rng(seed)
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        p = photos[i % len(photos)]
        s = int(rng.integers(min(p.shape[:2]) // 2, min(p.shape[:2]) + 1))
        y, x = int(rng.integers(0, p.shape[0] - s + 1)), int(rng.integers(0, p.shape[1] - s + 1))
        out[i] = np.asarray(Image.fromarray(p[y:y + s, x:x + s]).resize((size, size), Image.BICUBIC))
    return out


def _posterize_zero_bits(img, bits_to_keep, **__):
    """timm's posterize, except that 0 bits gives a black image instead of Pillow's ValueError."""
    if bits_to_keep >= 8:
        return img
    mask = (0xFF << (8 - bits_to_keep)) & 0xFF
    return Image.fromarray(np.asarray(img) & np.uint8(mask))


@contextmanager
def posterize_accepting_zero_bits():
    """Swap timm's posterize for `_posterize_zero_bits` while timm builds its AugmentOps (they bind it then)."""
    import timm.data.auto_augment as taa
    names = [n for n in taa.NAME_TO_OP if n.startswith('Posterize')]
    saved = {n: taa.NAME_TO_OP[n] for n in names}
    taa.NAME_TO_OP.update({n: _posterize_zero_bits for n in names})
    try:
        yield
    finally:
        taa.NAME_TO_OP.update(saved)


def timm_transform(aa: str, img_size: int, reprob: float, remode: str, hflip: float, color_jitter: float):
    """timm's PIL train transform minus its RandomResizedCrop (the images already come cropped). Its color jitter
    is set, not left at timm's default 0.4 (which it applies without --aa and with 3a)."""
    from timm.data import create_transform
    from timm.data.transforms import RandomResizedCropAndInterpolation
    from torchvision import transforms
    with posterize_accepting_zero_bits():
        tf = create_transform(img_size, is_training=True, auto_augment=aa, re_prob=reprob, re_mode=remode,
                              hflip=hflip, interpolation='bicubic', color_jitter=color_jitter or None)
    assert isinstance(tf.transforms[0], RandomResizedCropAndInterpolation), tf
    return transforms.Compose(tf.transforms[1:])


def run(aa: str = 'v0', batch_size: int = 64, images: int = 256, img_size: int = 224, reprob: float = 0.5,
        remode: str = 'pixel', hflip: float = 0.5, rounds: int = 3, threads: int = 1, device: str = 'cpu',
        chunk_size: int = None, color_jitter: float = 0.0) -> dict:
    """Measure both pipelines on the same photos; returns the figures as a JSON-ready dict."""
    torch.set_num_threads(threads)
    images = max(images // batch_size, 1) * batch_size
    photos = sample_photos(images, img_size)
    pil_images = [Image.fromarray(p) for p in photos]
    dev = torch.device(device)
    # NHWC memory = channels_last, as loaders give
    batches = torch.from_numpy(photos).to(dev).permute(0, 3, 1, 2).split(batch_size)
    cfg = AugmentConfig(aa=aa, reprob=reprob, remode=remode, hflip=hflip, img_size=img_size, color_jitter=color_jitter)
    aug = DeviceAugment(cfg, chunk_size=chunk_size)  # first: it turns a bad --aa into a clear ValueError
    batched = DeviceAugment(cfg, chunk_size=chunk_size, compiled_cpu=False) if dev.type == 'cpu' else None
    tf = timm_transform(aa, img_size, reprob, remode, hflip, color_jitter)
    sync = torch.cuda.synchronize if dev.type == 'cuda' else (lambda: None)
    gen = torch.Generator().manual_seed(0)

    def timm_round():
        random.seed(0)  # timm's ops draw from Python's random, its erasing also from torch's
        torch.manual_seed(0)
        t0 = time.perf_counter()
        for i in range(0, images, batch_size):
            torch.stack([tf(im) for im in pil_images[i:i + batch_size]])
        return time.perf_counter() - t0

    buffer = torch.empty(batches[0].shape, device=dev, memory_format=torch.channels_last)

    def device_round(out=None, fn=aug):
        gen.manual_seed(0)
        sync()
        t0 = time.perf_counter()
        for batch in batches:
            fn(batch, gen, out=out)
        sync()
        return time.perf_counter() - t0

    timm_round(), device_round(), device_round(buffer)  # warm-up
    if batched is not None:
        device_round(fn=batched)
    timm_s, device_s, recycled_s, batched_s = [], [], [], []
    for _ in range(rounds):
        timm_s.append(timm_round())
        device_s.append(device_round())
        recycled_s.append(device_round(buffer))
        if batched is not None:
            batched_s.append(device_round(fn=batched))
    timm_ips, device_ips = images / min(timm_s), images / min(device_s)
    erasing = bench_erasing(aug(batches[0], gen), reprob, remode, rounds) if reprob > 0 else None
    return {
        'aa': aa, 'batch_size': batch_size, 'images': images, 'img_size': img_size, 'reprob': reprob,
        'remode': remode, 'color_jitter': color_jitter,
        'hflip': hflip, 'threads': threads, 'device': str(dev), 'rounds': rounds,
        'timm_pil': {'img_per_s': timm_ips, 'round_s': timm_s},
        'device_augment': {'img_per_s': device_ips, 'round_s': device_s, 'chunk_size': chunk_size},
        'device_augment_recycled_out': {'img_per_s': images / min(recycled_s), 'round_s': recycled_s},
        'device_augment_batched_torch': ({'img_per_s': images / min(batched_s), 'round_s': batched_s}
                                         if batched_s else None),
        'ratio': device_ips / timm_ips,
        'erasing': erasing,
    }


def bench_erasing(normalized: torch.Tensor, reprob: float, remode: str, rounds: int) -> dict:
    """Random erasing alone on a normalized batch: timm's RandomErasing (Python loop over the images) vs
    BatchRandomErasing (DeviceAugment's), ms per batch; each round erases a fresh copy of the batch."""
    from timm.data.random_erasing import RandomErasing
    from pipelines.augment.erasing import BatchRandomErasing
    B, C, H, W = normalized.shape
    sync = torch.cuda.synchronize if normalized.is_cuda else (lambda: None)
    timm_re = RandomErasing(reprob, mode=remode, device=normalized.device)
    ours = BatchRandomErasing(reprob, mode=remode)
    gen = torch.Generator().manual_seed(0)
    noise_gen = gen if not normalized.is_cuda else torch.Generator(normalized.device).manual_seed(0)

    def timed(fn):
        best = float('inf')
        for _ in range(rounds + 1):  # the first is a warm-up
            x = normalized.clone()
            sync()
            t0 = time.perf_counter()
            fn(x)
            sync()
            best = min(best, time.perf_counter() - t0)
        return best * 1000

    timm_ms = timed(timm_re)
    batched_ms = timed(lambda x: ours.paint(x, ours.sample(B, C, H, W, gen), noise_gen))
    return {'timm_ms_per_batch': timm_ms, 'batched_ms_per_batch': batched_ms}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--aa', default='v0', help="timm --aa string (default: v0); 'none': flip, normalize, erasing")
    p.add_argument('--batch-size', type=int, default=64)
    p.add_argument('--images', type=int, default=256,
                   help='photos per timed round (default 256), a whole number of batches')
    p.add_argument('--img-size', type=int, default=224)
    p.add_argument('--reprob', type=float, default=0.5)
    p.add_argument('--color-jitter', type=float, default=0.0,
                   help="both sides (default 0; DeiT III: --aa 3a --color-jitter 0.3)")
    p.add_argument('--remode', default='pixel', choices=('pixel', 'rand', 'const'))
    p.add_argument('--rounds', type=int, default=3, help='timed rounds per side (best counts)')
    p.add_argument('--threads', type=int, default=1,
                   help="torch threads, both sides (default 1; timm's PIL ops use one core whatever this is, so 1 "
                        "is the per-core comparison)")
    p.add_argument('--device', default='cpu', help="device for DeviceAugment: cpu or cuda[:N]")
    p.add_argument('--chunk', type=int, default=None, help='DeviceAugment chunk_size (default: its own)')
    p.add_argument('--json', default=None, help='also write the results to this JSON file')
    args = p.parse_args(argv)
    configure_cpu_allocator()  # as the trainer does; applies to both sides of the comparison
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        p.error(f'--device {args.device}: no CUDA device here; use --device cpu')
    aa = None if args.aa.lower() == 'none' else args.aa
    try:
        res = run(aa=aa, batch_size=args.batch_size, images=args.images, img_size=args.img_size, reprob=args.reprob,
                  remode=args.remode, rounds=args.rounds, threads=args.threads, device=args.device,
                  chunk_size=args.chunk, color_jitter=args.color_jitter)
    except ValueError as e:
        p.error(str(e))
    print(f"--aa {res['aa']}, {res['img_size']} px, {res['images']} images in batches of {res['batch_size']}, "
          f"color jitter {res['color_jitter']}, reprob {res['reprob']} "
          f"({res['remode']}), {res['threads']} torch thread(s)")
    print(f"{'pipeline':<34}{'img/s':>10}{'x timm PIL':>12}")
    print(f"{'timm PIL per image (+stack)':<34}{res['timm_pil']['img_per_s']:>10.0f}{1.0:>12.2f}")
    print(f"{'DeviceAugment on ' + res['device']:<34}{res['device_augment']['img_per_s']:>10.0f}"
          f"{res['ratio']:>12.2f}")
    recycled = res['device_augment_recycled_out']['img_per_s']
    print(f"{'  same, recycled output buffer':<34}{recycled:>10.0f}{recycled / res['timm_pil']['img_per_s']:>12.2f}")
    if res['device_augment_batched_torch']:
        b = res['device_augment_batched_torch']['img_per_s']
        print(f"{'  batched torch ops (not compiled)':<34}{b:>10.0f}{b / res['timm_pil']['img_per_s']:>12.2f}")
    if res['erasing']:
        e = res['erasing']
        print(f"random erasing alone, ms per batch: timm RandomErasing {e['timm_ms_per_batch']:.1f}, "
              f"batched {e['batched_ms_per_batch']:.1f}")
    if args.json:
        write_json_atomic(res, args.json)
    return res


if __name__ == '__main__':
    main()
