"""Where one training step's GPU time goes, kernel by kernel: Ne-Att's ViT against timm's vanilla ViT of the same
size (default ViT-B/16, bf16 autocast, batch 64, channels-last, torch.compile'd as the trainer runs it), two
profiled steps after warm-up. Prints each model's top kernels by device time per step and writes them as JSON,
so that the next change to the fused kernels (neatt/models/mix_softmax_triton.py) starts from their measured
share of the step. `--device cpu` runs the same on a CPU (a smoke check of the script; the kernels differ).

    python docs/device/prof_step.py --json prof.json [--batch-size 64] [--eager] [--size base]
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.getcwd())


def profile_step(name, args):
    import timm
    import torch
    import torch.nn.functional as F
    from torch.profiler import ProfilerActivity, profile

    import neatt  # noqa: F401  (registers the Ne-Att models)
    device = torch.device(args.device)
    model = timm.create_model(name).to(device).train().to(memory_format=torch.channels_last)
    train_model = model if args.eager else torch.compile(model, dynamic=False)
    x = torch.randn(args.batch_size, 3, 224, 224, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (args.batch_size,), device=device)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = F.cross_entropy(train_model(x), y)
        loss.backward()
        model.zero_grad(set_to_none=True)

    for _ in range(3):  # compile, warm up
        step()
    sync = torch.cuda.synchronize if device.type == 'cuda' else (lambda: None)
    sync()
    activity = ProfilerActivity.CUDA if device.type == 'cuda' else ProfilerActivity.CPU
    with profile(activities=[activity]) as prof:
        for _ in range(args.steps):
            step()
        sync()
    events = [e for e in prof.key_averages() if e.device_time_total > 0 or device.type == 'cpu']
    time_of = (lambda e: e.device_time_total) if device.type == 'cuda' else (lambda e: e.self_cpu_time_total)
    events.sort(key=time_of, reverse=True)
    total = sum(time_of(e) for e in events) / args.steps / 1e3
    top = [{'kernel': e.key, 'ms_per_step': time_of(e) / args.steps / 1e3, 'calls_per_step': e.count / args.steps}
           for e in events[:args.top]]
    return {'model': name, 'ms_per_step_all_kernels': total, 'top': top}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--json', required=True, help='where to write the kernel tables')
    parser.add_argument('--size', default='base', help='ViT size: tiny, small, base, large (patch 16, 224 px)')
    parser.add_argument('--batch-size', type=int, default=64)
    parser.add_argument('--steps', type=int, default=2, help='profiled steps')
    parser.add_argument('--top', type=int, default=25, help='kernels listed per model')
    parser.add_argument('--eager', action='store_true', help='without torch.compile')
    parser.add_argument('--device', default='cuda')
    args = parser.parse_args()
    results = []
    for name in (f'vit_{args.size}_patch16_224', f'neatt_vit_{args.size}_patch16_224'):
        r = profile_step(name, args)
        results.append(r)
        print(f'===== {name}: {r["ms_per_step_all_kernels"]:.2f} ms of kernels per step (batch {args.batch_size}, '
              f'{"eager" if args.eager else "compiled"})')
        for t in r['top']:
            print(f'{t["ms_per_step"]:8.3f} ms {t["calls_per_step"]:6.1f}x  {t["kernel"][:100]}')
    with open(args.json, 'w') as f:
        json.dump({'args': vars(args), 'models': results}, f, indent=1)


if __name__ == '__main__':
    main()
