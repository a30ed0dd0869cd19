#!/usr/bin/env bash
# The project's test command (README "Quickstart"; .ci/run runs exactly this).
# Installs what is missing (rustup targets and components, QEMU 10 from Debian
# bookworm-backports; for fuzzing the nightly toolchain and cargo-fuzz), then checks formatting
# and lints, runs every host test, runs each fuzz target for a bounded time, and boots the
# QEMU system images. Exits non-zero on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "toolchain (rust-toolchain.toml: stable + bare-metal targets)"
rustup show active-toolchain >/dev/null 2>&1 || rustup toolchain install stable
rustup component add rustfmt clippy >/dev/null 2>&1 || true
rustup target add x86_64-unknown-none aarch64-unknown-none riscv64gc-unknown-none-elf >/dev/null

need_qemu=0
for q in qemu-system-x86_64 qemu-system-aarch64 qemu-system-riscv64; do
    command -v "$q" >/dev/null 2>&1 || need_qemu=1
done
if [ "$need_qemu" = 1 ]; then
    step "QEMU 10 from Debian bookworm-backports"
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    if ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
        echo 'deb http://deb.debian.org/debian bookworm-backports main' |
            $SUDO tee /etc/apt/sources.list.d/bookworm-backports.list >/dev/null
    fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq -t bookworm-backports \
        qemu-system-x86 qemu-system-arm qemu-system-misc >/dev/null
fi
qemu-system-x86_64 --version | head -1

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo clippy of the seL4 Microkit PDs (aarch64-unknown-none, feature microkit)"
cargo clippy -p iommu-platform --features microkit --target aarch64-unknown-none \
    --bin mk-iommu --bin mk-driver --bin mk-intruder -- -D warnings

step "bare-metal builds of the no_std crates"
for t in x86_64-unknown-none aarch64-unknown-none riscv64gc-unknown-none-elf; do
    cargo build -q -p iommu-protocol -p iommu-hal -p iommu-server --target "$t"
done

step "host tests (unit, property, conformance, model and message-level suites)"
log="$(mktemp)"
cargo test --workspace 2>&1 | tee "$log"
passed=$(grep -Eo '^test result: ok\. [0-9]+ passed' "$log" | awk '{s += $4} END {print s + 0}')
failed=$(grep -Eo '[0-9]+ failed' "$log" | awk '{s += $1} END {print s + 0}')
images=0

step "fuzzing: every fuzz target for ${FUZZ_SECONDS:-60} s (scripts/fuzz.sh; fails on a crash)"
bash scripts/fuzz.sh "${FUZZ_SECONDS:-60}" 2>&1 | tee "$log"
fuzzed=$(grep -c ', no crash$' "$log" || true)

IMAGES="vtd vtd-bridge vtd-rootport-bridge amd smmuv3 smmuv3-gicv3 riscv"   # the QEMU system images (qemu --list)
if [ -f test-harness/src/bin/qemu.rs ]; then
    step "QEMU system images (the main job): $IMAGES"
    for image in $IMAGES; do
        cargo run -q -p iommu-test-harness --bin qemu -- "$image"
        images=$((images + 1))
    done
fi

# The seL4 Microkit system: the runner builds the PD ELFs (no SDK needed), then assembles and
# boots the image only with a Microkit SDK in MICROKIT_SDK; without one it says SKIP and why,
# and the run is counted as skipped, never as passed.
skipped=0
if [ -f test-harness/src/bin/qemu.rs ]; then
    step "seL4 Microkit system: microkit-smmuv3 (MICROKIT_SDK=${MICROKIT_SDK:-unset})"
    mlog="$(mktemp)"
    cargo run -q -p iommu-test-harness --bin qemu -- microkit-smmuv3 | tee "$mlog"
    if grep -q '^SKIP microkit-smmuv3' "$mlog"; then
        skipped=$((skipped + 1))
    else
        images=$((images + 1))
    fi
fi

step "all checks passed"
echo "tests: $((passed + images + fuzzed)) passed, $failed failed, $skipped skipped"
