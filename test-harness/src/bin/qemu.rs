//! The QEMU runner: `cargo run -p iommu-test-harness --bin qemu -- <image>... [--timeout SECS]`.
//!
//! For each image named (see `--list`): builds it for its bare-metal target, boots it in QEMU
//! under a time limit (default 120 s), prints its console and its decoded defmt log, and
//! judges the run (see the `qemu` module). Exits 0 only when every image passed or was
//! skipped; a skipped image (a Microkit system without `MICROKIT_SDK`, see `qemu::microkit`)
//! is reported as `SKIP <name>: <why>`, never as passed. Output files of a failed run are kept
//! and their directory is printed.

#[path = "../qemu/mod.rs"]
mod qemu;

use std::process::ExitCode;
use std::time::Duration;

use qemu::microkit::{self, MICROKIT_TARGETS, Verdict};
use qemu::targets::{self, TARGETS};

fn usage() -> ExitCode {
    eprintln!("usage: qemu <image>... [--timeout SECS]   (qemu --list shows the images)");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut names = Vec::new();
    let mut limit = Duration::from_secs(120);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--list" => {
                for t in TARGETS {
                    println!("{:20} {}", t.name, t.about);
                }
                for t in MICROKIT_TARGETS {
                    println!("{:10} {} (needs MICROKIT_SDK)", t.name, t.about);
                }
                return ExitCode::SUCCESS;
            }
            "--timeout" => match args.next().and_then(|s| s.parse().ok()) {
                Some(secs) => limit = Duration::from_secs(secs),
                None => return usage(),
            },
            _ if a.starts_with('-') => return usage(),
            _ => names.push(a),
        }
    }
    if names.is_empty() {
        return usage();
    }
    let (mut failed, mut skipped) = (0, 0);
    for name in &names {
        if let Some(target) = microkit::find(name) {
            println!("==> image {}: {}", target.name, target.about);
            let dir = std::env::temp_dir().join(format!(
                "iommu-qemu-{}-{}",
                target.name,
                std::process::id()
            ));
            match microkit::run(target, &dir, limit) {
                Verdict::Pass => {
                    let _ = std::fs::remove_dir_all(&dir);
                    println!("PASS {}", target.name);
                }
                Verdict::Skipped(why) => {
                    skipped += 1;
                    println!("SKIP {}: {why}", target.name);
                }
                Verdict::Fail(why) => {
                    failed += 1;
                    for w in &why {
                        println!("  - {w}");
                    }
                    println!("FAIL {} (output kept in {})", target.name, dir.display());
                }
            }
            continue;
        }
        let Some(target) = targets::find(name) else {
            eprintln!("qemu: unknown image {name:?}");
            return usage();
        };
        println!("==> image {}: {}", target.name, target.about);
        let elf = match qemu::build::build(target) {
            Ok(elf) => elf,
            Err(e) => {
                println!("FAIL {}: {e}", target.name);
                failed += 1;
                continue;
            }
        };
        let dir = qemu::run_dir(target);
        let why = match qemu::boot(target, &elf, &dir, limit) {
            Ok(outcome) => {
                println!(
                    "qemu| {} defmt frames ({} warnings, {} errors)",
                    outcome.log.frames, outcome.log.warnings, outcome.log.errors
                );
                outcome.failures(target)
            }
            Err(e) => vec![e],
        };
        if why.is_empty() {
            let _ = std::fs::remove_dir_all(&dir);
            println!("PASS {}", target.name);
        } else {
            failed += 1;
            for w in &why {
                println!("  - {w}");
            }
            println!("FAIL {} (output kept in {})", target.name, dir.display());
        }
    }
    println!(
        "qemu images: {} passed, {} failed, {} skipped",
        names.len() - failed - skipped,
        failed,
        skipped
    );
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
