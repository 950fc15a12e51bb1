"""Top CUDA kernels of one Ne-Att / vanilla ViT-B/16 bf16 training step (eager), for design decisions."""
import sys, os
sys.path.insert(0, os.getcwd())
import neatt, timm, torch, torch.nn.functional as F
from torch.profiler import profile, ProfilerActivity
B = int(sys.argv[1]) if len(sys.argv) > 1 else 64
for name in ['vit_base_patch16_224', 'neatt_vit_base_patch16_224']:
    m = timm.create_model(name).cuda().train()
    x = torch.randn(B, 3, 224, 224, device='cuda').contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (B,), device='cuda')
    def step():
        with torch.autocast('cuda', dtype=torch.bfloat16):
            loss = F.cross_entropy(m(x), y)
        loss.backward(); m.zero_grad(set_to_none=True)
    for _ in range(3): step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(2): step()
        torch.cuda.synchronize()
    print('=====', name, 'batch', B, '(2 steps)')
    print(prof.key_averages().table(sort_by='cuda_time_total', row_limit=22, max_name_column_width=70))
    del m
