//! Building an image: `cargo build` of the image's binary for its bare-metal target, with the
//! same cargo that runs the runner, and cargo's JSON messages telling where the ELF is.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::targets::Target;

/// The workspace root (the runner's package sits one level below it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Builds `target`'s binary (release profile, full debug info) and returns the path of its ELF.
/// defmt's log filter is `DEFMT_LOG` from the environment, `debug` when unset.
///
/// Only the image's own cargo feature is enabled (each image binary has a feature of its
/// name, its `required-features`), so the image compiles only its vendor's hal code.
pub fn build(target: &Target) -> Result<PathBuf, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let defmt_log = std::env::var("DEFMT_LOG").unwrap_or_else(|_| "debug".into());
    let mut child = Command::new(&cargo)
        .current_dir(workspace_root())
        .args([
            "build",
            "--release",
            "--message-format=json-render-diagnostics",
        ])
        .args(["-p", target.package, "--bin", target.bin])
        .args(["--no-default-features", "--features", target.bin])
        .args(["--target", target.rust_target])
        .env("DEFMT_LOG", defmt_log)
        // Full debug info: defmt-decoder finds the log statements' source locations in it.
        .env("CARGO_PROFILE_RELEASE_DEBUG", "2")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot run {cargo}: {e}"))?;
    let mut elf = None;
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Some(path) = executable_of(&line, target.bin) {
                elf = Some(path);
            }
        }
    }
    let status = child.wait().map_err(|e| format!("cargo build: {e}"))?;
    if !status.success() {
        return Err(format!("cargo build of {} failed ({status})", target.bin));
    }
    elf.ok_or_else(|| format!("cargo built no executable named {}", target.bin))
}

/// The executable path in one line of cargo's JSON output, if the line is the
/// `compiler-artifact` message of binary `bin`.
pub fn executable_of(line: &str, bin: &str) -> Option<PathBuf> {
    let msg: serde_json::Value = serde_json::from_str(line).ok()?;
    if msg.get("reason")?.as_str()? != "compiler-artifact" {
        return None;
    }
    if msg.get("target")?.get("name")?.as_str()? != bin {
        return None;
    }
    msg.get("executable")?.as_str().map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_executable_in_cargo_json() {
        let art = r#"{"reason":"compiler-artifact","target":{"name":"vtd","kind":["bin"]},"executable":"/t/x86_64-unknown-none/release/vtd"}"#;
        assert_eq!(
            executable_of(art, "vtd"),
            Some(PathBuf::from("/t/x86_64-unknown-none/release/vtd"))
        );
        assert_eq!(executable_of(art, "smmuv3"), None);
        let lib = r#"{"reason":"compiler-artifact","target":{"name":"vtd"},"executable":null}"#;
        assert_eq!(executable_of(lib, "vtd"), None);
        assert_eq!(executable_of(r#"{"reason":"build-finished"}"#, "vtd"), None);
        assert_eq!(executable_of("not json", "vtd"), None);
    }
}
