export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
python3 -c "import os,torch,timm,numba,triton,PIL;print('torch',torch.__version__,'timm',timm.__version__,'numba',numba.__version__,'triton',triton.__version__,'PIL',PIL.__version__, 'cpus', os.cpu_count())" 2>&1 || python3 -c "import torch,timm;print(torch.__version__,timm.__version__)"
echo '### cuda test'; timeout 90 python3 -m pytest -q -p no:cacheprovider tests/test_augment.py -k cuda 2>&1 | tail -4
echo '### bench_model'; timeout 150 python3 tools/bench_model.py --device cuda --amp bf16 --batch-size 64 --no-compile --warmup 3 --repeats 10 --json $OUT/model_b16_bf16_b64.json 2>&1 | grep -v Warning
echo '### profile'; timeout 90 python3 .gpu/prof_step.py 64 > $OUT/profile_b64.txt 2>&1; tail -c 300 $OUT/profile_b64.txt
echo '### bench_augment'; timeout 100 python3 tools/bench_augment.py --device cuda --batch-size 256 --images 512 --rounds 2 --json $OUT/augment_v0_cuda.json 2>&1 | tail -15
