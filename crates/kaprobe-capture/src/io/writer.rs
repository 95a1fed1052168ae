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

/// A pcap file being written, remembering its path for error messages.
pub struct PcapFile {
    path: PathBuf,
    w: PcapWriter<io::BufWriter<std::fs::File>>,
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
        })
    }

    /// Append a frame.
    ///
    /// # Errors
    /// [`CaptureError::Write`].
    pub fn write(&mut self, f: &Frame<'_>) -> Result<(), CaptureError> {
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
