"""Count the SASS instructions of the fused Ne-Att kernels per (query, key) position, all H = 12 heads of a
ViT-B/16 block at batch 64 (B = 64, T = 200 tokens, 197 real, head dim 64, hidden 48), bf16, compiled for an
H100 (sm_90) by Triton and its own ptxas with no GPU, specialised as a launch is (16-byte-aligned pointers,
integer arguments divisible by 16 marked so: `compile_launch(ints=...)`). The loop finder and the report are those
of ../2026-11-27-sass/sass_count.py. The attention kernels' loops take BLOCK_M x BLOCK_N positions of one head
per iteration, so their per-position count is multiplied by H.

    python docs/results/2026-11-28-attend/sass_count.py                 # this tree's kernels
    git show c4cc8af:neatt/models/mix_softmax_triton.py | sed 's/from .flops/from neatt.models.flops/;
        s/neatt::/old::/; s/ops\\.neatt\\./ops.old./' > /tmp/old.py
    python docs/results/2026-11-28-attend/sass_count.py /tmp/old.py     # kernels before the split, the same way
"""
import importlib.util
import os
import sys

from neatt.models.mix_softmax_triton import compile_launch  # with the launch's specialisation, for both versions

H = 12
INTS = dict(B=64, T_ALIGNS=25, K=197, H=H, D=64, P=64 * 200 * 200, F=48, R=64 * 200, N=200)


def load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


counts = load(os.path.join(os.path.dirname(__file__), '..', '2026-11-27-sass', 'sass_count.py'), 'sass_20261127')


def compile_with(kernel, settings, **constexprs):
    return compile_launch(kernel, settings, ints=INTS, **constexprs)


def split_kernels(mod):
    k = mod._kernels()
    for noise in (True, False):
        c = compile_with(k.mix_fwd, mod._MIX_FWD, HP=16, FP=64, MIX=True, NOISE=noise, FOLD=True)
        counts.report(f'mix forward, noise {"on" if noise else "off"}', c, mod._MIX_FWD['BLOCK_J'])
    counts.report('mix backward', compile_with(k.mix_bwd, mod._MIX_BWD, HP=16, FP=64, FOLD=True),
                  mod._MIX_BWD['BLOCK_J'])
    for name, settings in (('forward', mod._ATTEND_FWD), ('backward', mod._ATTEND_BWD)):
        tile = settings['BLOCK_M'] * settings['BLOCK_N'] / H  # positions of all heads per iteration
        kernel, extra = (k.attend_fwd, {}) if name == 'forward' else (k.attend_bwd, {'HAS_GZ': True})
        counts.report(f'attend {name}', compile_with(kernel, settings, ALIGN=8, DP=64, **extra), tile)


def kernels_before_the_split(mod):
    fwd, bwd = mod._kernels()
    (fwd_keys, bwd_keys), (fwd_warps, bwd_warps) = mod._BLOCK_J, mod._NUM_WARPS
    fold = {'FOLD': True} if 'FOLD' in fwd.arg_names else {}  # the biases in the padding, since 1817013
    for noise in (True, False):
        c = compile_with(fwd, {'num_warps': fwd_warps}, HP=16, FP=64, BLOCK_J=fwd_keys, MIX=True, NOISE=noise,
                         **fold)
        counts.report(f'forward, noise {"on" if noise else "off"}', c, fwd_keys)
    c = compile_with(bwd, {'num_warps': bwd_warps}, HP=16, FP=64, BLOCK_J=bwd_keys, MIX=True, HAS_GZ=True, **fold)
    counts.report('backward', c, bwd_keys)


def main():
    if len(sys.argv) > 1:
        kernels_before_the_split(load(sys.argv[1], 'kernels_under_test'))
    else:
        from neatt.models import mix_softmax_triton
        split_kernels(mix_softmax_triton)


if __name__ == '__main__':
    main()
