"""Ne-Att vs vanilla timm ViT: forward + backward step time, measured side by side in one run.

Usage:
    python tools/bench_model.py                                   # CPU: ViT-Ti/16 at 224, batch 16, eager + compiled
    python tools/bench_model.py --model vit_small_patch16_224 --batch-size 8 --no-compile
    python tools/bench_model.py --device cuda --model vit_base_patch16_224 --batch-size 64 --amp bf16 \\
        --json bench_model.json                                   # GPU default model is ViT-B/16

Units: milliseconds per training step (forward, cross-entropy, backward; no optimizer step), the median of
`--repeats` steps after `--warmup` steps; ratio = Ne-Att / vanilla. Peak memory is MiB per image
(`torch.cuda.max_memory_allocated` over a step); the CPU reports none, so it is printed as n/a.
Throughput: each model's FLOPs per step are counted once with torch's FlopCounterMode (eager, the same math as
compiled), giving TFLOP/s and, where the peak is known (`--peak-tflops`, default for H100/H200: 989 dense
bf16/fp16), MFU = achieved / peak. These are model FLOPs: Ne-Att's are counted with its fused GPU path off,
since that path pads the tokens (197 -> 200 at 224 px) and would count the padding's work too.
Both models have the same weights (the vanilla state dict is loaded into Ne-Att) and run in train mode (noise
on, sigma 1). Steps alternate between the two models so that both see the same machine load.
"""
import argparse
import os
import statistics
import sys
import time
from typing import Callable, Dict, Optional
from unittest import mock

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import neatt  # noqa: E402,F401  (registers neatt_vit_*; first, so that its OpenMP setting precedes torch's load)
import timm  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402
from neatt.models import load_checkpoint, mix_softmax_triton  # noqa: E402
from neatt.runtime import configure_cpu_allocator  # noqa: E402
from neatt.fileio import write_json_atomic  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument('--model', default=None,
                   help='vanilla timm name (vit_*); Ne-Att is neatt_<name>. '
                        'Default: vit_base_patch16_224 on CUDA, vit_tiny_patch16_224 on CPU')
    p.add_argument('--batch-size', type=int, default=None, help='default 64 on CUDA, 16 on CPU')
    p.add_argument('--img-size', type=int, default=None, help="default: the model's own")
    p.add_argument('--depth', type=int, default=None, help="override the number of blocks (quick CPU runs)")
    p.add_argument('--amp', choices=['none', 'bf16', 'fp16'], default='none', help='autocast dtype')
    p.add_argument('--compile', action=argparse.BooleanOptionalAction, default=True,
                   help='also measure torch.compile (default on)')
    p.add_argument('--eager', action=argparse.BooleanOptionalAction, default=True,
                   help='measure eager mode (default on)')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--warmup', type=int, default=3, help='untimed steps per model and mode')
    p.add_argument('--repeats', type=int, default=5, help='timed steps per model and mode (median)')
    p.add_argument('--grad-checkpointing', action='store_true', help='set_grad_checkpointing on both models')
    p.add_argument('--peak-tflops', type=float, default=None,
                   help='device peak for MFU (default: 989 for H100/H200 with --amp bf16/fp16, else no MFU)')
    p.add_argument('--json', default=None, help='write the results to this JSON file')
    args = p.parse_args(argv)
    cuda = args.device.startswith('cuda')
    if cuda and not torch.cuda.is_available():
        p.error(f'--device {args.device}: no CUDA device is visible; use --device cpu')
    args.model = args.model or ('vit_base_patch16_224' if cuda else 'vit_tiny_patch16_224')
    if args.model.startswith('neatt_'):
        args.model = args.model[len('neatt_'):]
    if 'neatt_' + args.model not in timm.list_models('neatt_*'):
        p.error(f'--model {args.model}: no Ne-Att twin; expected one of '
                f"{[n[len('neatt_'):] for n in timm.list_models('neatt_*')]}")
    args.batch_size = args.batch_size or (64 if cuda else 16)
    if args.batch_size < 1 or args.repeats < 1 or args.warmup < 0:
        p.error('--batch-size and --repeats must be >= 1, --warmup >= 0')
    return args


def build_models(args) -> Dict[str, torch.nn.Module]:
    """The vanilla timm ViT and its Ne-Att twin with the same weights (head_mix at its init)."""
    kw = {} if args.img_size is None else {'img_size': args.img_size}
    if args.depth is not None:
        kw['depth'] = args.depth
    torch.manual_seed(0)
    if args.model.endswith('_patch4_32'):  # no timm vit_* of this name: build the same config from tiny/small
        vanilla = timm.create_model(args.model.replace('_patch4_32', '_patch16_224'),
                                    **{'img_size': 32, 'patch_size': 4, **kw})
    else:
        vanilla = timm.create_model(args.model, **kw)
    ne = timm.create_model('neatt_' + args.model, **kw)
    load_checkpoint(ne, vanilla.state_dict())
    models = {'vanilla': vanilla, 'neatt': ne}
    for m in models.values():
        m.to(args.device).train()
        m.set_grad_checkpointing(args.grad_checkpointing)
    return models


def make_step(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, amp: Optional[torch.dtype],
              device_type: str) -> Callable[[], None]:
    def step():
        with torch.autocast(device_type, dtype=amp, enabled=amp is not None):
            loss = F.cross_entropy(model(images), labels)
        loss.backward()
        model.zero_grad(set_to_none=True)
    return step


def count_flops(step: Callable[[], None]) -> int:
    """FLOPs of one training step (forward + backward) as torch's FlopCounterMode counts them."""
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def default_peak_tflops(device_name: str, amp: str) -> Optional[float]:
    """Dense bf16/fp16 tensor-core peak of the GPUs we know (H100/H200 SXM: 989 TFLOP/s), else None."""
    if amp != 'none' and ('H100' in device_name or 'H200' in device_name):
        return 989.0
    return None


def measure(steps: Dict[str, Callable[[], None]], args) -> Dict[str, Dict[str, Optional[float]]]:
    """Warm up each step, then alternate timed steps between models; median ms and CUDA peak MiB/image."""
    cuda = args.device.startswith('cuda')
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for step in steps.values():
        for _ in range(args.warmup):
            step()
    sync()
    times = {name: [] for name in steps}
    peak = {name: None for name in steps}
    for _ in range(args.repeats):
        for name, step in steps.items():
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            step()
            sync()
            times[name].append((time.perf_counter() - t0) * 1e3)
            if cuda:
                peak[name] = torch.cuda.max_memory_allocated() / 2 ** 20 / args.batch_size
    return {name: {'ms': statistics.median(times[name]), 'ms_all': times[name], 'peak_mib_per_image': peak[name]}
            for name in steps}


def main(argv=None) -> dict:
    args = parse_args(argv)
    allocator_tuned = configure_cpu_allocator()  # as the trainer does; both models alike
    amp = {'none': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}[args.amp]
    device_type = torch.device(args.device).type
    models = build_models(args)
    size = models['vanilla'].patch_embed.img_size
    torch.manual_seed(1)
    images = torch.randn(args.batch_size, 3, *size, device=args.device).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, models['vanilla'].num_classes, (args.batch_size,), device=args.device)

    with mock.patch.object(mix_softmax_triton, 'available', return_value=False):  # model FLOPs: no padding
        flops = {name: count_flops(make_step(m, images, labels, amp, device_type)) for name, m in models.items()}
    modes = (['eager'] if args.eager else []) + (['compiled'] if args.compile else [])
    results = {}
    for mode in modes:
        run = {name: (torch.compile(m) if mode == 'compiled' else m) for name, m in models.items()}
        steps = {name: make_step(m, images, labels, amp, device_type) for name, m in run.items()}
        r = measure(steps, args)
        r['ratio'] = r['neatt']['ms'] / r['vanilla']['ms']
        results[mode] = r

    device_name = torch.cuda.get_device_name() if device_type == 'cuda' else f'cpu ({torch.get_num_threads()} threads)'
    peak = args.peak_tflops or default_peak_tflops(device_name, args.amp)
    for r in results.values():
        for name in models:
            r[name]['tflops'] = flops[name] / (r[name]['ms'] * 1e-3) / 1e12
            r[name]['mfu'] = r[name]['tflops'] / peak if peak else None
    openmp = {k: os.environ[k] for k in ('OMP_WAIT_POLICY', 'GOMP_SPINCOUNT') if k in os.environ}
    depth = len(models['vanilla'].blocks)
    print(f"# {args.model} vs neatt_{args.model}, depth {depth}, batch {args.batch_size}, {size[0]}x{size[1]}, amp {args.amp}, "
          f"{device_name}, OpenMP {openmp}, torch {torch.__version__}, timm {timm.__version__}")
    print(f"{'mode':<10}{'vanilla ms':>12}{'neatt ms':>12}{'ratio':>8}{'vanilla MiB/img':>17}{'neatt MiB/img':>15}")
    for mode, r in results.items():
        mem = ['n/a' if r[n]['peak_mib_per_image'] is None else f"{r[n]['peak_mib_per_image']:.1f}"
               for n in ('vanilla', 'neatt')]
        print(f"{mode:<10}{r['vanilla']['ms']:>12.1f}{r['neatt']['ms']:>12.1f}{r['ratio']:>8.2f}{mem[0]:>17}{mem[1]:>15}")
    print(f"GFLOP per image and step: vanilla {flops['vanilla'] / args.batch_size / 1e9:.1f}, "
          f"neatt {flops['neatt'] / args.batch_size / 1e9:.1f}" + (f"; MFU against {peak:g} TFLOP/s:" if peak else ''))
    for mode, r in results.items():
        print(f"  {mode:<10}" + ', '.join(
            f"{n} {r[n]['tflops']:.1f} TFLOP/s" + (f" ({100 * r[n]['mfu']:.1f}% MFU)" if peak else '')
            for n in ('vanilla', 'neatt')))

    payload = {
        'model': args.model, 'depth': depth, 'batch_size': args.batch_size, 'img_size': list(size), 'amp': args.amp,
        'device': device_name, 'grad_checkpointing': args.grad_checkpointing, 'warmup': args.warmup,
        'repeats': args.repeats, 'torch': torch.__version__, 'timm': timm.__version__,
        'date': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()), 'host_allocator_tuned': allocator_tuned,
        'openmp_env': openmp, 'flops_per_step': flops, 'peak_tflops': peak,
        'results': results,
    }
    if args.json:
        write_json_atomic(payload, args.json)
    return payload


if __name__ == '__main__':
    main()
