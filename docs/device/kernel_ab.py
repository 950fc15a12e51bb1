"""The fused Ne-Att kernels of one source tree on one ViT-B/16 block of logits (H = 12, B = 64, N = 197, bf16):
median ms of the forward with and without noise, and of forward + backward. measure_gpu.sh runs it for this tree
and each baseline tree, one process per tree (each registers the same custom ops), in alternating rounds.

    python docs/device/kernel_ab.py TREE --json PATH [--fwd KEYS WARPS] [--bwd KEYS WARPS PROGRAMS_PER_SM]
"""
import argparse
import json
import os
import sys
import time


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('tree', help='source tree holding neatt/ (e.g. . or .gpu/base-...)')
    parser.add_argument('--json', required=True, help='where to write the figures')
    parser.add_argument('--fwd', type=int, nargs=2, metavar=('KEYS', 'WARPS'),
                        help="the forward's launch settings instead of the tree's own")
    parser.add_argument('--bwd', type=int, nargs=3, metavar=('KEYS', 'WARPS', 'PROGRAMS_PER_SM'),
                        help="the backward's launch settings instead of the tree's own")
    parser.add_argument('--repeats', type=int, default=50)
    args = parser.parse_args()
    sys.path.insert(0, os.path.abspath(args.tree))
    import torch
    from neatt.models import mix_softmax_triton as mst
    from neatt.models.attention import HeadMix
    if args.fwd:
        (keys, warps), (_, bwd_keys), (_, bwd_warps) = args.fwd, mst._BLOCK_J, mst._NUM_WARPS
        mst._BLOCK_J, mst._NUM_WARPS = (keys, bwd_keys), (warps, bwd_warps)
    if args.bwd:
        keys, warps, mst._PROGRAMS_PER_SM = args.bwd
        mst._BLOCK_J, mst._NUM_WARPS = (mst._BLOCK_J[0], keys), (mst._NUM_WARPS[0], warps)

    H, B, N = 12, 64, 197
    torch.manual_seed(0)
    mix = HeadMix(H).cuda()
    weights = [mix.fc1.weight, mix.fc1.bias, mix.fc2.weight, mix.fc2.bias, mix.fc3.weight, mix.fc3.bias]
    s0 = 3 * torch.randn(H, B, N, N, device='cuda', dtype=torch.bfloat16)
    grad_z, grad_attn = torch.randn(2, H, B, N, N, device='cuda', dtype=torch.bfloat16)

    def step(sigma, backward):
        s = s0.detach().requires_grad_(backward)
        z, attn = mst.mix_noise_softmax(s, *weights, sigma, 0.2, torch.bfloat16)
        if backward:
            torch.autograd.backward([z, attn], [grad_z, grad_attn])

    def median_ms(sigma, backward):
        for _ in range(3):  # compile, warm up
            step(sigma, backward)
        times = []
        for _ in range(args.repeats):
            torch.cuda.synchronize()
            t = time.perf_counter()
            step(sigma, backward)
            torch.cuda.synchronize()
            times.append(1e3 * (time.perf_counter() - t))
        return sorted(times)[len(times) // 2]

    result = {'tree': args.tree, 'block_j': list(mst._BLOCK_J), 'num_warps': list(mst._NUM_WARPS),
              'programs_per_sm': mst._PROGRAMS_PER_SM, 'device': torch.cuda.get_device_name(),
              'fwd_ms': median_ms(1.0, False), 'fwd_no_noise_ms': median_ms(0.0, False),
              'fwd_bwd_ms': median_ms(1.0, True)}
    print(json.dumps(result))
    with open(args.json, 'w') as f:
        json.dump(result, f, indent=1)


if __name__ == '__main__':
    main()
