//! The crate's one error type: each variant says what was being done to what.

use std::path::PathBuf;

/// Errors from packet sources, writers and live capture.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("open {}: {}", path.display(), kaprobe_sock::fmt::os_error(source))]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("read {}: {}", path.display(), kaprobe_sock::fmt::os_error(source))]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not a pcap or pcapng file (it starts with {magic})", path.display())]
    NotPcap { path: PathBuf, magic: String },
    #[error("{}: corrupt capture after frame {frame}: {detail}", path.display())]
    Corrupt {
        path: PathBuf,
        frame: u64,
        detail: String,
    },
    #[error("{}: link type {linktype} is not supported (kaprobe reads Ethernet, Linux SLL/SLL2, raw IP and BSD loopback)", path.display())]
    UnsupportedLink { path: PathBuf, linktype: u32 },
    #[error("write {}: {}", path.display(), kaprobe_sock::fmt::os_error(source))]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("open a packet socket on {iface}: permission denied (needs CAP_NET_RAW): run as root or `sudo setcap cap_net_raw,cap_net_admin=eip $(which kaprobe)`")]
    Permission { iface: String },
    #[error("no network interface named '{iface}' (available: {available})")]
    NoSuchInterface { iface: String, available: String },
    #[error("{what} on {iface}: {}", kaprobe_sock::fmt::os_error(source))]
    Socket {
        what: &'static str,
        iface: String,
        source: std::io::Error,
    },
}

impl CaptureError {
    /// True when the error is a missing privilege (CAP_NET_RAW).
    #[must_use]
    pub fn is_permission(&self) -> bool {
        matches!(self, Self::Permission { .. })
    }

    /// True when the error is about reading or writing a file (or its format).
    #[must_use]
    pub fn is_file(&self) -> bool {
        matches!(
            self,
            Self::Open { .. }
                | Self::Read { .. }
                | Self::NotPcap { .. }
                | Self::Corrupt { .. }
                | Self::UnsupportedLink { .. }
                | Self::Write { .. }
        )
    }
}
