//! The pcap writer (classic format, nanosecond timestamps) for `watch --write`, test fixtures
//! and benchmark files. Readable by tcpdump, tshark and kaprobe.
//!
//! One writer: [`PcapWriter`] encodes the file header and records into any `Write`;
//! [`PcapFile`] is that writer over a buffered file it created, turning I/O errors into
//! [`CaptureError::Write`] naming the file.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::CaptureError;
use crate::io::source::Frame;
use crate::wire::packet::LinkType;

/// Magic number of a pcap file with nanosecond timestamps (written little-endian).
const MAGIC_NANOS: u32 = 0xa1b2_3c4d;
/// Format version written: 2.4.
const VERSION_MAJOR: u16 = 2;
const VERSION_MINOR: u16 = 4;
/// Length of the file header.
const FILE_HEADER_LEN: usize = 24;
/// Length of a record header: timestamp seconds, timestamp nanoseconds, captured length,
/// length on the wire (u32 each).
const RECORD_HEADER_LEN: usize = 16;
/// Snapshot length [`PcapFile::create`] writes in the header: whole packets.
const DEFAULT_FILE_SNAPLEN: u32 = 262_144;

/// Writes frames to any `Write` as a pcap file.
pub struct PcapWriter<W: Write> {
    out: W,
    snaplen: u32,
}

impl<W: Write> PcapWriter<W> {
    /// Write the file header for `link` frames.
    ///
    /// # Errors
    /// The underlying writer's error.
    pub fn new(mut out: W, link: LinkType, snaplen: u32) -> std::io::Result<Self> {
        let mut h = Vec::with_capacity(FILE_HEADER_LEN);
        h.extend_from_slice(&MAGIC_NANOS.to_le_bytes());
        h.extend_from_slice(&VERSION_MAJOR.to_le_bytes());
        h.extend_from_slice(&VERSION_MINOR.to_le_bytes());
        // Time zone offset and timestamp accuracy: both always 0.
        h.extend_from_slice(&0i32.to_le_bytes());
        h.extend_from_slice(&0u32.to_le_bytes());
        h.extend_from_slice(&snaplen.to_le_bytes());
        h.extend_from_slice(&link.linktype().to_le_bytes());
        out.write_all(&h)?;
        Ok(Self { out, snaplen })
    }

    /// Append one frame captured at `ts` (since the epoch); `orig_len` is its length on the
    /// wire. Bytes beyond the snapshot length are cut.
    ///
    /// # Errors
    /// The underlying writer's error.
    pub fn write(&mut self, ts: Duration, data: &[u8], orig_len: u32) -> std::io::Result<()> {
        let incl = data.len().min(self.snaplen as usize);
        let secs = u32::try_from(ts.as_secs()).unwrap_or(u32::MAX);
        // incl <= snaplen, a u32.
        let incl32 = incl as u32;
        // The record header: four u32 fields in this order.
        let fields = [secs, ts.subsec_nanos(), incl32, orig_len.max(incl32)];
        let mut h = [0u8; RECORD_HEADER_LEN];
        for (at, v) in h.chunks_exact_mut(4).zip(fields) {
            at.copy_from_slice(&v.to_le_bytes());
        }
        self.out.write_all(&h)?;
        self.out.write_all(&data[..incl])
    }

    /// Flush buffered output.
    ///
    /// # Errors
    /// The underlying writer's error.
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }

    /// The inner writer.
    pub fn into_inner(self) -> W {
        self.out
    }
}

/// A pcap file being written, remembering its path for error messages; or a series of
/// files, as tcpdump's `-C`/`-W` write them ([`PcapFile::rotating`]).
pub struct PcapFile {
    path: PathBuf,
    w: PcapWriter<io::BufWriter<std::fs::File>>,
    rotate: Option<Rotation>,
    link: LinkType,
    snaplen: u32,
    /// Bytes in the current file.
    bytes: u64,
    /// Number of the current file in the series.
    index: u64,
    /// The name given: files of a series are `base` followed by their number.
    base: PathBuf,
}

/// When to start the next file of a series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// Start a new file before one would grow past this many bytes.
    pub max_bytes: u64,
    /// Keep at most this many files, overwriting the oldest (a ring); None keeps all.
    pub max_files: Option<u32>,
}

impl Rotation {
    /// The name of file number `i` of a series written to `base`: the number appended,
    /// zero-padded to the width of the largest one in a ring (`ka.pcap0` ... `ka.pcap9`,
    /// `ka.pcap00` ... `ka.pcap23`), as tcpdump names them.
    #[must_use]
    pub fn name(&self, base: &Path, i: u64) -> PathBuf {
        let width = self
            .max_files
            .map_or(1, |n| n.saturating_sub(1).max(1).to_string().len());
        let mut s = base.as_os_str().to_os_string();
        s.push(format!("{i:0width$}"));
        PathBuf::from(s)
    }
}

impl PcapFile {
    /// Create `path` for frames of `link`.
    ///
    /// # Errors
    /// [`CaptureError::Write`].
    pub fn create(path: &Path, link: LinkType) -> Result<Self, CaptureError> {
        Self::create_with_snaplen(path, link, DEFAULT_FILE_SNAPLEN)
    }

    /// Create `path` for frames of `link` cut to `snaplen` bytes (the header's snap length).
    ///
    /// # Errors
    /// [`CaptureError::Write`].
    pub fn create_with_snaplen(
        path: &Path,
        link: LinkType,
        snaplen: u32,
    ) -> Result<Self, CaptureError> {
        let err = |source| CaptureError::Write {
            path: path.to_path_buf(),
            source,
        };
        let f = std::fs::File::create(path).map_err(err)?;
        let w = PcapWriter::new(io::BufWriter::new(f), link, snaplen).map_err(err)?;
        Ok(Self {
            path: path.to_path_buf(),
            w,
            rotate: None,
            link,
            snaplen,
            bytes: FILE_HEADER_LEN as u64,
            index: 0,
            base: path.to_path_buf(),
        })
    }

    /// A series of files named after `base` (see [`Rotation::name`]), each at most
    /// `rotation.max_bytes` long (a file always takes at least one frame), the oldest
    /// overwritten once `rotation.max_files` exist.
    ///
    /// # Errors
    /// [`CaptureError::Write`] for the first file.
    pub fn rotating(
        base: &Path,
        link: LinkType,
        snaplen: u32,
        rotation: Rotation,
    ) -> Result<Self, CaptureError> {
        let mut f = Self::create_with_snaplen(&rotation.name(base, 0), link, snaplen)?;
        f.rotate = Some(rotation);
        f.base = base.to_path_buf();
        Ok(f)
    }

    /// The file being written now.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Files started so far (1 without rotation).
    #[must_use]
    pub fn files_started(&self) -> u64 {
        self.index + 1
    }

    fn next_file(&mut self, r: Rotation) -> Result<(), CaptureError> {
        self.flush()?;
        self.index += 1;
        let slot = match r.max_files {
            Some(n) => self.index % u64::from(n.max(1)),
            None => self.index,
        };
        let next = Self::create_with_snaplen(&r.name(&self.base, slot), self.link, self.snaplen)?;
        self.path = next.path;
        self.w = next.w;
        self.bytes = FILE_HEADER_LEN as u64;
        Ok(())
    }

    /// Append a frame.
    ///
    /// # Errors
    /// [`CaptureError::Write`].
    pub fn write(&mut self, f: &Frame<'_>) -> Result<(), CaptureError> {
        let kept = f.data.len().min(self.snaplen as usize);
        let record = (RECORD_HEADER_LEN + kept) as u64;
        if let Some(r) = self.rotate {
            if self.bytes > FILE_HEADER_LEN as u64 && self.bytes + record > r.max_bytes {
                self.next_file(r)?;
            }
        }
        self.bytes += record;
        self.w
            .write(f.ts, f.data, f.orig_len)
            .map_err(|source| CaptureError::Write {
                path: self.path.clone(),
                source,
            })
    }

    /// Flush to disk.
    ///
    /// # Errors
    /// [`CaptureError::Write`].
    pub fn flush(&mut self) -> Result<(), CaptureError> {
        self.w.flush().map_err(|source| CaptureError::Write {
            path: self.path.clone(),
            source,
        })
    }
}
