//! The QEMU runner: builds a bare-metal image, boots it under a time limit, prints its console
//! and its decoded defmt log as they arrive, and judges the run.
//!
//! A run passes only if QEMU exits by itself within the time limit with the target's success
//! status, the defmt log holds a `PASS` frame, no error-level frame, no malformed or cut frame,
//! and the console reports no `PANIC`, `EXCEPTION` or `FAIL`.

pub mod build;
pub mod log;
pub mod microkit;
pub mod targets;

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use log::{ConsoleLog, DefmtLog, Demux, ElfInfo, LogSummary, Merge};
use targets::{Channels, Target};

/// How one run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// QEMU's exit status; `None` when it was killed or ended by a signal.
    pub status: Option<i32>,
    /// The time limit expired and QEMU was killed.
    pub timed_out: bool,
    /// What the logs said.
    pub log: LogSummary,
}

impl Outcome {
    /// Every reason the run failed; empty when it passed.
    pub fn failures(&self, target: &Target) -> Vec<String> {
        let mut why = Vec::new();
        if self.timed_out {
            why.push("time limit expired (QEMU killed)".to_string());
        } else if self.status != Some(target.success_status) {
            why.push(format!(
                "QEMU exit status {:?}, success is {}",
                self.status, target.success_status
            ));
        }
        if self.log.errors > 0 {
            why.push(format!("{} error-level log frame(s)", self.log.errors));
        }
        if self.log.malformed > 0 {
            why.push(format!("{} malformed defmt frame(s)", self.log.malformed));
        }
        if self.log.trailing_bytes > 0 {
            why.push(format!(
                "defmt stream cut ({} bytes)",
                self.log.trailing_bytes
            ));
        }
        for line in &self.log.console_failures {
            why.push(format!("console: {line}"));
        }
        if !self.log.pass_marker {
            why.push("no PASS in the defmt log".to_string());
        }
        why
    }
}

/// Reads what was appended to a file since the last call.
struct Tail {
    file: File,
}

impl Tail {
    fn read_new(&mut self) -> Vec<u8> {
        let mut buf = Vec::new();
        let _ = self.file.read_to_end(&mut buf);
        buf
    }
}

/// Boots `elf` as `target` with a time limit, streaming the logs. Files go to `dir`.
pub fn boot(target: &Target, elf: &Path, dir: &Path, limit: Duration) -> Result<Outcome, String> {
    let info = ElfInfo::load(elf)?;
    let root = build::workspace_root();
    let mut defmt = DefmtLog::new(&info, &root).hold();
    let mut console = ConsoleLog::default();
    let mut summary = LogSummary::default();

    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let console_path = dir.join("console.txt");
    let defmt_path = dir.join("defmt.bin");
    let mut tails = Vec::new();
    for p in [&console_path, &defmt_path] {
        File::create(p).map_err(|e| format!("{}: {e}", p.display()))?;
        tails.push(Tail {
            file: File::open(p).map_err(|e| format!("{}: {e}", p.display()))?,
        });
    }
    let mut cmd = Command::new(target.qemu);
    cmd.args(target.qemu_args);
    match target.channels {
        Channels::TwoSerials => {
            cmd.arg("-serial")
                .arg(format!("file:{}", console_path.display()))
                .arg("-serial")
                .arg(format!("file:{}", defmt_path.display()));
        }
        Channels::Muxed => {
            cmd.arg("-serial")
                .arg(format!("file:{}", console_path.display()));
        }
    }
    cmd.arg("-kernel").arg(elf);
    cmd.stdin(Stdio::null()).stderr(Stdio::piped());
    println!("qemu| {}", render(&cmd));
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", target.qemu))?;
    // QEMU's own messages (e.g. VT-d translation faults it logs), marked as such.
    let stderr = child.stderr.take().map(|err| {
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                println!("qemu!| {line}");
            }
        })
    });

    let start = Instant::now();
    let mut demux = Demux::default();
    // Console and defmt lines in the order the image wrote them (see `Merge`): the console
    // file is read before the defmt file each round.
    let mut merge = Merge::default();
    let mut pump = |summary: &mut LogSummary, last: bool| {
        merge.next_round();
        let c = tails[0].read_new();
        match target.channels {
            Channels::TwoSerials => {
                console.feed(&c, summary);
                let d = tails[1].read_new();
                defmt.feed(&d, summary);
            }
            Channels::Muxed => {
                let (text, frames) = demux.split(&c);
                console.feed(&text, summary);
                defmt.feed(&frames, summary);
            }
        }
        if last {
            console.finish(summary);
        }
        merge.add(console.take(), false);
        merge.add(defmt.take(), true);
        for line in merge.release(last) {
            println!("{line}");
        }
    };
    let (status, timed_out) = loop {
        pump(&mut summary, false);
        match child.try_wait() {
            Ok(Some(st)) => break (st.code(), false),
            Ok(None) if start.elapsed() >= limit => {
                let _ = child.kill();
                let _ = child.wait();
                break (None, true);
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(format!("waiting for QEMU: {e}")),
        }
    };
    pump(&mut summary, true);
    if let Some(t) = stderr {
        let _ = t.join();
    }
    defmt.finish(&mut summary);
    println!(
        "qemu| ended after {:.2} s: {}",
        start.elapsed().as_secs_f64(),
        match (timed_out, status) {
            (true, _) => "killed at the time limit".to_string(),
            (false, Some(s)) => format!("exit status {s}"),
            (false, None) => "ended by a signal".to_string(),
        }
    );
    Ok(Outcome {
        status,
        timed_out,
        log: summary,
    })
}

/// A command line as one string, for the log.
pub fn render(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The directory for one run's output files.
pub fn run_dir(target: &Target) -> PathBuf {
    std::env::temp_dir().join(format!("iommu-qemu-{}-{}", target.name, std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passing() -> Outcome {
        Outcome {
            status: Some(33),
            timed_out: false,
            log: LogSummary {
                frames: 10,
                pass_marker: true,
                ..LogSummary::default()
            },
        }
    }

    #[test]
    fn verdict() {
        let t = targets::find("vtd").unwrap();
        assert!(passing().failures(t).is_empty());
        let mut o = passing();
        o.status = Some(35);
        assert_eq!(o.failures(t).len(), 1);
        let mut o = passing();
        o.timed_out = true;
        o.status = None;
        assert_eq!(o.failures(t), ["time limit expired (QEMU killed)"]);
        let mut o = passing();
        o.log.pass_marker = false;
        o.log.errors = 1;
        o.log.trailing_bytes = 3;
        o.log.console_failures.push("PANIC: x".into());
        assert_eq!(o.failures(t).len(), 4);
    }
}
