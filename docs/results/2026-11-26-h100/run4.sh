export PYTHONUNBUFFERED=1
echo '### tests'; timeout 100 python3 -m pytest -q -s -p no:cacheprovider tests/test_mix_softmax_triton.py -k "not interpreter" 2>&1 | grep -v -i warn | grep -E "relative|worst|passed|failed|Error|assert" | head -20
echo '### bench_model'; timeout 150 python3 tools/bench_model.py --device cuda --amp bf16 --batch-size 64 --warmup 5 --repeats 20 --json $OUT/model_b64_final.json 2>&1 | grep -v -i warn
