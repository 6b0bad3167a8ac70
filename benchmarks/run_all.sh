#!/usr/bin/env bash
# asyncjobs side by side with the anchors (pgqueuer, procrastinate, graphile-worker), in ONE
# session: RUNS rounds (default 3), the libraries interleaved with their order reversed every
# other round, the raw-driver baselines after each round, then asyncjobs' own extra rows
# (run_async, SSE lag: in every round; cost growth and soak: once at the end).
# Writes everything into OUT (default benchmarks/results/<UTC stamp>), the tables in table.md.
#
# Usage: benchmarks/run_all.sh [extra args passed to every harness script, e.g. --n 10000]
# Env:
#   RUNS=3              rounds
#   LIBS="asyncjobs pgqueuer procrastinate graphile extra"   what each round runs
#   GROWTH=1            0 skips the growth + soak phases (about 4 minutes)
#   GROWTH_ARGS=...     extra args for them, e.g. "--growth-sizes 10000,100000"
#   OUT=...             result folder
#   BENCH_VENV=...      the one venv for every Python adapter (default benchmarks/.venv-bench)
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
LIBS=${LIBS:-"asyncjobs pgqueuer procrastinate graphile extra"}
GROWTH=${GROWTH:-1}
GROWTH_ARGS=${GROWTH_ARGS:-}
OUT=${OUT:-$BENCH/results/$(date -u +%Y%m%dT%H%M%SZ)}
# the anchors' folder is read-only in CI: no bytecode caches there (or anywhere)
export PYTHONDONTWRITEBYTECODE=1
export BENCH_HARNESS=$ANCHORS

[ -f "$ANCHORS/_common.py" ] || { echo "anchors not found at $ANCHORS" >&2; exit 2; }

# ---------------------------------------------------------------- the Python venv (pinned)
PINS=(pgqueuer==1.6.0 procrastinate==3.10.0 asyncpg==0.32.0 'psycopg[binary]==3.3.9'
      psycopg-pool==3.3.3 httpx==0.28.1)
stamp="${PINS[*]} $(sha256sum "$REPO/pyproject.toml" | cut -c1-16)"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$VENV/.bench-pins" 2>/dev/null)" != "$stamp" ]; then
  echo "== installing the benchmark venv in $VENV" >&2
  python3 -m venv "$VENV"
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

run_lib() {  # run_lib LIB ROUND [harness args...]
  local lib=$1 r=$2; shift 2
  local cmd
  case "$lib" in
    asyncjobs) cmd=("$PY" "$BENCH/bench_asyncjobs.py" --json-out "$OUT/asyncjobs.jsonl" "$@") ;;
    pgqueuer|procrastinate)
      cmd=("$PY" "$ANCHORS/bench_${lib}.py" --json-out "$OUT/${lib}.jsonl" "$@") ;;
    graphile) cmd=("$NODE" "$WORK/graphile/bench_graphile.js" --json-out "$OUT/graphile.jsonl" "$@") ;;
    extra) cmd=("$PY" "$BENCH/bench_extra.py" --phases run_async,sse_lag
                --json-out "$OUT/extra.jsonl") ;;
    *) echo "unknown library $lib" >&2; return 2 ;;
  esac
  echo "== round $r/$RUNS: $lib ($(cut -d' ' -f1-3 /proc/loadavg))" >&2
  local t=$SECONDS
  if ! "${cmd[@]}" --verbose > "$OUT/${lib}.run${r}.stdout" 2> "$OUT/${lib}.run${r}.stderr"; then
    echo "   $lib round $r FAILED (see $OUT/${lib}.run${r}.stderr)" >&2
  fi
  echo "round $r $lib $(( SECONDS - t )) s, load average after: $(cut -d' ' -f1-3 /proc/loadavg)" \
    >> "$OUT/run-times.txt"
}

t_suite=$SECONDS
for r in $(seq 1 "$RUNS"); do
  # alternate the order each round so drift (autovacuum, page cache, other load) spreads evenly
  if (( r % 2 )); then order=$LIBS; else order=$(echo "$LIBS" | tr ' ' '\n' | tac | tr '\n' ' '); fi
  for lib in $order; do
    run_lib "$lib" "$r" "$@"
  done
  "$NODE" "$WORK/graphile/bench_baseline.js" --json-out "$OUT/baseline.jsonl" > /dev/null
  "$PY" "$ANCHORS/bench_baseline.py" --json-out "$OUT/baseline.jsonl" > /dev/null
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
# adds asyncjobs' extra rows, cost growth, the soak and the ratios to the best anchor.
main_files=()
for lib in asyncjobs pgqueuer procrastinate graphile baseline; do
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
