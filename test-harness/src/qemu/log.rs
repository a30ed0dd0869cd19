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

/// One line of an image's output, with the time the image stamped on it (microseconds of its
/// clock, the one defmt's timestamps use) when it carries one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The image's time of the line.
    pub at_us: Option<u64>,
    /// The line as printed.
    pub text: String,
}

/// Decodes defmt frames as bytes arrive and prints each as one readable line (or, after
/// [`DefmtLog::hold`], keeps the lines for [`DefmtLog::take`]).
pub struct DefmtLog<'t> {
    decoder: Box<dyn StreamDecoder + Send + Sync + 't>,
    locations: &'t Locations,
    root: &'t Path,
    pending: usize,
    held: Option<Vec<Entry>>,
}

/// Microseconds from a defmt timestamp shown as seconds with six decimals (`{=u64:us}`).
fn micros_of(shown: &str) -> Option<u64> {
    let (s, frac) = shown.trim().split_once('.')?;
    if frac.len() != 6 {
        return None;
    }
    s.parse::<u64>()
        .ok()?
        .checked_mul(1_000_000)?
        .checked_add(frac.parse().ok()?)
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
            held: None,
        }
    }

    /// Keeps the decoded lines for [`DefmtLog::take`] instead of printing them.
    pub fn hold(mut self) -> Self {
        self.held = Some(Vec::new());
        self
    }

    /// The lines decoded since the last call (empty unless [`DefmtLog::hold`]).
    pub fn take(&mut self) -> Vec<Entry> {
        self.held.as_mut().map(std::mem::take).unwrap_or_default()
    }

    fn emit(&mut self, entry: Entry) {
        match &mut self.held {
            Some(lines) => lines.push(entry),
            None => println!("{}", entry.text),
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
                    let at_us = frame
                        .display_timestamp()
                        .and_then(|t| micros_of(&t.to_string()));
                    let text = format!("  {}{location}", frame.display(false));
                    self.emit(Entry { at_us, text });
                    self.pending = 0;
                }
                Err(DecodeError::UnexpectedEof) => break,
                Err(DecodeError::Malformed) => {
                    summary.malformed += 1;
                    self.pending = 0;
                    self.emit(Entry {
                        at_us: None,
                        text: "  <malformed defmt frame>".to_string(),
                    });
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

/// Splits the console byte stream into lines and notes failure reports; the lines wait in
/// [`ConsoleLog::take`]. A line the image stamped with its clock (`[micros] text`, see
/// platform's `console!`) is shown as `console| seconds text`.
#[derive(Default)]
pub struct ConsoleLog {
    partial: Vec<u8>,
    lines: Vec<Entry>,
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

    /// The lines split off since the last call.
    pub fn take(&mut self) -> Vec<Entry> {
        std::mem::take(&mut self.lines)
    }

    fn line(&mut self, raw: &[u8], summary: &mut LogSummary) {
        let text = String::from_utf8_lossy(raw);
        let text = text.trim_end_matches('\r');
        let stamped = text
            .strip_prefix('[')
            .and_then(|t| t.split_once("] "))
            .and_then(|(n, rest)| Some((n.parse::<u64>().ok()?, rest)));
        let (at_us, text) = match stamped {
            Some((us, rest)) => (Some(us), rest),
            None => (None, text),
        };
        self.lines.push(Entry {
            at_us,
            text: match at_us {
                Some(us) => format!("console| {}.{:06} {text}", us / 1_000_000, us % 1_000_000),
                None => format!("console| {text}"),
            },
        });
        if ["PANIC", "EXCEPTION", "FAIL"]
            .iter()
            .any(|m| text.starts_with(m))
        {
            summary.console_failures.push(text.to_string());
        }
    }
}

/// Puts the lines of an image's two channels (console, defmt) in the order the image wrote
/// them, by the time each carries.
///
/// QEMU writes each channel to its file as the guest writes the UART, so the runner reads the
/// console file, then the defmt file, each round. A console line read in round k was written
/// before that round's defmt read: every frame older than it is in hand. A frame read in
/// round k is older than the console read of round k + 1: every console line older than it is
/// in hand from then on. So lines are released in time order, each once the other channel
/// cannot still hold an older one; a line without a time counts as the latest time seen.
#[derive(Debug, Default)]
pub struct Merge {
    /// (time, arrival, held until the next round starts, text).
    pending: Vec<(u64, u64, bool, String)>,
    arrivals: u64,
    latest: u64,
}

impl Merge {
    /// Starts a round: the frames of the previous round can no longer be overtaken.
    pub fn next_round(&mut self) {
        for p in &mut self.pending {
            p.2 = false;
        }
    }

    /// Adds console lines (released at once) or defmt lines (released from the next round).
    pub fn add(&mut self, lines: Vec<Entry>, defmt: bool) {
        for e in lines {
            let at = e.at_us.unwrap_or(self.latest);
            self.latest = self.latest.max(at);
            self.pending.push((at, self.arrivals, defmt, e.text));
            self.arrivals += 1;
        }
    }

    /// The lines that can be shown now, in order; with `all`, every line left.
    pub fn release(&mut self, all: bool) -> Vec<String> {
        self.pending.sort_by_key(|p| (p.0, p.1));
        let n = if all {
            self.pending.len()
        } else {
            self.pending
                .iter()
                .position(|p| p.2)
                .unwrap_or(self.pending.len())
        };
        self.pending.drain(..n).map(|p| p.3).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(us: u64, text: &str) -> Entry {
        Entry {
            at_us: Some(us),
            text: text.to_string(),
        }
    }

    #[test]
    fn merge_orders_the_channels_by_time() {
        let mut m = Merge::default();
        // Round 1: a console line at 5, frames at 3 and 7. A console line older than 3 may
        // still be unread, so nothing is shown yet (c5 comes after d3).
        m.next_round();
        m.add(vec![at(5, "c5")], false);
        m.add(vec![at(3, "d3"), at(7, "d7")], true);
        assert!(m.release(false).is_empty());
        // Round 2: a console line at 6 arrived late; it still comes before d7. d9 waits.
        m.next_round();
        m.add(vec![at(6, "c6")], false);
        m.add(vec![at(9, "d9")], true);
        assert_eq!(m.release(false), ["d3", "c5", "c6", "d7"]);
        m.add(
            vec![Entry {
                at_us: None,
                text: "c?".into(),
            }],
            false,
        );
        assert_eq!(m.release(true), ["d9", "c?"]);
    }

    #[test]
    fn timestamps_are_read_from_both_channels() {
        assert_eq!(micros_of("1.234567"), Some(1_234_567));
        assert_eq!(micros_of("0.5"), None);
        let mut s = LogSummary::default();
        let mut c = ConsoleLog::default();
        c.feed(b"[1500] PASS\nplain\n", &mut s);
        let lines = c.take();
        assert_eq!(lines[0], at(1500, "console| 0.001500 PASS"));
        assert_eq!(lines[1].at_us, None);
        assert!(s.console_failures.is_empty());
        c.feed(b"[20] FAIL: x\n", &mut s);
        assert_eq!(s.console_failures, ["FAIL: x"]);
    }

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
