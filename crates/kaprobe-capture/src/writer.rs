//! A pcap writer (classic format, nanosecond timestamps) for `watch --write`, test fixtures
//! and benchmark files. Readable by tcpdump, tshark and kaprobe.

use std::io::Write;
use std::time::Duration;

use crate::packet::LinkType;

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
        let mut h = Vec::with_capacity(24);
        h.extend_from_slice(&0xa1b2_3c4d_u32.to_le_bytes());
        h.extend_from_slice(&2u16.to_le_bytes());
        h.extend_from_slice(&4u16.to_le_bytes());
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
        let mut h = [0u8; 16];
        let secs = u32::try_from(ts.as_secs()).unwrap_or(u32::MAX);
        h[0..4].copy_from_slice(&secs.to_le_bytes());
        h[4..8].copy_from_slice(&ts.subsec_nanos().to_le_bytes());
        // incl <= snaplen, a u32.
        h[8..12].copy_from_slice(&(incl as u32).to_le_bytes());
        h[12..16].copy_from_slice(&orig_len.max(incl as u32).to_le_bytes());
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
