"""The fused Ne-Att kernels of one source tree on one ViT-B/16 block (H = 12, B = 64, 200 tokens of which 197
real, head dim 64, bf16): everything between q k^T and the projection, i.e. the head mix, the noise, the softmax,
its product with v, and the projection's input (B, 197, 768) in bf16 as each tree's NestedAttention makes it.
Median ms of the forward with and without noise, and of forward + backward. measure_gpu.sh runs it for this tree
and each baseline tree, one process per tree (trees register the same custom ops), in alternating rounds. Trees
before 6901bbf return attn, and a batched matmul then multiplies it with v.

    python docs/device/kernel_ab.py TREE --json PATH [--settings JSON]
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
    parser.add_argument('--settings', type=json.loads, default={},
                        help="launch settings to change in the tree's module, e.g. "
                             "'{\"_ATTEND_BWD\": {\"num_warps\": 8}}' (trees since 6901bbf)")
    parser.add_argument('--repeats', type=int, default=50)
    args = parser.parse_args()
    sys.path.insert(0, os.path.abspath(args.tree))
    import torch
    from neatt.models import mix_softmax_triton as mst
    from neatt.models.attention import HeadMix
    for name, changes in args.settings.items():
        getattr(mst, name).update(changes)

    H, B, T, N, D = 12, 64, 200, 197, 64
    torch.manual_seed(0)
    mix = HeadMix(H).cuda()
    weights = [mix.fc1.weight, mix.fc1.bias, mix.fc2.weight, mix.fc2.bias, mix.fc3.weight, mix.fc3.bias]
    s0 = 3 * torch.randn(H, B, T, T, device='cuda', dtype=torch.bfloat16)
    v0 = torch.randn(H, B, T, D, device='cuda', dtype=torch.bfloat16)
    grad_z = torch.randn_like(s0)

    def attend(s, v, sigma):
        """z and the projection's input (B, N, H D) in bf16, as each tree's NestedAttention makes it."""
        if hasattr(mst, 'mix_noise_attend'):
            out = mst.mix_noise_attend(s, v, *weights, sigma, 0.2, n_keys=N)
            if len(out) == 4:  # since the eighteenth session: o is (B, N, H, D) in v's dtype
                return out[0], out[1].view(B, N, H * D)
            z, o, _ = out  # the seventeenth's: o float32 (B, T, H, D)
            return z, o[:, :N].reshape(B, N, H * D).to(v.dtype)
        z, attn = mst.mix_noise_softmax(s, *weights, sigma, 0.2, torch.bfloat16, n_keys=N)
        o = torch.bmm(attn.view(H * B, T, T), v.view(H * B, T, D))
        return z, o.view(H, B, T, D).permute(1, 2, 0, 3)[:, :N].reshape(B, N, H * D)

    grad_o = {}  # o's gradient, made once in the warm-up, outside the timed steps

    def step(sigma, backward):
        s, v = s0.detach().requires_grad_(backward), v0.detach().requires_grad_(backward)
        z, o = attend(s, v, sigma)
        if backward:
            if not grad_o:
                grad_o['o'] = torch.ones_like(o)
            torch.autograd.backward([z, o], [grad_z, grad_o['o']])

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

    result = {'tree': args.tree, 'settings': args.settings, 'device': torch.cuda.get_device_name(),
              'fwd_ms': median_ms(1.0, False), 'fwd_no_noise_ms': median_ms(0.0, False),
              'fwd_bwd_ms': median_ms(1.0, True)}
    print(json.dumps(result))
    with open(args.json, 'w') as f:
        json.dump(result, f, indent=1)


if __name__ == '__main__':
    main()
