#!/usr/bin/env bash
# The project's test command (README "Quickstart"; .ci/run runs exactly this).
# Installs what is missing (rustup targets and components, the MSRV toolchain, QEMU 10 from
# Debian bookworm-backports on Debian bookworm, other hosts are told what to install; for
# fuzzing the nightly toolchain and cargo-fuzz), then checks formatting, lints, the declared
# MSRV and the docs, runs every host test and the example, runs each fuzz target for a bounded
# time, and boots the QEMU system images. Exits non-zero on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "toolchain (rust-toolchain.toml: stable + bare-metal targets)"
rustup show active-toolchain >/dev/null 2>&1 || rustup toolchain install stable
rustup component add rustfmt clippy >/dev/null 2>&1 || true
rustup target add x86_64-unknown-none aarch64-unknown-none riscv64gc-unknown-none-elf >/dev/null

# The system emulators the images boot on, QEMU 10 or later (Debian bookworm's own QEMU, 7.2,
# lacks what the images use).
QEMU_SYSTEMS="qemu-system-x86_64 qemu-system-aarch64 qemu-system-riscv64"
qemu_major() {
    { "$1" --version 2>/dev/null || true; } | sed -n '1s/^QEMU emulator version \([0-9]*\).*/\1/p'
}
qemu_ok() {
    for q in $QEMU_SYSTEMS; do
        v="$(qemu_major "$q")"
        [ -n "$v" ] && [ "$v" -ge 10 ] || return 1
    done
}
if ! qemu_ok; then
    os="$( (. /etc/os-release && echo "${ID:-}-${VERSION_CODENAME:-}") 2>/dev/null || true)"
    if [ "$os" = debian-bookworm ]; then
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
    if ! qemu_ok; then
        {
            echo "scripts/test.sh needs QEMU 10 or later with these system emulators on PATH:"
            for q in $QEMU_SYSTEMS; do
                echo "  $q (found: $( { "$q" --version 2>/dev/null || echo none; } | head -1))"
            done
            if [ "$os" = debian-bookworm ]; then
                echo "Installing them from bookworm-backports did not provide them."
            else
                echo "It installs them itself only on Debian bookworm (from bookworm-backports)."
            fi
            echo "On this host (${os:-unknown OS}), install QEMU >= 10 with those emulators"
            echo "(Debian trixie: qemu-system-x86 qemu-system-arm qemu-system-misc, which are"
            echo "10.0; elsewhere your distribution's packages or a build from qemu.org) and run"
            echo "scripts/test.sh again."
        } >&2
        exit 1
    fi
fi
qemu-system-x86_64 --version | head -1

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo clippy of the seL4 Microkit PDs (aarch64-unknown-none, feature microkit)"
cargo clippy -p iommu-platform --no-default-features --features microkit \
    --target aarch64-unknown-none \
    --bin mk-iommu --bin mk-driver --bin mk-intruder -- -D warnings

step "bare-metal builds of the no_std crates"
for t in x86_64-unknown-none aarch64-unknown-none riscv64gc-unknown-none-elf; do
    cargo build -q -p iommu-protocol -p iommu-hal -p iommu-server --target "$t"
done
# Each hal vendor feature alone builds (what an image for one vendor compiles).
for f in vtd smmuv3 amd riscv; do
    cargo check -q -p iommu-hal --no-default-features --features "$f" --target aarch64-unknown-none
done

# The declared MSRV (Cargo.toml rust-version) is the oldest toolchain the library crates and
# the images build with: check them on exactly that toolchain (rustup installs it, minimal
# profile, with the bare-metal targets: about 250 MB download once; the check takes about a
# minute when the dependencies are cached). Dev-dependencies (criterion, proptest) are not
# held to it.
MSRV="$(sed -n 's/^rust-version = "\([0-9.]*\)".*/\1/p' Cargo.toml)"
BARE_METAL="x86_64-unknown-none aarch64-unknown-none riscv64gc-unknown-none-elf"
IMAGE_TARGETS="$BARE_METAL"   # every bare-metal target has QEMU images
step "MSRV $MSRV: protocol, hal, server (host and bare metal) and the images"
rustup toolchain install "$MSRV" --profile minimal --no-self-update \
    --target "$(echo $BARE_METAL | tr ' ' ,)" >/dev/null 2>&1 ||
    { echo "rustup could not install Rust $MSRV with targets $BARE_METAL" >&2; exit 1; }
cargo +"$MSRV" check -q -p iommu-protocol -p iommu-hal -p iommu-server --all-features
for t in $BARE_METAL; do
    cargo +"$MSRV" check -q -p iommu-protocol -p iommu-hal -p iommu-server --all-features \
        --target "$t"
done
for t in $IMAGE_TARGETS; do
    cargo +"$MSRV" check -q -p iommu-platform --bins --target "$t"
done
cargo +"$MSRV" check -q -p iommu-platform --no-default-features --features microkit \
    --target aarch64-unknown-none --bins

step "cargo doc --no-deps with -D warnings (host; protocol, hal, server, platform per target)"
RUSTDOCFLAGS="-D warnings" cargo doc -q --no-deps --workspace
for t in $BARE_METAL; do
    pkgs="-p iommu-protocol -p iommu-hal -p iommu-server"
    case " $IMAGE_TARGETS " in *" $t "*) pkgs="$pkgs -p iommu-platform" ;; esac
    # shellcheck disable=SC2086
    RUSTDOCFLAGS="-D warnings" cargo doc -q --no-deps $pkgs --target "$t"
done
RUSTDOCFLAGS="-D warnings" cargo doc -q --no-deps -p iommu-platform --no-default-features \
    --features microkit --target aarch64-unknown-none

step "host tests (unit, property, conformance, model and message-level suites)"
log="$(mktemp)"
cargo test --workspace 2>&1 | tee "$log"
passed=$(grep -Eo '^test result: ok\. [0-9]+ passed' "$log" | awk '{s += $4} END {print s + 0}')
failed=$(grep -Eo '[0-9]+ failed' "$log" | awk '{s += $1} END {print s + 0}')

step "the example a driver author starts from (test-harness/examples/driver.rs)"
cargo run -q -p iommu-test-harness --example driver
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
