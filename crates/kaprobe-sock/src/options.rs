//! Keep-alive options on one socket: validate against the kernel's ranges, set them through
//! socket2 one at a time (so an error names the option that failed), and read back what the
//! kernel really uses.

use std::ops::RangeInclusive;
use std::time::Duration;

use serde::Serialize;
use socket2::{Socket, TcpKeepalive};

use crate::error::{Error, Result};

/// TCP_KEEPIDLE and TCP_KEEPINTVL accept whole seconds in this range (MAX_TCP_KEEPIDLE,
/// MAX_TCP_KEEPINTVL in include/net/tcp.h).
pub const KEEPALIVE_SECS: RangeInclusive<u64> = 1..=32_767;
/// TCP_KEEPCNT accepts this many probes (MAX_TCP_KEEPCNT).
pub const KEEPALIVE_COUNT: RangeInclusive<u32> = 1..=127;
/// TCP_USER_TIMEOUT is an unsigned 32-bit number of milliseconds; 0 means "off".
pub const USER_TIMEOUT_MS: RangeInclusive<u64> = 0..=u32::MAX as u64;

/// A duration as a user would write it: `32768s`, `1.5s`.
fn show(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        crate::fmt::duration(d)
    }
}

/// Validate a keep-alive timer given as a duration: whole seconds in 1..=32767.
///
/// `flag` is how the user named it (`--idle`), `option` the kernel's name (`TCP_KEEPIDLE`).
pub fn check_keepalive_secs(flag: &str, option: &str, d: Duration) -> Result<u32> {
    let shown = show(d);
    let range = format!(
        "{option} takes whole seconds in {}s..={}s",
        KEEPALIVE_SECS.start(),
        KEEPALIVE_SECS.end()
    );
    if d.subsec_nanos() != 0 {
        return Err(Error::OutOfRange {
            flag: flag.into(),
            value: shown,
            range: format!("{range} (sub-second values are not rounded)"),
        });
    }
    if !KEEPALIVE_SECS.contains(&d.as_secs()) {
        return Err(Error::OutOfRange {
            flag: flag.into(),
            value: shown,
            range,
        });
    }
    u32::try_from(d.as_secs()).map_err(|_| Error::OutOfRange {
        flag: flag.into(),
        value: d.as_secs().to_string(),
        range: format!("{}..={}", KEEPALIVE_SECS.start(), KEEPALIVE_SECS.end()),
    })
}

/// Validate a probe count: 1..=127.
pub fn check_keepalive_count(flag: &str, n: u64) -> Result<u32> {
    match u32::try_from(n) {
        Ok(v) if KEEPALIVE_COUNT.contains(&v) => Ok(v),
        _ => Err(Error::OutOfRange {
            flag: flag.into(),
            value: n.to_string(),
            range: format!(
                "TCP_KEEPCNT takes {}..={} probes",
                KEEPALIVE_COUNT.start(),
                KEEPALIVE_COUNT.end()
            ),
        }),
    }
}

/// Validate TCP_USER_TIMEOUT: whole milliseconds that fit in u32 (0 = off).
pub fn check_user_timeout(flag: &str, d: Duration) -> Result<Duration> {
    let shown = show(d);
    if !d.subsec_nanos().is_multiple_of(1_000_000) {
        return Err(Error::OutOfRange {
            flag: flag.into(),
            value: shown,
            range: "TCP_USER_TIMEOUT takes whole milliseconds in 0..=4294967295ms (sub-millisecond values are not rounded)".into(),
        });
    }
    if !USER_TIMEOUT_MS.contains(&u64::try_from(d.as_millis()).unwrap_or(u64::MAX)) {
        return Err(Error::OutOfRange {
            flag: flag.into(),
            value: shown,
            range: "TCP_USER_TIMEOUT takes 0..=4294967295ms (about 49.7 days)".into(),
        });
    }
    Ok(d)
}

/// What to set on a socket. `None` leaves the system default in force.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeepaliveConfig {
    /// Idle time before the first probe (TCP_KEEPIDLE).
    pub idle: Option<Duration>,
    /// Time between probes (TCP_KEEPINTVL).
    pub interval: Option<Duration>,
    /// Unanswered probes before the connection is dropped (TCP_KEEPCNT).
    pub count: Option<u32>,
    /// TCP_USER_TIMEOUT; `Some(ZERO)` turns it off explicitly.
    pub user_timeout: Option<Duration>,
}

impl KeepaliveConfig {
    /// Build a config from user values, validating each against the kernel's range.
    /// Flag names in errors are `--idle`, `--interval`, `--count`, `--user-timeout`.
    pub fn validated(
        idle: Option<Duration>,
        interval: Option<Duration>,
        count: Option<u64>,
        user_timeout: Option<Duration>,
    ) -> Result<Self> {
        if let Some(d) = idle {
            check_keepalive_secs("--idle", "TCP_KEEPIDLE", d)?;
        }
        if let Some(d) = interval {
            check_keepalive_secs("--interval", "TCP_KEEPINTVL", d)?;
        }
        let count = count
            .map(|n| check_keepalive_count("--count", n))
            .transpose()?;
        if let Some(d) = user_timeout {
            check_user_timeout("--user-timeout", d)?;
        }
        Ok(Self {
            idle,
            interval,
            count,
            user_timeout,
        })
    }
}

/// Keep-alive settings as the kernel reports them for one socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Effective {
    /// SO_KEEPALIVE is on.
    pub keepalive: bool,
    /// TCP_KEEPIDLE (the system default when not set on the socket).
    #[serde(serialize_with = "crate::ser::secs")]
    pub idle: Duration,
    /// TCP_KEEPINTVL.
    #[serde(serialize_with = "crate::ser::secs")]
    pub interval: Duration,
    /// TCP_KEEPCNT.
    pub count: u32,
    /// TCP_USER_TIMEOUT, `None` when off.
    #[serde(serialize_with = "crate::ser::opt_secs")]
    pub user_timeout: Option<Duration>,
}

impl Effective {
    /// How long after the peer's last sign of life a silently dead peer is noticed, when the
    /// connection is idle (no unacknowledged data) and the last thing heard was not a probe
    /// answer: see [`dead_peer_after_from`](Self::dead_peer_after_from).
    pub fn dead_peer_after(&self) -> Duration {
        self.dead_peer_after_from(false)
    }

    /// How long after the last segment received from the peer the kernel gives up on a
    /// silent peer, following `tcp_keepalive_timer` (net/ipv4/tcp_timer.c):
    ///
    /// - the first probe goes when the connection has been silent for `idle`; when the last
    ///   thing received was itself a probe answer the timer was re-armed for `interval`, so
    ///   the first unanswered probe goes after `max(idle, interval)`;
    /// - then one probe every `interval`;
    /// - without TCP_USER_TIMEOUT the connection is dropped at the timer run that finds
    ///   `count` probes unanswered: first probe + `count` intervals;
    /// - with TCP_USER_TIMEOUT it is dropped at the first timer run after at least one probe
    ///   that finds the silence at least as long as the user timeout; `count` is ignored.
    pub fn dead_peer_after_from(&self, after_probe_answer: bool) -> Duration {
        let first = if after_probe_answer {
            self.idle.max(self.interval)
        } else {
            self.idle
        };
        match self.user_timeout {
            None => first + self.interval * self.count,
            Some(ut) => {
                let mut t = first + self.interval;
                // bounded: interval >= 1s and user timeout < 2^32ms
                while t < ut && !self.interval.is_zero() {
                    t += self.interval;
                }
                t
            }
        }
    }
}

/// Set `cfg` on `sock` (turning SO_KEEPALIVE on), one option at a time. `peer` names the
/// socket in errors (`"set TCP_KEEPINTVL=0 on 127.0.0.1:8080"`).
pub fn apply(sock: &Socket, cfg: &KeepaliveConfig, peer: &str) -> Result<()> {
    sock.set_keepalive(true)
        .map_err(|e| Error::io(format!("set SO_KEEPALIVE=1 on {peer}"), e))?;
    if let Some(d) = cfg.idle {
        sock.set_tcp_keepalive(&TcpKeepalive::new().with_time(d))
            .map_err(|e| Error::io(format!("set TCP_KEEPIDLE={} on {peer}", d.as_secs()), e))?;
    }
    if let Some(d) = cfg.interval {
        sock.set_tcp_keepalive(&TcpKeepalive::new().with_interval(d))
            .map_err(|e| Error::io(format!("set TCP_KEEPINTVL={} on {peer}", d.as_secs()), e))?;
    }
    if let Some(n) = cfg.count {
        sock.set_tcp_keepalive(&TcpKeepalive::new().with_retries(n))
            .map_err(|e| Error::io(format!("set TCP_KEEPCNT={n} on {peer}"), e))?;
    }
    if let Some(d) = cfg.user_timeout {
        let v = (!d.is_zero()).then_some(d);
        sock.set_tcp_user_timeout(v).map_err(|e| {
            Error::io(
                format!("set TCP_USER_TIMEOUT={} on {peer}", d.as_millis()),
                e,
            )
        })?;
    }
    Ok(())
}

/// Read back the keep-alive settings the kernel uses for `sock`.
pub fn read(sock: &Socket, peer: &str) -> Result<Effective> {
    let ctx = |opt: &'static str| move |e| Error::io(format!("read {opt} on {peer}"), e);
    Ok(Effective {
        keepalive: sock.keepalive().map_err(ctx("SO_KEEPALIVE"))?,
        idle: sock.tcp_keepalive_time().map_err(ctx("TCP_KEEPIDLE"))?,
        interval: sock
            .tcp_keepalive_interval()
            .map_err(ctx("TCP_KEEPINTVL"))?,
        count: sock.tcp_keepalive_retries().map_err(ctx("TCP_KEEPCNT"))?,
        user_timeout: sock.tcp_user_timeout().map_err(ctx("TCP_USER_TIMEOUT"))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{SocketAddr, TcpListener};

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn ranges_are_the_kernels() {
        assert!(check_keepalive_secs("--idle", "TCP_KEEPIDLE", s(1)).is_ok());
        assert!(check_keepalive_secs("--idle", "TCP_KEEPIDLE", s(32_767)).is_ok());
        let e = check_keepalive_secs("--idle", "TCP_KEEPIDLE", s(32_768)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--idle 32768s is out of range: TCP_KEEPIDLE takes whole seconds in 1s..=32767s"
        );
        let e = check_keepalive_secs("--interval", "TCP_KEEPINTVL", s(0)).unwrap_err();
        assert!(
            e.to_string().starts_with("--interval 0s is out of range"),
            "{e}"
        );
        assert!(check_keepalive_count("--count", 0).is_err());
        assert!(check_keepalive_count("--count", 127).is_ok());
        let e = check_keepalive_count("--count", 128).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--count 128 is out of range: TCP_KEEPCNT takes 1..=127 probes"
        );
        assert!(check_keepalive_count("--count", u64::MAX).is_err());
    }

    #[test]
    fn sub_second_keepalive_timers_are_rejected_not_rounded() {
        let e = check_keepalive_secs("--idle", "TCP_KEEPIDLE", Duration::from_millis(1500))
            .unwrap_err();
        assert!(e.to_string().contains("sub-second"), "{e}");
        assert!(e.to_string().contains("--idle 1.5s"), "{e}");
    }

    #[test]
    fn user_timeout_must_fit_u32_milliseconds() {
        assert!(check_user_timeout("--user-timeout", Duration::from_millis(2500)).is_ok());
        assert!(check_user_timeout("--user-timeout", Duration::ZERO).is_ok());
        assert!(check_user_timeout("--user-timeout", Duration::from_micros(1500)).is_err());
        let e = check_user_timeout(
            "--user-timeout",
            Duration::from_millis(u64::from(u32::MAX) + 1),
        )
        .unwrap_err();
        assert!(e.to_string().contains("0..=4294967295ms"), "{e}");
    }

    #[test]
    fn dead_peer_time_follows_the_kernel_timer() {
        let e = Effective {
            keepalive: true,
            idle: s(7200),
            interval: s(75),
            count: 9,
            user_timeout: None,
        };
        assert_eq!(e.dead_peer_after(), s(7875));
        let quick = Effective {
            idle: s(1),
            interval: s(1),
            count: 3,
            ..e
        };
        assert_eq!(quick.dead_peer_after(), s(4));
        let with_ut = Effective {
            user_timeout: Some(Duration::from_millis(2500)),
            ..quick
        };
        assert_eq!(with_ut.dead_peer_after(), s(3));
        // the user timeout replaces the count: probes go on past `count`
        let long_ut = Effective {
            user_timeout: Some(s(10)),
            ..quick
        };
        assert_eq!(long_ut.dead_peer_after(), s(10));
        // after an answered probe the first unanswered one waits max(idle, interval)
        let slow_intvl = Effective {
            idle: s(1),
            interval: s(5),
            count: 2,
            user_timeout: None,
            keepalive: true,
        };
        assert_eq!(slow_intvl.dead_peer_after_from(true), s(15));
        assert_eq!(slow_intvl.dead_peer_after_from(false), s(11));
    }

    fn pair(addr: &str) -> (Socket, Socket) {
        let l = TcpListener::bind(addr).unwrap();
        let a: SocketAddr = l.local_addr().unwrap();
        let c = std::net::TcpStream::connect(a).unwrap();
        let (srv, _) = l.accept().unwrap();
        (Socket::from(c), Socket::from(srv))
    }

    fn set_and_read_back(addr: &str) {
        let cfg = KeepaliveConfig::validated(
            Some(s(11)),
            Some(s(3)),
            Some(4),
            Some(Duration::from_millis(2500)),
        )
        .unwrap();
        let (client, accepted) = pair(addr);
        for sock in [&client, &accepted] {
            apply(sock, &cfg, addr).unwrap();
            let eff = read(sock, addr).unwrap();
            assert_eq!(
                eff,
                Effective {
                    keepalive: true,
                    idle: s(11),
                    interval: s(3),
                    count: 4,
                    user_timeout: Some(Duration::from_millis(2500)),
                }
            );
        }
        // explicit 0 turns TCP_USER_TIMEOUT off again
        let off = KeepaliveConfig {
            user_timeout: Some(Duration::ZERO),
            ..KeepaliveConfig::default()
        };
        apply(&client, &off, addr).unwrap();
        assert_eq!(read(&client, addr).unwrap().user_timeout, None);
    }

    #[test]
    fn options_read_back_on_ipv4_client_and_accepted_sockets() {
        set_and_read_back("127.0.0.1:0");
    }

    #[test]
    fn options_read_back_on_ipv6_client_and_accepted_sockets() {
        if TcpListener::bind("[::1]:0").is_err() {
            eprintln!("skipped: no IPv6 loopback");
            return;
        }
        set_and_read_back("[::1]:0");
    }
}
