//! seL4 Microkit systems: build the protection domains, assemble the image with the Microkit
//! SDK the user provides (`MICROKIT_SDK`), boot it, and judge it.
//!
//! The PDs' output all arrives on the kernel's debug console (one serial port): plain text
//! lines (the loader, the kernel, the Microkit monitor, the PDs' own text), and the PDs' defmt
//! frames as lines `~<pd name>:<hex>` (see `iommu_platform::microkit::pd`), each decoded with
//! its PD's ELF.
//!
//! A Microkit system does not exit. Its last act is the isolation check: the driver PD reads
//! a physical address it has no mapping for, and the Microkit monitor reports the fault. A run
//! passes only if the driver reported `PASS` (a defmt frame), no frame was at error level or
//! malformed, no console line reports `PANIC` or `FAIL`, and the monitor reported exactly one
//! fault: a VM fault of the expected PD at the expected address. The runner stops QEMU shortly
//! after that report (or at the time limit, which fails).
//!
//! Without `MICROKIT_SDK` the image is not assembled: the run is reported as skipped, with the
//! reason, never as passed.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::build::{executable_of, workspace_root};
use super::log::{DefmtLog, ElfInfo, LogSummary};

/// One Microkit system the runner can build and boot.
#[derive(Clone, Copy, Debug)]
pub struct MicrokitTarget {
    /// Name on the command line.
    pub name: &'static str,
    /// One line saying what it checks.
    pub about: &'static str,
    /// Cargo package of the PD binaries, the feature they need and their Rust target.
    pub package: &'static str,
    /// Cargo feature the PDs are built with.
    pub feature: &'static str,
    /// Rust target triple.
    pub rust_target: &'static str,
    /// The PDs: (name in the system description, binary = program image).
    pub pds: &'static [(&'static str, &'static str)],
    /// The system description, relative to the workspace root.
    pub system: &'static str,
    /// Microkit board and configuration.
    pub board: &'static str,
    /// Microkit configuration (a debug kernel: the console needs `seL4_DebugPutChar`).
    pub config: &'static str,
    /// QEMU system emulator and its arguments before the console and the image loader.
    pub qemu: &'static str,
    /// See [`MicrokitTarget::qemu`].
    pub qemu_args: &'static [&'static str],
    /// Where QEMU loads the image (the board's loader link address).
    pub load_addr: u64,
    /// The PD expected to fault at the end, and the address it must fault at.
    pub expected_fault: (&'static str, u64),
}

/// Every Microkit system the runner knows.
pub const MICROKIT_TARGETS: &[MicrokitTarget] = &[MicrokitTarget {
    name: "microkit-smmuv3",
    about: "seL4 Microkit on aarch64 virt + SMMUv3 + edu: server PD, driver PD over PPC, isolation",
    package: "iommu-platform",
    feature: "microkit",
    rust_target: "aarch64-unknown-none",
    pds: &[
        ("iommu", "mk-iommu"),
        ("intruder", "mk-intruder"),
        ("driver", "mk-driver"),
    ],
    system: "platform/microkit/iommu.system",
    board: "qemu_virt_aarch64",
    config: "debug",
    qemu: "qemu-system-aarch64",
    // The board's kernel runs at EL2 on a Cortex-A53 with 2 GiB (Microkit manual, "QEMU virt
    // (AArch64)"); the SMMUv3 and edu are added. No default devices: edu is 00:01.0.
    qemu_args: &[
        "-machine",
        "virt,virtualization=on,iommu=smmuv3",
        "-cpu",
        "cortex-a53",
        "-m",
        "size=2G",
        "-device",
        "edu",
        "-display",
        "none",
        "-nodefaults",
        "-no-reboot",
    ],
    load_addr: 0x7000_0000,
    // The driver PD reads the SMMU's register page (0x0905_0000), which it does not map.
    expected_fault: ("driver", 0x0905_0000),
}];

/// The Microkit system named `name`.
pub fn find(name: &str) -> Option<&'static MicrokitTarget> {
    MICROKIT_TARGETS.iter().find(|t| t.name == name)
}

/// What became of a run.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Passed.
    Pass,
    /// Not run, and why.
    Skipped(String),
    /// Failed, with every reason.
    Fail(Vec<String>),
}

/// A fault the Microkit monitor reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MonitorFault {
    /// The faulting PD's name.
    pub pd: String,
    /// The fault's kind as the monitor names it (`VMFault`, `CapFault`, ...).
    pub kind: String,
    /// The fault address, when the report gives one.
    pub addr: Option<u64>,
}

/// What the console said.
#[derive(Debug, Default)]
pub struct MicrokitLog {
    /// defmt frames and markers, as for the bare-metal images.
    pub summary: LogSummary,
    /// Faults the monitor reported, in order.
    pub faults: Vec<MonitorFault>,
    /// The PD of the last "faulting PD" line, waiting for its fault's kind.
    pending_pd: Option<String>,
}

/// One console line, classified.
#[derive(Debug, PartialEq, Eq)]
pub enum Line<'a> {
    /// A defmt frame of PD `pd`, hex-decoded (`None`: the hex was broken).
    Defmt {
        /// The PD's name.
        pd: &'a str,
        /// The frame's bytes.
        bytes: Option<Vec<u8>>,
    },
    /// Anything else.
    Text(&'a str),
}

/// Classifies a console line (without its newline).
pub fn classify(line: &str) -> Line<'_> {
    if let Some(rest) = line.strip_prefix('~')
        && let Some((pd, hex)) = rest.split_once(':')
    {
        return Line::Defmt {
            pd,
            bytes: decode_hex(hex),
        };
    }
    Line::Text(line)
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    let hex = hex.trim_end_matches('\r').as_bytes();
    if hex.len() % 2 != 0 {
        return None;
    }
    hex.chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).ok()?, 16).ok())
        .collect()
}

impl MicrokitLog {
    /// Notes what a text line says: failure markers, and the monitor's fault reports
    /// (`MON|ERROR: faulting PD: <name>`, then `MON|ERROR: <Kind>: ... fault_addr=0x...`).
    pub fn text(&mut self, line: &str) {
        let line = line.trim_end_matches('\r');
        if ["PANIC", "EXCEPTION", "FAIL"]
            .iter()
            .any(|m| line.starts_with(m))
        {
            self.summary.console_failures.push(line.to_string());
        }
        let Some(report) = line.strip_prefix("MON|ERROR: ") else {
            return;
        };
        if let Some(pd) = report.strip_prefix("faulting PD: ") {
            self.pending_pd = Some(pd.trim().to_string());
            return;
        }
        let Some((kind, rest)) = report.split_once(": ") else {
            return;
        };
        if !kind.ends_with("Fault") && kind != "UserException" {
            return;
        }
        if let Some(pd) = self.pending_pd.take() {
            let addr = rest
                .split_whitespace()
                .find_map(|w| w.strip_prefix("fault_addr="))
                .and_then(|h| u64::from_str_radix(h.trim_start_matches("0x"), 16).ok());
            self.faults.push(MonitorFault {
                pd,
                kind: kind.to_string(),
                addr,
            });
        }
    }

    /// Every reason the run failed, given how QEMU ended and the expected fault.
    pub fn failures(&self, timed_out: bool, expected: (&str, u64)) -> Vec<String> {
        let mut why = Vec::new();
        let s = &self.summary;
        if s.errors > 0 {
            why.push(format!("{} error-level log frame(s)", s.errors));
        }
        if s.malformed > 0 {
            why.push(format!("{} malformed defmt frame(s)", s.malformed));
        }
        for line in &s.console_failures {
            why.push(format!("console: {line}"));
        }
        if !s.pass_marker {
            why.push("no PASS in the defmt log".to_string());
        }
        let wanted = MonitorFault {
            pd: expected.0.to_string(),
            kind: "VMFault".to_string(),
            addr: Some(expected.1),
        };
        match self.faults.as_slice() {
            [f] if *f == wanted => {}
            [] => why.push(format!(
                "no fault report from the monitor (expected a VMFault of PD '{}' at {:#x})",
                expected.0, expected.1
            )),
            other => why.push(format!(
                "monitor fault reports {other:?}, expected exactly one VMFault of PD '{}' at {:#x}",
                expected.0, expected.1
            )),
        }
        if timed_out && self.faults.is_empty() {
            why.push("time limit expired (QEMU killed)".to_string());
        }
        why
    }
}

/// Builds the PDs; returns (PD name, ELF path) in the target's order.
fn build_pds(t: &MicrokitTarget) -> Result<Vec<(String, PathBuf)>, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let defmt_log = std::env::var("DEFMT_LOG").unwrap_or_else(|_| "debug".into());
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(workspace_root())
        .args([
            "build",
            "--release",
            "--message-format=json-render-diagnostics",
        ])
        .args([
            "-p",
            t.package,
            "--no-default-features",
            "--features",
            t.feature,
            "--target",
            t.rust_target,
        ]);
    for (_, bin) in t.pds {
        cmd.args(["--bin", bin]);
    }
    let mut child = cmd
        .env("DEFMT_LOG", defmt_log)
        .env("CARGO_PROFILE_RELEASE_DEBUG", "2")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot run {cargo}: {e}"))?;
    let mut found = BTreeMap::new();
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            for (_, bin) in t.pds {
                if let Some(p) = executable_of(&line, bin) {
                    found.insert(*bin, p);
                }
            }
        }
    }
    let status = child.wait().map_err(|e| format!("cargo build: {e}"))?;
    if !status.success() {
        return Err(format!("cargo build of the PDs failed ({status})"));
    }
    t.pds
        .iter()
        .map(|(pd, bin)| {
            found
                .remove(bin)
                .map(|p| (pd.to_string(), p))
                .ok_or_else(|| format!("cargo built no executable named {bin}"))
        })
        .collect()
}

/// Assembles the image with the SDK's tool: the PDs' ELFs copied into `dir` under their
/// program-image names, then `microkit <system> --board --config --search-path dir`.
fn assemble(
    t: &MicrokitTarget,
    sdk: &Path,
    pds: &[(String, PathBuf)],
    dir: &Path,
) -> Result<PathBuf, String> {
    for ((_, bin), (_, elf)) in t.pds.iter().zip(pds) {
        std::fs::copy(elf, dir.join(bin)).map_err(|e| format!("{}: {e}", elf.display()))?;
    }
    let tool = sdk.join("bin").join("microkit");
    let image = dir.join("loader.img");
    let mut cmd = Command::new(&tool);
    cmd.arg(workspace_root().join(t.system))
        .args(["--board", t.board, "--config", t.config])
        .arg("--search-path")
        .arg(dir)
        .arg("-o")
        .arg(&image)
        .arg("-r")
        .arg(dir.join("report.txt"));
    println!("microkit| {}", super::render(&cmd));
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {}: {e}", tool.display()))?;
    for l in String::from_utf8_lossy(&out.stdout)
        .lines()
        .chain(String::from_utf8_lossy(&out.stderr).lines())
    {
        println!("microkit| {l}");
    }
    if !out.status.success() {
        return Err(format!("the Microkit tool failed ({})", out.status));
    }
    Ok(image)
}

/// Builds, assembles, boots and judges `t` (time limit `limit`); output files go to `dir`.
pub fn run(t: &MicrokitTarget, dir: &Path, limit: Duration) -> Verdict {
    let pds = match build_pds(t) {
        Ok(p) => p,
        Err(e) => return Verdict::Fail(vec![e]),
    };
    let Some(sdk) = std::env::var_os("MICROKIT_SDK").map(PathBuf::from) else {
        return Verdict::Skipped(
            "MICROKIT_SDK is not set: point it at a Microkit SDK (a release from the Microkit \
             project, or one built per Microkit's own instructions) with board qemu_virt_aarch64, \
             configuration debug; the PDs were built"
                .to_string(),
        );
    };
    if let Err(e) = std::fs::create_dir_all(dir) {
        return Verdict::Fail(vec![format!("{}: {e}", dir.display())]);
    }
    let image = match assemble(t, &sdk, &pds, dir) {
        Ok(i) => i,
        Err(e) => return Verdict::Fail(vec![e]),
    };
    match boot(t, &pds, &image, dir, limit) {
        Ok(why) if why.is_empty() => Verdict::Pass,
        Ok(why) => Verdict::Fail(why),
        Err(e) => Verdict::Fail(vec![e]),
    }
}

/// Boots the image and streams the console until the expected fault report (or the limit).
fn boot(
    t: &MicrokitTarget,
    pds: &[(String, PathBuf)],
    image: &Path,
    dir: &Path,
    limit: Duration,
) -> Result<Vec<String>, String> {
    let infos: Vec<(String, ElfInfo)> = pds
        .iter()
        .map(|(pd, elf)| ElfInfo::load(elf).map(|i| (pd.clone(), i)))
        .collect::<Result<_, _>>()?;
    let root = workspace_root();
    let mut decoders: BTreeMap<&str, DefmtLog<'_>> = infos
        .iter()
        .map(|(pd, info)| (pd.as_str(), DefmtLog::new(info, &root)))
        .collect();
    let console_path = dir.join("console.txt");
    File::create(&console_path).map_err(|e| format!("{}: {e}", console_path.display()))?;
    let mut tail = File::open(&console_path).map_err(|e| format!("{e}"))?;

    let mut cmd = Command::new(t.qemu);
    cmd.args(t.qemu_args)
        .arg("-serial")
        .arg(format!("file:{}", console_path.display()))
        .arg("-device")
        .arg(format!(
            "loader,file={},addr={:#x},cpu-num=0",
            image.display(),
            t.load_addr
        ))
        .stdin(Stdio::null())
        .stderr(Stdio::piped());
    println!("qemu| {}", super::render(&cmd));
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", t.qemu))?;
    let stderr = child.stderr.take().map(|err| {
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                println!("qemu!| {line}");
            }
        })
    });

    let mut log = MicrokitLog::default();
    let mut partial = Vec::new();
    let start = Instant::now();
    let mut fault_seen: Option<Instant> = None;
    let mut pump = |log: &mut MicrokitLog, decoders: &mut BTreeMap<&str, DefmtLog<'_>>| {
        let mut buf = Vec::new();
        let _ = tail.read_to_end(&mut buf);
        partial.extend_from_slice(&buf);
        while let Some(nl) = partial.iter().position(|&b| b == b'\n') {
            let raw: Vec<u8> = partial.drain(..=nl).collect();
            let text = String::from_utf8_lossy(&raw[..nl]).into_owned();
            match classify(text.trim_end_matches('\r')) {
                Line::Defmt { pd, bytes } => match (decoders.get_mut(pd), bytes) {
                    (Some(d), Some(b)) => {
                        print!("{pd:>8}");
                        d.feed(&b, &mut log.summary);
                    }
                    _ => {
                        log.summary.malformed += 1;
                        println!("console| {text}  <undecodable defmt line>");
                    }
                },
                Line::Text(l) => {
                    println!("console| {l}");
                    log.text(l);
                }
            }
        }
    };
    let (timed_out, status) = loop {
        pump(&mut log, &mut decoders);
        if fault_seen.is_none() && !log.faults.is_empty() {
            fault_seen = Some(Instant::now());
        }
        // The report's remaining lines follow at once; then the system is idle for good.
        if fault_seen.is_some_and(|f| f.elapsed() >= Duration::from_millis(500)) {
            let _ = child.kill();
            let _ = child.wait();
            break (false, None);
        }
        match child.try_wait() {
            Ok(Some(st)) => break (false, Some(st)),
            Ok(None) if start.elapsed() >= limit => {
                let _ = child.kill();
                let _ = child.wait();
                break (true, None);
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(format!("waiting for QEMU: {e}")),
        }
    };
    pump(&mut log, &mut decoders);
    if let Some(t) = stderr {
        let _ = t.join();
    }
    println!(
        "qemu| ended after {:.2} s: {}",
        start.elapsed().as_secs_f64(),
        match (timed_out, status) {
            (true, _) => "killed at the time limit".to_string(),
            (false, None) => "stopped by the runner after the monitor's fault report".to_string(),
            (false, Some(s)) => format!("exited by itself ({s})"),
        }
    );
    println!(
        "qemu| {} defmt frames ({} warnings, {} errors); monitor fault reports: {:?}",
        log.summary.frames, log.summary.warnings, log.summary.errors, log.faults
    );
    let mut why = log.failures(timed_out, t.expected_fault);
    if let Some(st) = status {
        why.push(format!(
            "QEMU exited by itself ({st}); a Microkit system never exits"
        ));
    }
    Ok(why)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_lines_are_defmt_frames_or_text() {
        assert_eq!(
            classify("~driver:0a00"),
            Line::Defmt {
                pd: "driver",
                bytes: Some(vec![0x0a, 0x00])
            }
        );
        assert_eq!(
            classify("~iommu:0a0"),
            Line::Defmt {
                pd: "iommu",
                bytes: None
            }
        );
        assert_eq!(
            classify("~iommu:zz"),
            Line::Defmt {
                pd: "iommu",
                bytes: None
            }
        );
        assert_eq!(classify("MON|INFO: up"), Line::Text("MON|INFO: up"));
        assert_eq!(classify("~no colon"), Line::Text("~no colon"));
    }

    const REPORT: &str = "MON|ERROR: received message 0x00000006  badge: 0x0000000000000003  tcb cap: 0x000000000000000c
MON|ERROR: faulting PD: driver
Registers: 
pc : 0x0000000000204c88
MON|ERROR: VMFault: ip=0x0000000000204c88  fault_addr=0x0000000009050000  fsr=0x0000000093880006  (data fault)
MON|ERROR:   ec: 0x00000024  Data Abort from a lower Exception level   il: 1   iss: 0x01880006
MON|ERROR:   dfsc = translation fault, level 2 (0x00000006)";

    fn passed(log: &mut MicrokitLog) {
        log.summary.pass_marker = true;
        log.summary.frames = 3;
    }

    #[test]
    fn the_expected_fault_report_passes_and_nothing_else_does() {
        let expected = ("driver", 0x0905_0000);
        let mut log = MicrokitLog::default();
        passed(&mut log);
        for l in REPORT.lines() {
            log.text(l);
        }
        assert_eq!(
            log.faults,
            [MonitorFault {
                pd: "driver".into(),
                kind: "VMFault".into(),
                addr: Some(0x0905_0000)
            }]
        );
        assert!(log.failures(false, expected).is_empty());
        // Another address, another PD, no report, two reports, no PASS, a FAIL line.
        assert_eq!(log.failures(false, ("driver", 0x1000)).len(), 1);
        assert_eq!(log.failures(false, ("iommu", 0x0905_0000)).len(), 1);
        let mut none = MicrokitLog::default();
        passed(&mut none);
        assert_eq!(none.failures(true, expected).len(), 2);
        let mut two = MicrokitLog::default();
        passed(&mut two);
        for l in REPORT.lines().chain(REPORT.lines()) {
            two.text(l);
        }
        assert_eq!(two.failures(false, expected).len(), 1);
        let mut bad = MicrokitLog::default();
        for l in REPORT.lines() {
            bad.text(l);
        }
        bad.text("FAIL: scenario failed");
        bad.text("PANIC in PD 'iommu': x");
        assert_eq!(bad.failures(false, expected).len(), 3);
    }

    #[test]
    fn a_cap_fault_is_recorded_with_its_address() {
        let mut log = MicrokitLog::default();
        log.text("MON|ERROR: faulting PD: iommu");
        log.text("MON|ERROR: CapFault: ip=0x0000000000200010  fault_addr=0x0000000000000094  in_recv_phase=false");
        assert_eq!(log.faults[0].kind, "CapFault");
        assert_eq!(log.faults[0].addr, Some(0x94));
    }
}
