//! Where frames come from: the [`PacketSource`] seam, with a file implementation here and a
//! live one in [`crate::io::live`]. Classification never knows which it has.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use pcap_file::pcap::PcapHeader;
use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::{Block, PcapNgReader};
use pcap_file::{PcapError, TsResolution};

use crate::error::CaptureError;
use crate::wire::packet::LinkType;

/// One captured frame, borrowed from the source until the next call.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    /// Capture time since the Unix epoch.
    pub ts: Duration,
    /// The captured bytes, starting with the link-layer header.
    pub data: &'a [u8],
    /// Length on the wire (may exceed `data.len()` when the snapshot length cut it).
    pub orig_len: u32,
    /// How to read `data`; `None` when the interface's link type is not supported.
    pub link: Option<LinkType>,
}

/// What a source has for the caller.
#[derive(Debug)]
pub enum Next<'a> {
    /// A frame.
    Frame(Frame<'a>),
    /// Nothing arrived within the source's poll timeout (live sources only).
    Idle,
    /// The source is exhausted.
    End,
}

/// A source of captured frames.
pub trait PacketSource {
    /// The next frame, [`Next::Idle`] after a quiet poll interval, or [`Next::End`].
    ///
    /// # Errors
    /// I/O errors and corrupt input, saying what was read.
    fn next_frame(&mut self) -> Result<Next<'_>, CaptureError>;

    /// Frames the source saw but had to drop (kernel drops for live capture, a truncated
    /// last record for files).
    fn dropped(&self) -> u64 {
        0
    }

    /// Called once when the caller stops reading (live sources collect final counters).
    fn close(&mut self) {}

    /// The kernel's per-flow records, when the source's filter keeps them and withholds
    /// routine segments (see [`crate::io::ebpf`]): the tracker must read them.
    fn kernel_flows(&self) -> Option<std::sync::Arc<crate::io::ebpf::KernelFlows>> {
        None
    }
}

enum Inner {
    Pcap {
        rec: RecordReader,
        link: Option<LinkType>,
        nanos: bool,
    },
    PcapNg {
        reader: Box<PcapNgReader<Input>>,
        /// Per interface of the current section: link type, timestamp resolution, offset.
        ifaces: Vec<(Option<LinkType>, u8, u64)>,
    },
}

/// What a [`FileSource`] reads from: a file, or a stream such as standard input.
type Input = Box<dyn Read + Send>;

/// A pcap or pcapng file or stream (format detected from its magic number). Reading is
/// strictly sequential, so a pipe (`tcpdump -w - | ...`) works as well as a file.
pub struct FileSource {
    path: PathBuf,
    inner: Inner,
    frames: u64,
    truncated_tail: u64,
    done: bool,
    owned: Vec<u8>,
}

/// Convert a pcapng timestamp in interface units to a duration since the epoch.
fn ng_timestamp(units: u64, tsresol: u8, offset_secs: u64) -> Duration {
    let exp = u32::from(tsresol & 0x7f);
    let nanos: u128 = if tsresol & 0x80 == 0 {
        if exp <= 9 {
            u128::from(units) * 10u128.pow(9 - exp)
        } else {
            u128::from(units) / 10u128.pow((exp - 9).min(30))
        }
    } else {
        (u128::from(units) * 1_000_000_000) >> exp.min(64)
    };
    let secs = u64::try_from(nanos / 1_000_000_000).unwrap_or(u64::MAX);
    let sub = (nanos % 1_000_000_000) as u32;
    Duration::new(secs.saturating_add(offset_secs), sub)
}

impl FileSource {
    /// Open `path` and read its header.
    ///
    /// # Errors
    /// [`CaptureError::Open`], [`CaptureError::NotPcap`], [`CaptureError::UnsupportedLink`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self, CaptureError> {
        let path = path.as_ref().to_path_buf();
        let f = File::open(&path).map_err(|source| CaptureError::Open {
            path: path.clone(),
            source,
        })?;
        Self::from_reader(path, f)
    }

    /// Read a capture from a stream that cannot seek, such as standard input; `name` is what
    /// errors call it (e.g. "standard input"). The format is detected from the first bytes,
    /// which are then replayed to the pcap or pcapng reader.
    ///
    /// # Errors
    /// [`CaptureError::Read`], [`CaptureError::NotPcap`] (also for an empty stream),
    /// [`CaptureError::UnsupportedLink`].
    pub fn from_reader(
        name: impl Into<PathBuf>,
        mut reader: impl Read + Send + 'static,
    ) -> Result<Self, CaptureError> {
        let path: PathBuf = name.into();
        let mut magic = [0u8; 4];
        let n = read_up_to(&mut reader, &mut magic).map_err(|source| CaptureError::Read {
            path: path.clone(),
            source,
        })?;
        // pcap-file buffers (8 MB) itself: no second buffer in between.
        let buf: Input = Box::new(std::io::Cursor::new(magic).take(n as u64).chain(reader));
        let not_pcap = |path: &Path| CaptureError::NotPcap {
            path: path.to_path_buf(),
            magic: if n == 0 {
                "nothing: it is empty".into()
            } else {
                magic[..n].iter().map(|b| format!("{b:02x}")).collect()
            },
        };
        let inner = match magic {
            [0xa1, 0xb2, 0xc3, 0xd4]
            | [0xd4, 0xc3, 0xb2, 0xa1]
            | [0xa1, 0xb2, 0x3c, 0x4d]
            | [0x4d, 0x3c, 0xb2, 0xa1] => {
                let mut hdr = [0u8; 24];
                let mut f = buf;
                let n = read_up_to(&mut f, &mut hdr).map_err(|source| CaptureError::Read {
                    path: path.clone(),
                    source,
                })?;
                let (_, h) =
                    PcapHeader::from_slice(&hdr[..n]).map_err(|e| CaptureError::Corrupt {
                        path: path.clone(),
                        frame: 0,
                        detail: explain(&e, "the pcap file header (24 bytes)"),
                    })?;
                let lt = u32::from(h.datalink);
                let link = LinkType::from_linktype(lt);
                if link.is_none() {
                    return Err(CaptureError::UnsupportedLink { path, linktype: lt });
                }
                Inner::Pcap {
                    nanos: h.ts_resolution == TsResolution::NanoSecond,
                    rec: RecordReader {
                        file: f,
                        buf: vec![0; READ_CHUNK],
                        start: 0,
                        end: 0,
                        big_endian: h.endianness == pcap_file::Endianness::Big,
                        eof: false,
                    },
                    link,
                }
            }
            [0x0a, 0x0d, 0x0d, 0x0a] => {
                let reader = PcapNgReader::new(buf).map_err(|e| CaptureError::Corrupt {
                    path: path.clone(),
                    frame: 0,
                    detail: explain(&e, "the pcapng section header block"),
                })?;
                let ifaces = reader
                    .interfaces()
                    .iter()
                    .map(|idb| iface_info(idb))
                    .collect();
                Inner::PcapNg {
                    reader: Box::new(reader),
                    ifaces,
                }
            }
            _ => return Err(not_pcap(&path)),
        };
        Ok(Self {
            path,
            inner,
            frames: 0,
            truncated_tail: 0,
            done: false,
            owned: Vec::new(),
        })
    }

    /// Frames read so far.
    #[must_use]
    pub fn frames(&self) -> u64 {
        self.frames
    }
}

fn fail(
    e: PcapError,
    path: &Path,
    frames: u64,
    done: &mut bool,
    truncated_tail: &mut u64,
) -> Result<Next<'static>, CaptureError> {
    *done = true;
    match e {
        // A capture cut mid-record (tcpdump killed while writing): count it, stop.
        PcapError::IncompleteBuffer => {
            *truncated_tail += 1;
            Ok(Next::End)
        }
        PcapError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            *truncated_tail += 1;
            Ok(Next::End)
        }
        PcapError::IoError(source) => Err(CaptureError::Read {
            path: path.to_path_buf(),
            source,
        }),
        other => Err(CaptureError::Corrupt {
            path: path.to_path_buf(),
            frame: frames,
            detail: explain(&other, "a pcapng block"),
        }),
    }
}

/// What went wrong in `part` of a capture file, in kaprobe's words rather than the pcap
/// reader's.
fn explain(e: &PcapError, part: &str) -> String {
    match e {
        PcapError::IncompleteBuffer => format!("{part} is cut short: the file ends inside it"),
        PcapError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            format!("{part} is cut short: the file ends inside it")
        }
        PcapError::IoError(io) => format!(
            "{part} could not be read ({})",
            kaprobe_sock::fmt::os_error(io)
        ),
        PcapError::InvalidField(field) => match field.split_once(':') {
            Some((block, _)) => {
                format!("{part} is not valid: a field of its {block} is out of range")
            }
            None => format!("{part} is not valid: a field is out of range"),
        },
        PcapError::Utf8Error(_) | PcapError::FromUtf8Error(_) => {
            format!("{part} has an option that should be UTF-8 text and is not")
        }
        PcapError::InvalidInterfaceId(id) => {
            format!("{part} names interface {id}, which no interface description block defined")
        }
    }
}

/// Read size: small enough that records are parsed while the kernel's copy is still in
/// the CPU cache.
const READ_CHUNK: usize = 256 * 1024;
/// Larger records than this are corrupt (snapshot lengths top out at 256 KiB).
const MAX_RECORD: usize = 16 << 20;

/// Classic pcap records read straight from the file into a reused buffer.
struct RecordReader {
    file: Input,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    big_endian: bool,
    eof: bool,
}

enum Record<'a> {
    Frame {
        ts_sec: u32,
        ts_frac: u32,
        orig_len: u32,
        data: &'a [u8],
    },
    End {
        truncated: bool,
    },
}

impl RecordReader {
    fn data(&self) -> &[u8] {
        &self.buf
    }

    /// The four words of the record header at `start` (caller made 16 bytes available).
    #[inline]
    fn header(&self) -> [u32; 4] {
        let mut h = [0u8; 16];
        if let Some(b) = self.buf.get(self.start..self.start + 16) {
            h.copy_from_slice(b);
        }
        let v = u128::from_le_bytes(h);
        let mut w = [
            v as u32,
            (v >> 32) as u32,
            (v >> 64) as u32,
            (v >> 96) as u32,
        ];
        if self.big_endian {
            for x in &mut w {
                *x = x.swap_bytes();
            }
        }
        w
    }

    /// Make at least `need` bytes available from `start`; false at end of file.
    #[cold]
    #[inline(never)]
    fn fill(&mut self, need: usize, path: &Path) -> Result<bool, CaptureError> {
        while self.end - self.start < need {
            if self.eof {
                return Ok(false);
            }
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.buf.len() < need {
                self.buf.resize(need.max(READ_CHUNK), 0);
            }
            match self.file.read(&mut self.buf[self.end..]) {
                Ok(0) => self.eof = true,
                Ok(n) => self.end += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(CaptureError::Read {
                        path: path.to_path_buf(),
                        source,
                    })
                }
            }
        }
        Ok(true)
    }

    #[inline]
    fn next(&mut self, path: &Path, frames: u64) -> Result<Record<'_>, CaptureError> {
        if self.end - self.start < 16 && !self.fill(16, path)? {
            return Ok(Record::End {
                truncated: self.end > self.start,
            });
        }
        let [ts_sec, ts_frac, incl, orig_len] = self.header();
        let incl = incl as usize;
        if incl > MAX_RECORD {
            return Err(CaptureError::Corrupt {
                path: path.to_path_buf(),
                frame: frames,
                detail: format!("record {} claims {incl} captured bytes", frames + 1),
            });
        }
        if self.end - self.start < 16 + incl && !self.fill(16 + incl, path)? {
            return Ok(Record::End { truncated: true });
        }
        let at = self.start + 16;
        self.start = at + incl;
        Ok(Record::Frame {
            ts_sec,
            ts_frac,
            orig_len,
            data: &self.data()[at..at + incl],
        })
    }
}

fn iface_info(idb: &InterfaceDescriptionBlock<'_>) -> (Option<LinkType>, u8, u64) {
    let mut resol = 6u8;
    let mut off = 0u64;
    for o in &idb.options {
        match o {
            InterfaceDescriptionOption::IfTsResol(r) => resol = *r,
            InterfaceDescriptionOption::IfTsOffset(s) => off = *s,
            _ => {}
        }
    }
    (LinkType::from_linktype(u32::from(idb.linktype)), resol, off)
}

fn read_up_to(f: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

impl PacketSource for FileSource {
    fn next_frame(&mut self) -> Result<Next<'_>, CaptureError> {
        let Self {
            path,
            inner,
            frames,
            truncated_tail,
            done,
            owned,
        } = self;
        if *done {
            return Ok(Next::End);
        }
        match inner {
            Inner::Pcap { rec, link, nanos } => {
                let link = *link;
                let nanos = *nanos;
                match rec.next(path, *frames) {
                    Err(e) => {
                        *done = true;
                        Err(e)
                    }
                    Ok(Record::End { truncated }) => {
                        *done = true;
                        if truncated {
                            *truncated_tail += 1;
                        }
                        Ok(Next::End)
                    }
                    Ok(Record::Frame {
                        ts_sec,
                        ts_frac,
                        orig_len,
                        data,
                    }) => {
                        let frac = if nanos {
                            ts_frac.min(999_999_999)
                        } else {
                            ts_frac.min(999_999).saturating_mul(1000)
                        };
                        *frames += 1;
                        Ok(Next::Frame(Frame {
                            ts: Duration::new(u64::from(ts_sec), frac),
                            data,
                            orig_len,
                            link,
                        }))
                    }
                }
            }
            Inner::PcapNg { reader, ifaces } => loop {
                let block = match reader.next_block() {
                    None => {
                        *done = true;
                        return Ok(Next::End);
                    }
                    Some(Err(e)) => return fail(e, path, *frames, done, truncated_tail),
                    Some(Ok(b)) => b,
                };
                let (ts, data, orig_len, link) = match block {
                    Block::EnhancedPacket(EnhancedPacketBlock {
                        interface_id,
                        timestamp,
                        original_len,
                        data,
                        ..
                    }) => {
                        let units = u64::try_from(timestamp.as_nanos()).unwrap_or(u64::MAX);
                        let (link, resol, off) = ifaces
                            .get(interface_id as usize)
                            .copied()
                            .unwrap_or((None, 6, 0));
                        (ng_timestamp(units, resol, off), data, original_len, link)
                    }
                    Block::SimplePacket(sp) => {
                        let link = ifaces.first().and_then(|i| i.0);
                        (Duration::ZERO, sp.data, sp.original_len, link)
                    }
                    Block::Packet(pb) => {
                        let link = ifaces.get(usize::from(pb.interface_id)).and_then(|i| i.0);
                        (
                            ng_timestamp(pb.timestamp, 6, 0),
                            pb.data,
                            pb.original_len,
                            link,
                        )
                    }
                    Block::SectionHeader(_) => {
                        ifaces.clear();
                        continue;
                    }
                    Block::InterfaceDescription(idb) => {
                        ifaces.push(iface_info(&idb));
                        continue;
                    }
                    _ => continue,
                };
                *frames += 1;
                owned.clear();
                owned.extend_from_slice(&data);
                return Ok(Next::Frame(Frame {
                    ts,
                    data: owned,
                    orig_len,
                    link,
                }));
            },
        }
    }

    fn dropped(&self) -> u64 {
        self.truncated_tail
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pipe-like reader that hands out at most `step` bytes per read.
    struct Trickle {
        data: Vec<u8>,
        at: usize,
        step: usize,
    }

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.step.min(buf.len()).min(self.data.len() - self.at);
            buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    fn frames_of(src: &mut FileSource) -> Vec<(Duration, Vec<u8>)> {
        let mut out = Vec::new();
        while let Next::Frame(f) = src.next_frame().unwrap() {
            out.push((f.ts, f.data.to_vec()));
        }
        out
    }

    #[test]
    fn a_stream_read_in_small_pieces_gives_the_same_frames_as_a_file() {
        let mut w = crate::PcapWriter::new(Vec::new(), LinkType::Ethernet, 65_535).unwrap();
        for i in 0..5u8 {
            let frame = vec![i; 60 + usize::from(i)];
            w.write(Duration::from_millis(u64::from(i) * 10), &frame, 60)
                .unwrap();
        }
        let bytes = w.into_inner();
        let path = std::env::temp_dir().join(format!("kaprobe-src-{}.pcap", std::process::id()));
        std::fs::write(&path, &bytes).unwrap();
        let from_file = frames_of(&mut FileSource::open(&path).unwrap());
        let _ = std::fs::remove_file(&path);
        for step in [1, 3, 7, 4096] {
            let r = Trickle {
                data: bytes.clone(),
                at: 0,
                step,
            };
            let mut src = FileSource::from_reader("standard input", r).unwrap();
            assert_eq!(frames_of(&mut src), from_file, "step {step}");
            assert_eq!(src.dropped(), 0);
        }
        assert_eq!(from_file.len(), 5);
    }

    #[test]
    fn empty_and_foreign_streams_are_named_errors() {
        let e = FileSource::from_reader("standard input", std::io::empty())
            .err()
            .unwrap();
        assert_eq!(
            e.to_string(),
            "standard input is not a pcap or pcapng file (it starts with nothing: it is empty)"
        );
        let e = FileSource::from_reader("standard input", &b"GET / HTTP/1.1"[..])
            .err()
            .unwrap();
        assert!(e.to_string().contains("it starts with 47455420"), "{e}");
        assert!(e.is_file());
    }

    #[test]
    fn pcapng_timestamps_follow_the_interface_resolution() {
        assert_eq!(ng_timestamp(1_500_000, 6, 0), Duration::from_millis(1500));
        assert_eq!(
            ng_timestamp(1_500_000_000, 9, 0),
            Duration::from_millis(1500)
        );
        assert_eq!(ng_timestamp(3, 0x81, 10), Duration::from_millis(11_500));
        assert!(ng_timestamp(u64::MAX, 0xff, 0) < Duration::from_secs(1));
        assert!(ng_timestamp(u64::MAX, 0x7f, u64::MAX) >= Duration::from_secs(u64::MAX));
    }
}
