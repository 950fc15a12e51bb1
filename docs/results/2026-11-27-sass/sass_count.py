"""Count the SASS instructions of the fused Ne-Att kernels (neatt/models/mix_softmax_triton.py) per (query, key)
position, compiled for an H100 (sm_90) by Triton and its own ptxas, with no GPU: a proxy for their speed where
instruction issue limits them (docs/benchmarks.md, 2026-11-27). Prints, per kernel, registers, local-memory stack
(spills, or libdevice's slow paths) and, per loop, warp-instructions per position by kind.

    python docs/results/2026-11-27-sass/sass_count.py [MODULE_OR_FILE]   # default: neatt.models.mix_softmax_triton

For the kernels before 6901bbf (2026-11-28), which split the softmax into attention kernels: later trees are
counted by ../2026-11-28-attend/sass_count.py, which also counts these kernels (as a file, below) the way a
launch specialises them. Since then `compile_for` marks pointers 16-byte aligned, as a launch does, so this
script no longer reproduces the figures recorded beside it exactly.

Another version as a file, its custom ops renamed so that they do not clash (how before_359f12e.txt was made):

    git show 359f12e:neatt/models/mix_softmax_triton.py | sed 's/from .flops/from neatt.models.flops/;
        s/neatt::/old::/; s/ops\.neatt\./ops.old./' > /tmp/old.py
    PYTHONPATH=. python docs/results/2026-11-27-sass/sass_count.py /tmp/old.py > before_359f12e.txt
"""
import collections
import importlib
import importlib.util
import os
import re
import subprocess
import sys
import tempfile

import triton

from neatt.models.mix_softmax_triton import compile_for  # also for another version's kernels

BIN = os.path.join(os.path.dirname(triton.__file__), 'backends/nvidia/bin')
KINDS = {'HMMA': 'mma', 'HGMMA': 'mma', 'IMAD': 'int', 'IADD3': 'int', 'LOP3': 'int', 'SHF': 'int', 'LEA': 'int',
         'ISETP': 'int', 'SEL': 'int', 'VIADD': 'int', 'MUFU': 'mufu', 'FMUL': 'float', 'FADD': 'float',
         'FFMA': 'float', 'FSETP': 'float', 'FSEL': 'float', 'FMNMX': 'float', 'FRND': 'float', 'F2F': 'cvt',
         'F2FP': 'cvt', 'I2F': 'cvt', 'F2I': 'cvt', 'I2FP': 'cvt', 'LDS': 'smem', 'STS': 'smem', 'LDSM': 'smem',
         'STSM': 'smem', 'LDG': 'gmem', 'STG': 'gmem', 'LDL': 'local', 'STL': 'local', 'SHFL': 'shfl',
         'MOV': 'move', 'PRMT': 'move', 'BAR': 'sync'}


def load(name):
    if name.endswith('.py'):
        spec = importlib.util.spec_from_file_location('kernels_under_test', name)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    return importlib.import_module(name)


def _tool(name, cubin, *args):
    with tempfile.NamedTemporaryFile(suffix='.cubin') as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([f'{BIN}/{name}', *args, f.name], capture_output=True, text=True, check=True).stdout


def loops(cubin):
    """The instruction lists (opcodes) of the hot loops: from a label to a branch back to it, of at least 50
    instructions, holding no other such loop (an outer loop's count would add its inner loops' once per outer
    iteration; the small loops inside libdevice's rare slow paths are counted in, as straight code)."""
    ops, labels, spans = [], {}, []
    for line in _tool('nvdisasm', cubin, '-c').splitlines():
        label = re.match(r'\s*\.(L_x_\d+):', line)
        if label:
            labels[label.group(1)] = len(ops)
            continue
        m = re.match(r'\s*/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)(.*);', line)
        if m:
            ops.append(m.group(1))
            back = re.search(r'`\(\.(L_x_\d+)\)', m.group(2)) if m.group(1).startswith('BRA') else None
            if back and labels.get(back.group(1), len(ops)) < len(ops):
                spans.append((labels[back.group(1)], len(ops)))
    big = [(a, b) for a, b in spans if b - a >= 50]
    return [ops[a:b] for a, b in big if not any(a <= c and d <= b and (c, d) != (a, b) for c, d in big)]


def report(name, compiled, positions_per_iteration):
    cubin = compiled.asm['cubin']
    usage = _tool('cuobjdump', cubin, '--dump-resource-usage')
    warps = compiled.metadata.num_warps
    regs, stack = (re.search(key + r':(\d+)', usage).group(1) for key in ('REG', 'STACK'))
    print(f'{name}: registers {regs}, stack {stack} B, {warps} warps')
    for body in loops(cubin):
        kinds = collections.Counter(KINDS.get(op.split('.')[0], 'other') for op in body)
        print(f'  loop of {len(body)} instructions: {len(body) * warps / positions_per_iteration:.1f} '
              f'warp-instructions per position; ' + ', '.join(f'{k} {v}' for k, v in kinds.most_common()))


def main():
    mod = load(sys.argv[1] if len(sys.argv) > 1 else 'neatt.models.mix_softmax_triton')
    fwd, bwd = mod._kernels()
    (fwd_keys, bwd_keys), (fwd_warps, bwd_warps) = mod._BLOCK_J, mod._NUM_WARPS
    fold = {'FOLD': True} if 'FOLD' in fwd.arg_names else {}  # biases folded into the dots, as for H = 12
    for noise in (True, False):
        c = compile_for(fwd, dict(HP=16, FP=64, BLOCK_J=fwd_keys, MIX=True, NOISE=noise, PREC='tf32', **fold),
                        fwd_warps)
        report(f'forward, H = 12, bf16, noise {"on" if noise else "off"}', c, fwd_keys)
    for keys, warps in ((bwd_keys, bwd_warps), (32, 4)):
        c = compile_for(bwd, dict(HP=16, FP=64, BLOCK_J=keys, MIX=True, HAS_GZ=True, PREC='tf32', **fold), warps)
        report(f'backward, H = 12, bf16, {keys} keys per chunk', c, keys)


if __name__ == '__main__':
    main()
