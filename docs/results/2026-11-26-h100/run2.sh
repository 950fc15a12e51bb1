export PYTHONUNBUFFERED=1
echo '### tests'; timeout 150 python3 -m pytest -q -p no:cacheprovider -x tests/test_mix_softmax_triton.py -k "not interpreter" 2>&1 | tail -25
echo '### sweep'; timeout 120 python3 .gpu/sweep.py 64 2>&1 | grep -v Warn
echo '### bench_model'; timeout 300 python3 tools/bench_model.py --device cuda --amp bf16 --batch-size 64 --warmup 3 --repeats 10 --json $OUT/model_b16_bf16_b64_fused.json 2>&1 | grep -v -i warn
echo '### profile'; timeout 60 python3 .gpu/prof_step.py 64 > $OUT/profile_b64_fused.txt 2>&1; tail -c 200 $OUT/profile_b64_fused.txt
