//! System keep-alive defaults from `/proc/sys/net/ipv4` (per network namespace), and what
//! they mean for a connection whose peer vanishes.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::options::Effective;

/// The sysctls that decide when an idle or stalled connection is given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SystemDefaults {
    /// net.ipv4.tcp_keepalive_time: idle seconds before the first probe.
    pub keepalive_time: u64,
    /// net.ipv4.tcp_keepalive_intvl: seconds between probes.
    pub keepalive_intvl: u64,
    /// net.ipv4.tcp_keepalive_probes: unanswered probes before the connection is dropped.
    pub keepalive_probes: u64,
    /// net.ipv4.tcp_retries2: retransmissions of unacknowledged data before giving up.
    pub retries2: u64,
}

/// Where the kernel publishes them.
pub const PROC_IPV4: &str = "/proc/sys/net/ipv4";

/// Minimum and maximum retransmission timeout (TCP_RTO_MIN, TCP_RTO_MAX in include/net/tcp.h).
const RTO_MIN: Duration = Duration::from_millis(200);
const RTO_MAX: Duration = Duration::from_secs(120);

impl SystemDefaults {
    /// Read the running kernel's values (of this process's network namespace).
    pub fn read() -> Result<Self> {
        Self::read_from(Path::new(PROC_IPV4))
    }

    /// Read the values from a directory laid out like `/proc/sys/net/ipv4`.
    pub fn read_from(dir: &Path) -> Result<Self> {
        let get = |name: &str| -> Result<u64> {
            let path = dir.join(name);
            let text = std::fs::read_to_string(&path)
                .map_err(|e| Error::io(format!("read {}", path.display()), e))?;
            text.trim().parse::<u64>().map_err(|e| Error::Parse {
                what: format!("read {}", path.display()),
                detail: format!("'{}' is not a number ({e})", text.trim()),
            })
        };
        Ok(Self {
            keepalive_time: get("tcp_keepalive_time")?,
            keepalive_intvl: get("tcp_keepalive_intvl")?,
            keepalive_probes: get("tcp_keepalive_probes")?,
            retries2: get("tcp_retries2")?,
        })
    }

    /// The keep-alive settings a socket gets when it only turns SO_KEEPALIVE on.
    pub fn as_effective(&self) -> Effective {
        Effective {
            keepalive: true,
            idle: Duration::from_secs(self.keepalive_time),
            interval: Duration::from_secs(self.keepalive_intvl),
            count: u32::try_from(self.keepalive_probes).unwrap_or(u32::MAX),
            user_timeout: None,
        }
    }

    /// When an idle connection with SO_KEEPALIVE on notices a silently dead peer:
    /// `time + probes x intvl` after the last thing it heard.
    pub fn dead_peer_after(&self) -> Duration {
        self.as_effective().dead_peer_after()
    }

    /// When a connection with unacknowledged data gives up on a silent peer after
    /// `tcp_retries2` retransmissions, for a connection whose RTO starts at the 200ms
    /// minimum (`tcp_model_timeout` in net/ipv4/tcp_timer.c): the timeout doubles each
    /// retransmission until it reaches 120s.
    pub fn retransmit_give_up_after(&self) -> Duration {
        retransmit_timeout(self.retries2, RTO_MIN)
    }
}

/// Total time of `boundary` exponential-backoff retransmissions starting from `rto_base`,
/// with each timeout capped at 120s.
pub fn retransmit_timeout(boundary: u64, rto_base: Duration) -> Duration {
    // number of doublings before the timeout reaches RTO_MAX
    let mut thresh = 0u64;
    while rto_base * (1u32 << thresh.min(31)) < RTO_MAX && thresh < 31 {
        thresh += 1;
    }
    let thresh = thresh.saturating_sub(1);
    if boundary <= thresh {
        rto_base * ((2u32 << boundary) - 1)
    } else {
        let linear = rto_base * ((2u32 << thresh) - 1);
        let extra = u32::try_from(boundary - thresh).unwrap_or(u32::MAX);
        linear.saturating_add(RTO_MAX.saturating_mul(extra))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux_defaults_give_the_well_known_times() {
        let d = SystemDefaults {
            keepalive_time: 7200,
            keepalive_intvl: 75,
            keepalive_probes: 9,
            retries2: 15,
        };
        assert_eq!(d.dead_peer_after(), Duration::from_secs(7875));
        // the often-quoted 924.6s for tcp_retries2 = 15
        assert_eq!(d.retransmit_give_up_after(), Duration::from_millis(924_600));
        assert_eq!(retransmit_timeout(3, RTO_MIN), Duration::from_millis(3000));
    }

    #[test]
    fn reads_a_directory_laid_out_like_proc() {
        let dir = std::env::temp_dir().join(format!("kp-defaults-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (n, v) in [
            ("tcp_keepalive_time", "600\n"),
            ("tcp_keepalive_intvl", "10\n"),
            ("tcp_keepalive_probes", "5\n"),
            ("tcp_retries2", "8\n"),
        ] {
            std::fs::write(dir.join(n), v).unwrap();
        }
        let d = SystemDefaults::read_from(&dir).unwrap();
        assert_eq!(d.keepalive_time, 600);
        assert_eq!(d.dead_peer_after(), Duration::from_secs(650));
        std::fs::write(dir.join("tcp_retries2"), "lots\n").unwrap();
        let e = SystemDefaults::read_from(&dir).unwrap_err().to_string();
        assert!(e.contains("tcp_retries2") && e.contains("'lots'"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn this_kernel_publishes_them() {
        let d = SystemDefaults::read().unwrap();
        assert!(d.keepalive_time >= 1 && d.keepalive_probes >= 1);
    }
}
