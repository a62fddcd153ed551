# The bench's CPU checks (test-peers.sh, test-textgen-peers.sh, test-generate-peers.sh) source this after
# `set -euo pipefail`: the project's Python, the skip rules (exit 77: ctest's SKIP_RETURN_CODE) and helpers.
#   bench_test_setup NAME "MODULE ..." [needs-exe] [$1]
# sets py, here, tmp (removed on exit unless KEEP_TMP is set) and exe (with needs-exe: $1 or $PIPESWAP_EXE).
bench_test_setup() {
  local name=$1 modules=$2 need_exe=${3:-} arg=${4:-}
  py=${PIPESWAP_PYTHON:-python3}
  here=$(cd "$(dirname "${BASH_SOURCE[1]}")" && pwd)
  local imports=${modules// /, }
  if ! "$py" -c "import $imports" 2>/dev/null; then
    echo "skipped: $py lacks one of $imports (set PIPESWAP_PYTHON)"
    exit 77
  fi
  exe=${arg:-${PIPESWAP_EXE:-}}
  if [ -n "$need_exe" ] && { [ -z "$exe" ] || [ ! -x "$exe" ]; }; then
    echo "skipped: no pipeswap executable given"
    exit 77
  fi
  tmp=$(mktemp -d "/tmp/pipeswap-$name-XXXXXX")
  trap '[ -n "${KEEP_TMP:-}" ] || rm -rf "$tmp"' EXIT
  export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
}
# quiet command...: its output kept in $tmp/last.log and shown (last 30 lines) only when it fails.
quiet() { "$@" > "$tmp/last.log" 2>&1 || { local rc=$?; tail -30 "$tmp/last.log"; return $rc; }; }
# expect_fail LOG command...: the command must exit non-zero (a FAILED row), its log kept in LOG.
expect_fail() {
  local log=$1; shift
  if "$@" > "$log" 2>&1; then tail -30 "$log"; echo "expected a FAILED row: $*"; exit 1; fi
}
