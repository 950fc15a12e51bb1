# Alternating bench_model.py --no-compile runs of one model: the tree before this session (a git worktree at
# /tmp/neatt/s21/old, made with `git worktree add /tmp/neatt/s21/old e8130fb` and the .venv linked in) against the
# working tree (2026-11-28). Usage: bash ab_model.sh MODEL BATCH [PAIRS]
for i in $(seq ${3:-3}); do
  for v in old new; do
    d=/work/main; [ $v = old ] && d=/tmp/neatt/s21/old
    (cd $d && .venv/bin/python tools/bench_model.py --no-compile --model $1 --batch-size $2 --warmup 2 \
      --repeats 8 2>/dev/null | grep "^eager" | sed "s/^/$v /")
  done
done
