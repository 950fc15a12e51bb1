export PYTHONUNBUFFERED=1
echo '### tests'; timeout 150 python3 -m pytest -q -s -p no:cacheprovider tests/test_mix_softmax_triton.py -k "not interpreter" 2>&1 | grep -v -i warn | tail -30
if ! timeout 60 python3 -c "
import sys,os; sys.path.insert(0,os.getcwd()); import neatt,torch
from neatt.models import mix_softmax_triton as m
s=torch.randn(12,2,50,50,device='cuda',requires_grad=True); w=[torch.randn(48,12,device='cuda'),torch.zeros(48,device='cuda'),torch.randn(48,48,device='cuda'),torch.zeros(48,device='cuda'),torch.randn(12,48,device='cuda'),torch.zeros(12,device='cuda')]
z,a=m.mix_noise_softmax(s,*w,1.0,0.2,torch.float32); a.sum().backward(); print('smoke ok')"; then echo 'SMOKE FAILED: v1'; cp .gpu/mix_softmax_triton_v1.py neatt/models/mix_softmax_triton.py; fi
echo '### tune + bench'; timeout 400 python3 .gpu/tune_and_bench.py 2>&1 | grep -v -i warn
echo '### profile'; timeout 60 python3 .gpu/prof_step.py 64 > $OUT/profile_b64_fused2.txt 2>&1; tail -c 100 $OUT/profile_b64_fused2.txt
