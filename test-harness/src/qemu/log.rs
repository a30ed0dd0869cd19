//! The two output channels of an image, read while QEMU runs: the plain-text console and the
//! defmt frame stream (decoded with `defmt-decoder` against the image's ELF).

use std::collections::BTreeMap;
use std::path::Path;

use defmt_decoder::{DecodeError, Locations, StreamDecoder, Table};
use defmt_parser::Level;

/// What the logs said, for the verdict.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogSummary {
    /// defmt frames decoded.
    pub frames: usize,
    /// Frames at error level.
    pub errors: usize,
    /// Frames at warn level.
    pub warnings: usize,
    /// Frames that could not be decoded.
    pub malformed: usize,
    /// Bytes left over after the last complete frame (a frame cut short).
    pub trailing_bytes: usize,
    /// A defmt frame whose whole message is `PASS` was seen.
    pub pass_marker: bool,
    /// Console lines that report a failure (`PANIC`, `EXCEPTION`, `FAIL`).
    pub console_failures: Vec<String>,
}

/// Decodes defmt frames as bytes arrive and prints each as one readable line.
pub struct DefmtLog<'t> {
    decoder: Box<dyn StreamDecoder + Send + Sync + 't>,
    locations: &'t Locations,
    root: &'t Path,
    pending: usize,
}

/// The defmt table and source locations of an image.
pub struct ElfInfo {
    /// Interned format strings and levels.
    pub table: Table,
    /// Source locations of the log statements (empty without debug info).
    pub locations: Locations,
}

impl ElfInfo {
    /// Reads the defmt table of the ELF at `elf`.
    pub fn load(elf: &Path) -> Result<ElfInfo, String> {
        let bytes = std::fs::read(elf).map_err(|e| format!("{}: {e}", elf.display()))?;
        let table = Table::parse(&bytes)
            .map_err(|e| format!("{}: defmt table: {e}", elf.display()))?
            .ok_or_else(|| format!("{}: no .defmt section", elf.display()))?;
        let locations = table
            .get_locations(&bytes)
            .unwrap_or_else(|_| BTreeMap::new());
        Ok(ElfInfo { table, locations })
    }
}

impl<'t> DefmtLog<'t> {
    /// A decoder for `info`'s frames; source paths are shown relative to `root`.
    pub fn new(info: &'t ElfInfo, root: &'t Path) -> Self {
        DefmtLog {
            decoder: info.table.new_stream_decoder(),
            locations: &info.locations,
            root,
            pending: 0,
        }
    }

    /// Feeds newly arrived bytes, prints every complete frame, and counts into `summary`.
    pub fn feed(&mut self, bytes: &[u8], summary: &mut LogSummary) {
        self.decoder.received(bytes);
        self.pending += bytes.len();
        loop {
            match self.decoder.decode() {
                Ok(frame) => {
                    summary.frames += 1;
                    match frame.level() {
                        Some(Level::Error) => summary.errors += 1,
                        Some(Level::Warn) => summary.warnings += 1,
                        _ => {}
                    }
                    let message = frame.display_message().to_string();
                    if message == "PASS" {
                        summary.pass_marker = true;
                    }
                    let location = self
                        .locations
                        .get(&frame.index())
                        .map(|l| {
                            let file = l.file.strip_prefix(self.root).unwrap_or(&l.file);
                            format!("  ({}:{})", file.display(), l.line)
                        })
                        .unwrap_or_default();
                    println!("  {}{location}", frame.display(false));
                    self.pending = 0;
                }
                Err(DecodeError::UnexpectedEof) => break,
                Err(DecodeError::Malformed) => {
                    summary.malformed += 1;
                    self.pending = 0;
                    println!("  <malformed defmt frame>");
                }
            }
        }
    }

    /// Ends the stream: bytes not followed by a frame separator are a cut frame.
    pub fn finish(&mut self, summary: &mut LogSummary) {
        summary.trailing_bytes = self.pending;
    }
}

/// Splits one UART's bytes into console text and defmt frames ([`super::targets::Channels::Muxed`]):
/// 0xFF opens a frame, whose bytes up to and including its 0x00 terminator go to the defmt
/// decoder (zeros before the frame's first data byte, such as the encoder's separator at the
/// start of the stream, do not end it); every other byte is text. The state carries over
/// between calls.
#[derive(Debug, Default)]
pub struct Demux {
    in_frame: bool,
    has_data: bool,
}

impl Demux {
    /// The byte that opens a frame.
    pub const FRAME_START: u8 = 0xff;

    /// Splits newly arrived bytes into (text, frame bytes).
    pub fn split(&mut self, bytes: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let (mut text, mut frames) = (Vec::new(), Vec::new());
        for &b in bytes {
            if self.in_frame {
                frames.push(b);
                if b != 0 {
                    self.has_data = true;
                } else if self.has_data {
                    self.in_frame = false;
                }
            } else if b == Self::FRAME_START {
                self.in_frame = true;
                self.has_data = false;
            } else {
                text.push(b);
            }
        }
        (text, frames)
    }
}

/// Splits the console byte stream into lines, prints them, and notes failure reports.
#[derive(Default)]
pub struct ConsoleLog {
    partial: Vec<u8>,
}

impl ConsoleLog {
    /// Feeds newly arrived console bytes.
    pub fn feed(&mut self, bytes: &[u8], summary: &mut LogSummary) {
        self.partial.extend_from_slice(bytes);
        while let Some(nl) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=nl).collect();
            self.line(&line[..nl], summary);
        }
    }

    /// Flushes a last line without a newline.
    pub fn finish(&mut self, summary: &mut LogSummary) {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.line(&line, summary);
        }
    }

    fn line(&self, raw: &[u8], summary: &mut LogSummary) {
        let text = String::from_utf8_lossy(raw);
        let text = text.trim_end_matches('\r');
        println!("console| {text}");
        if ["PANIC", "EXCEPTION", "FAIL"]
            .iter()
            .any(|m| text.starts_with(m))
        {
            summary.console_failures.push(text.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn muxed_stream_is_split() {
        let mut d = Demux::default();
        let (t, f) = d.split(b"boot\n\xff\x00\x03\xff\x04");
        assert_eq!(
            (t.as_slice(), f.as_slice()),
            (&b"boot\n"[..], &[0u8, 3, 0xff, 4][..]),
            "a leading separator and 0xFF data bytes stay in the frame"
        );
        let (t, f) = d.split(b"\x05\x00PANIC\n\xff\x01\x00");
        assert_eq!(t, b"PANIC\n");
        assert_eq!(f, [5, 0, 1, 0]);
    }

    #[test]
    fn console_lines_are_split_and_failures_noted() {
        let mut s = LogSummary::default();
        let mut c = ConsoleLog::default();
        c.feed(b"booted\nPAN", &mut s);
        c.feed(b"IC: at x\r\nPASS\nEXCEPTION 14", &mut s);
        assert_eq!(s.console_failures, ["PANIC: at x"]);
        c.finish(&mut s);
        assert_eq!(s.console_failures, ["PANIC: at x", "EXCEPTION 14"]);
    }
}
