#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo-fuzz, libFuzzer) of the wire format and of the server over the
# mock and both vendors' register-level models with unit failures injected (README "Fuzzing").
#
#   bash scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Runs each TARGET (default: all of them) for SECONDS (default 50) from the committed seeds
# (fuzz/seeds/) and the corpus earlier runs grew (fuzz/corpus/<target>/, not committed), as
# many side by side as there are CPUs (FUZZ_JOBS to change it). Exits non-zero after the
# batch in which a target found a crash (a panic: a broken invariant, an overflow, a hang
# past 20 s): libFuzzer saves the input in fuzz/artifacts/<target>/ and the command that
# reproduces it is printed. Installs what is missing: the nightly toolchain (rustup) and
# cargo-fuzz (crates.io, `cargo install --locked`).
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:-50}"
[ $# -gt 0 ] && shift
if [ $# -gt 0 ]; then targets=("$@"); else
    targets=(codec requests server_mock server_vtd server_smmuv3)
fi

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "installing the nightly toolchain (cargo-fuzz needs it)"
    rustup toolchain install nightly --profile minimal
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "installing cargo-fuzz"
    cargo +stable install --locked cargo-fuzz
fi
rustup run nightly rustc --version

# Release build with debug assertions and overflow checks (-a): an arithmetic overflow on a
# client's numbers is a finding. No sanitizer: nothing under test has unsafe code (protocol
# and server forbid it; the harness has none), so ASan would only halve the speed.
fuzz=(cargo +nightly fuzz)
opts=(--sanitizer none --debug-assertions)
start=$(date +%s)
"${fuzz[@]}" build "${opts[@]}"
echo "fuzz targets built in $(( $(date +%s) - start )) s"

# One target: runs it for $secs s, writes its summary line to $2 (or the crash report and
# FAILURE), exits non-zero on a crash.
fuzz_one() {
    local t="$1" out="$2" seeds max_len log
    case "$t" in
        server_*) seeds=fuzz/seeds/server; max_len=512 ;;
        requests) seeds=fuzz/seeds/requests; max_len=2048 ;;
        *) seeds="fuzz/seeds/$t"; max_len=300 ;;
    esac
    mkdir -p "fuzz/corpus/$t"
    log="$(mktemp)"
    if ! "${fuzz[@]}" run "${opts[@]}" "$t" "fuzz/corpus/$t" "$seeds" -- \
        -max_total_time="$secs" -max_len="$max_len" -timeout=20 -print_final_stats=1 \
        >"$log" 2>&1; then
        { tail -n 60 "$log"
          echo "FUZZ FAILURE: target $t found a crash (input saved in fuzz/artifacts/$t/)"; } >"$out"
        rm -f "$log"
        return 1
    fi
    local runs rate cov
    runs=$(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -Eo '[0-9]+$' || echo '?')
    rate=$(grep -Eo 'stat::average_exec_per_sec: *[0-9]+' "$log" | grep -Eo '[0-9]+$' || echo '?')
    cov=$(grep -Eo 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+' "$log" | tail -n 1 || true)
    echo "    $t: $runs runs, $rate exec/s, $cov, no crash" >"$out"
    rm -f "$log"
}

# Targets run side by side, one per CPU (FUZZ_JOBS overrides): each is single-threaded, so
# each still gets its SECONDS of a whole core.
jobs="${FUZZ_JOBS:-$(nproc)}"
failed=0
i=0
while [ "$i" -lt "${#targets[@]}" ]; do
    batch=("${targets[@]:i:jobs}")
    pids=(); outs=()
    for t in "${batch[@]}"; do
        echo "--> fuzz $t for ${secs} s"
        out="$(mktemp)"; outs+=("$out")
        fuzz_one "$t" "$out" &
        pids+=($!)
    done
    for k in "${!pids[@]}"; do
        wait "${pids[$k]}" || failed=1
        cat "${outs[$k]}"
        rm -f "${outs[$k]}"
    done
    [ "$failed" = 0 ] || exit 1
    i=$((i + jobs))
done
