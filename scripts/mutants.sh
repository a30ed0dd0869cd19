#!/usr/bin/env bash
# Mutation testing with cargo-mutants (README "Mutation testing"; scores and the judgement of
# every surviving mutant in MUTANTS.md). Not part of the test command: a pass takes hours.
#
#   bash scripts/mutants.sh [PART] [cargo-mutants options...]
#
# PART picks the code to mutate and the tests that must notice:
#   server  server/src/*.rs; the server crate's unit tests and the test-harness suites that
#           drive it (server_mock, server_props, server_vtd)             (default)
#   server-quick
#           server/src/*.rs against server_mock and server_props only, built without the
#           harness's `runner` feature and its unit tests, with a 60 s test timeout: about
#           half the rebuild per mutant. A first pass: re-check what it misses with `server`
#           (`--iterate` on the same `--output`).
#   config  server/src/config.rs against the server's unit tests (where the configuration
#           checks are tested) and server_mock, with a 60 s test timeout
#   vtd     hal/src/vtd/*.rs; vtd_backend, server_vtd, ordering
#   smmuv3  hal/src/smmuv3/*.rs; smmuv3_backend, server_smmuv3, ordering
#   engine  hal/src/pagetable/**; hal's unit tests and the four page-table conformance suites
#
# Further options go to cargo-mutants, e.g. `--list` (what would be tried), `--re REGEX`
# (mutants whose name, `FILE:LINE:COL: replace ... in FUNCTION`, matches: `--re 'config\.rs'`
# for one file; `--file` would add files to the PART's, not narrow them), `--iterate` (only
# those not caught last time, from mutants.out/), `--in-place` (no copy of the tree; do not
# edit meanwhile).
# One job (the machine's two cores go to each build), the `mutants` profile (the test profile
# without debug info: half the rebuild), a 300 s test timeout (60 s for server-quick).
# Results: mutants.out/ (or `--output DIR`): caught.txt, missed.txt, timeout.txt, unviable.txt, outcomes.json.
set -euo pipefail
cd "$(dirname "$0")/.."

part="${1:-server}"
timeout=300
[ $# -gt 0 ] && shift

if ! command -v cargo-mutants >/dev/null 2>&1; then
    echo "installing cargo-mutants"
    cargo install --locked cargo-mutants
fi

case "$part" in
    server)
        files=(-f 'server/src/*.rs')
        tests=(--test-package iommu-server,iommu-test-harness --
            --lib --test server_mock --test server_props --test server_vtd) ;;
    server-quick)
        files=(-f 'server/src/*.rs')
        timeout=60
        tests=(--test-package iommu-test-harness --
            --no-default-features --test server_mock --test server_props) ;;
    config)
        files=(-f 'server/src/config.rs')
        timeout=60
        tests=(--test-package iommu-server,iommu-test-harness --
            --no-default-features --lib --test server_mock) ;;
    vtd)
        files=(-f 'hal/src/vtd/*.rs')
        tests=(--test-package iommu-test-harness --
            --test vtd_backend --test server_vtd --test ordering) ;;
    smmuv3)
        files=(-f 'hal/src/smmuv3/*.rs')
        tests=(--test-package iommu-test-harness --
            --test smmuv3_backend --test server_smmuv3 --test ordering) ;;
    engine)
        files=(-f 'hal/src/pagetable/**/*.rs')
        tests=(--test-package iommu-hal,iommu-test-harness --
            --lib --test pagetable_vtd --test pagetable_arm --test pagetable_amd
            --test pagetable_riscv) ;;
    *)
        echo "unknown part '$part' (server, server-quick, config, vtd, smmuv3, engine)" >&2
        exit 2 ;;
esac

# The baseline: the same tests on the unmutated tree, here (cargo-mutants 27's own baseline
# would run only the mutated package's tests, so it is skipped).
if [[ " $* " != *" --list "* ]]; then
    IFS=, read -r -a pkgs <<<"${tests[1]}"
    cargo test --profile mutants "${pkgs[@]/#/--package=}" "${tests[@]:3}"
fi
status=0
cargo mutants --jobs 1 --profile mutants --baseline skip --timeout "$timeout" \
    --build-timeout 1800 "${files[@]}" "$@" "${tests[@]}" || status=$?
# cargo-mutants builds its copy of the tree into the same CARGO_TARGET_DIR, under the same
# crate hashes, and the copy's last build (a mutant's) is newer than the sources here: touch
# them so that the next build here does not reuse it.
shopt -s globstar
for f in "${files[@]:1}"; do
    # shellcheck disable=SC2086 # the pattern is meant to expand
    touch $f 2>/dev/null || true
done
exit "$status"
