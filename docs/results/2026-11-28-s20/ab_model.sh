# Alternating bench_model.py --no-compile runs: the committed tree (a git worktree at /tmp/neatt/s20/old, made with
# `git worktree add /tmp/neatt/s20/old <rev>` and the .venv linked in) against the working tree (2026-11-28).
for i in 1 2 3; do
  for v in old new; do
    d=/work/main; [ $v = old ] && d=/tmp/neatt/s20/old
    (cd $d && .venv/bin/python tools/bench_model.py --no-compile --warmup 2 --repeats 12 2>/dev/null \
      | grep "^eager" | sed "s/^/$v /")
  done
done
