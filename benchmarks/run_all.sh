#!/usr/bin/env bash
# asyncjobs side by side with the anchors (pgqueuer, procrastinate, graphile-worker, DBOS,
# oban), in ONE session: RUNS rounds (default 3), the libraries interleaved with their order
# reversed every other round, each library's harness run followed by its "100 concurrent
# callers" enqueue run, the raw-driver baselines after each round, then asyncjobs' own extra
# rows (run_async, SSE lag, limits cost: in every round; cost growth and soak: once at the end).
# Writes everything into OUT (default benchmarks/results/<UTC stamp>), the tables in table.md.
#
# Usage: benchmarks/run_all.sh [extra args passed to every harness script, e.g. --n 10000]
# Env:
#   RUNS=3              rounds
#   LIBS="asyncjobs pgqueuer procrastinate graphile dbos oban extra"   what each round runs
#   LIMITS_N=...        runs per variant of the limits phase (default: the harness's --n)
#   GROWTH=1            0 skips the growth + soak phases (about 4 minutes)
#   GROWTH_ARGS=...     extra args for them, e.g. "--growth-sizes 10000,100000"
#   OUT=...             result folder
#   BENCH_VENV=...      the one venv for every Python adapter (default benchmarks/.venv-bench)
#   BENCH_PYTHON=...    the Python >= 3.12 it is made with (oban needs 3.12; default: python3.12
#                       on PATH, else pyenv's newest 3.12)
#   BENCH_ANCHORS=...   the anchors (default: shared/bench-anchors beside the repository)
#   NODE=node
# The anchors' folder is only read: graphile/ is copied to benchmarks/.work/graphile (git-ignored)
# and `npm ci` runs there. Each harness script drops and recreates its own bench_* database.
set -euo pipefail

BENCH=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$BENCH")
ANCHORS=${BENCH_ANCHORS:-$(dirname "$REPO")/shared/bench-anchors}
VENV=${BENCH_VENV:-$BENCH/.venv-bench}
WORK=$BENCH/.work
NODE=${NODE:-node}
RUNS=${RUNS:-3}
LIBS=${LIBS:-"asyncjobs pgqueuer procrastinate graphile dbos oban extra"}
GROWTH=${GROWTH:-1}
GROWTH_ARGS=${GROWTH_ARGS:-}
OUT=${OUT:-$BENCH/results/$(date -u +%Y%m%dT%H%M%SZ)}
# the anchors' folder is read-only in CI: no bytecode caches there (or anywhere)
export PYTHONDONTWRITEBYTECODE=1
export BENCH_HARNESS=$ANCHORS

[ -f "$ANCHORS/_common.py" ] || { echo "anchors not found at $ANCHORS" >&2; exit 2; }

# the harness's --n: the baselines run as many, and so does each variant of the limits phase
# unless LIMITS_N says otherwise
HARNESS_N=10000
args=("$@")
for (( k = 0; k < ${#args[@]}; k++ )); do
  case "${args[k]}" in
    --n) HARNESS_N=${args[k+1]:-$HARNESS_N} ;;
    --n=*) HARNESS_N=${args[k]#--n=} ;;
  esac
done
LIMITS_N=${LIMITS_N:-$HARNESS_N}

# ---------------------------------------------------------------- the Python venv (pinned)
# One Python >= 3.12 for every adapter: oban requires it (the anchors ran DBOS, oban and
# pgqueuer on 3.12.1 for the same reason), and asyncjobs supports it.
find_python() {
  local cand
  for cand in "${BENCH_PYTHON:-}" python3.12 \
      $(ls -d "$(pyenv root 2>/dev/null || echo /nonexistent)"/versions/3.12*/bin/python3.12 \
          2>/dev/null | sort -V | tac); do
    [ -n "$cand" ] || continue
    # a pyenv shim exists even when it cannot run: ask the interpreter itself
    if "$cand" -c 'import sys; sys.exit(sys.version_info[:2] < (3, 12))' 2>/dev/null; then
      echo "$cand"; return 0
    fi
  done
  echo "no Python >= 3.12 found (set BENCH_PYTHON)" >&2; return 1
}
PYTHON=$(find_python)
PINS=(pgqueuer==1.6.0 procrastinate==3.10.0 asyncpg==0.32.0 'psycopg[binary]==3.3.9'
      psycopg-pool==3.3.3 httpx==0.28.1 dbos==3.4.0 oban==0.7.0)
stamp="$("$PYTHON" -V) ${PINS[*]} $(sha256sum "$REPO/pyproject.toml" | cut -c1-16)"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$VENV/.bench-pins" 2>/dev/null)" != "$stamp" ]; then
  echo "== installing the benchmark venv in $VENV ($("$PYTHON" -V))" >&2
  "$PYTHON" -m venv --clear "$VENV"   # --clear: no packages of an older Python left behind
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "${PINS[@]}"
  # asyncjobs from this checkout, editable: one python runs every adapter
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$REPO"
  echo "$stamp" > "$VENV/.bench-pins"
fi
PY=$VENV/bin/python

# ---------------------------------------------------------------- graphile-worker (npm ci)
mkdir -p "$WORK/graphile"
for f in bench_graphile.js bench_baseline.js aggregate.js package.json package-lock.json; do
  if ! cmp -s "$ANCHORS/graphile/$f" "$WORK/graphile/$f"; then
    cp "$ANCHORS/graphile/$f" "$WORK/graphile/$f"
    chmod u+w "$WORK/graphile/$f"
    rm -f "$WORK/graphile/.npm-done"
  fi
done
if [ ! -f "$WORK/graphile/.npm-done" ]; then
  echo "== npm ci in $WORK/graphile" >&2
  (cd "$WORK/graphile" && npm ci --no-audit --no-fund --loglevel=error)
  touch "$WORK/graphile/.npm-done"
fi

# ---------------------------------------------------------------- freeze the code measured
# Other engineers edit asyncjobs/ while a session runs (~25 min): measure one snapshot of the
# package, taken now, for every run of the session (PYTHONPATH comes before the editable
# install's path; the scripts run from $OUT, so the checkout is not on sys.path via the cwd).
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
SNAP=$WORK/snapshot/$(basename "$OUT")
rm -rf "$SNAP" && mkdir -p "$SNAP"
cp -r "$REPO/asyncjobs" "$SNAP/asyncjobs"
find "$SNAP" -name __pycache__ -prune -exec rm -rf {} +
export PYTHONPATH=$SNAP${PYTHONPATH:+:$PYTHONPATH}
cd "$OUT"
"$VENV/bin/python" -c "import asyncjobs, sys; assert asyncjobs.__file__.startswith('$SNAP'), asyncjobs.__file__"

# ---------------------------------------------------------------- what ran, on what
"$PY" -m pip freeze > "$OUT/pip-freeze.txt"
{
  echo "node $("$NODE" --version)"
  (cd "$WORK/graphile" && npm ls --all 2>/dev/null | tail -n +2)
} > "$OUT/node-versions.txt"
psql -h "${BENCH_PGHOST:-127.0.0.1}" -U "${BENCH_PGUSER:-root}" -d postgres -Atc "select version()" \
  > "$OUT/postgres-version.txt" 2>/dev/null || true
{
  echo "commit $(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)"
  echo "measured: a copy of asyncjobs/ taken at the start, $SNAP"
  echo "sha256 of its files: $(cd "$SNAP" && find asyncjobs -type f -name '*.*' | sort \
    | xargs sha256sum | sha256sum | cut -c1-16)"
  echo "uncommitted changes in asyncjobs/ at the start (git diff HEAD --stat):"
  git -C "$REPO" diff HEAD --stat -- asyncjobs 2>/dev/null || true
  echo "load average at start: $(cat /proc/loadavg)"
} > "$OUT/asyncjobs-tree.txt"

timed() {  # timed NAME ROUND CMD...: one run, its stdout/stderr kept, its time logged
  local name=$1 r=$2; shift 2
  echo "== round $r/$RUNS: $name ($(cut -d' ' -f1-3 /proc/loadavg))" >&2
  local t=$SECONDS
  if ! "$@" --verbose > "$OUT/${name}.run${r}.stdout" 2> "$OUT/${name}.run${r}.stderr"; then
    echo "   $name round $r FAILED (see $OUT/${name}.run${r}.stderr)" >&2
  fi
  echo "round $r $name $(( SECONDS - t )) s, load average after: $(cut -d' ' -f1-3 /proc/loadavg)" \
    >> "$OUT/run-times.txt"
}

run_lib() {  # run_lib LIB ROUND [harness args...]: the harness, then 100 concurrent callers
  local lib=$1 r=$2; shift 2
  local harness concurrent=()
  case "$lib" in
    asyncjobs) harness=("$PY" "$BENCH/bench_asyncjobs.py") ;;
    pgqueuer|procrastinate|dbos|oban) harness=("$PY" "$ANCHORS/bench_${lib}.py") ;;
    graphile)
      harness=("$NODE" "$WORK/graphile/bench_graphile.js")
      concurrent=("$NODE" "$BENCH/bench_graphile_concurrent.js" --modules-dir "$WORK/graphile") ;;
    extra)
      timed extra "$r" "$PY" "$BENCH/bench_extra.py" --phases run_async,sse_lag,limits \
        --limits-rounds 1 --limits-n "$LIMITS_N" --json-out "$OUT/extra.jsonl"
      return ;;
    *) echo "unknown library $lib" >&2; return 2 ;;
  esac
  [ ${#concurrent[@]} -gt 0 ] || concurrent=("$PY" "$BENCH/bench_concurrent.py" --lib "$lib")
  timed "$lib" "$r" "${harness[@]}" --json-out "$OUT/${lib}.jsonl" "$@"
  timed "$lib-concurrent" "$r" "${concurrent[@]}" --json-out "$OUT/concurrent.jsonl" "$@"
}

t_suite=$SECONDS
for r in $(seq 1 "$RUNS"); do
  # alternate the order each round so drift (autovacuum, page cache, other load) spreads evenly
  if (( r % 2 )); then order=$LIBS; else order=$(echo "$LIBS" | tr ' ' '\n' | tac | tr '\n' ' '); fi
  for lib in $order; do
    run_lib "$lib" "$r" "$@"
  done
  "$NODE" "$WORK/graphile/bench_baseline.js" --n "$HARNESS_N" --json-out "$OUT/baseline.jsonl" \
    > /dev/null
  "$PY" "$ANCHORS/bench_baseline.py" --n "$HARNESS_N" --json-out "$OUT/baseline.jsonl" > /dev/null
done
if [ "$GROWTH" = 1 ]; then
  echo "== growth and soak ($(cut -d' ' -f1-3 /proc/loadavg))" >&2
  t=$SECONDS
  # shellcheck disable=SC2086  # GROWTH_ARGS is a list of words
  "$PY" "$BENCH/bench_extra.py" --phases growth,soak --json-out "$OUT/growth.jsonl" --verbose \
    $GROWTH_ARGS > "$OUT/growth.stdout" 2> "$OUT/growth.stderr" \
    || echo "   growth/soak FAILED (see $OUT/growth.stderr)" >&2
  echo "growth+soak $(( SECONDS - t )) s" >> "$OUT/run-times.txt"
fi
echo "suite wall time: $(( SECONDS - t_suite )) s" | tee -a "$OUT/run-times.txt" >&2

# ---------------------------------------------------------------- tables
# The anchors' aggregator makes the main tables (it reads the Python JSON lines too); report.py
# adds the concurrent-callers row, asyncjobs' extra rows, the limits' cost, cost growth, the soak,
# the ratios to the best anchor and every target of issues 12 and 14 (met / not met).
main_files=()
for lib in asyncjobs pgqueuer procrastinate graphile dbos oban baseline; do
  [ -s "$OUT/$lib.jsonl" ] && main_files+=("$OUT/$lib.jsonl")
done
{
  echo "# Benchmark session $(basename "$OUT")"
  echo
  echo "Rounds: $RUNS; order alternating; $(grep 'suite wall' "$OUT/run-times.txt")."
  echo
  "$NODE" "$WORK/graphile/aggregate.js" "${main_files[@]}"
  echo
  "$PY" "$BENCH/report.py" "$OUT"
} > "$OUT/table.md"
cat "$OUT/table.md"
echo "results in $OUT" >&2
