//! Push-channel requests, checked from the request head alone: the endpoint, its query
//! parameters and (for `/ws`) the RFC 6455 opening handshake. Pure functions, no I/O.

use std::time::Duration;

use crate::server::query::parse_delay;

/// The room used when a request names none.
pub const DEFAULT_ROOM: &str = "default";
/// Longest `wait=` a long poll may ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(300);
/// Longest `ping=` / `heartbeat=` interval accepted.
pub const MAX_INTERVAL: Duration = Duration::from_secs(3600);
/// Shortest non-zero `ping=` / `heartbeat=` interval accepted.
pub const MIN_INTERVAL: Duration = Duration::from_millis(10);

/// A checked push request, or why it is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushReq {
    /// `GET /ws`: `key` is the client's Sec-WebSocket-Key; no room means echo.
    Ws {
        key: String,
        room: Option<String>,
        /// Per-connection ping interval (`Some(ZERO)`: off; `None`: the server's default).
        ping: Option<Duration>,
    },
    /// `GET /sse`.
    Sse {
        room: String,
        /// Replay messages after this id first (`Last-Event-ID` or `last_event_id=`).
        last_id: Option<u64>,
        heartbeat: Option<Duration>,
    },
    /// `GET /poll`.
    Poll {
        room: String,
        since: u64,
        wait: Option<Duration>,
    },
    /// `POST /publish`.
    Publish { room: String },
    /// Refused: answer `status` with `detail`; `426` also names the supported version.
    Reject { status: u16, detail: &'static str },
}

fn reject(status: u16, detail: &'static str) -> PushReq {
    PushReq::Reject { status, detail }
}

/// True for a valid room name: 1..=64 characters of `[A-Za-z0-9_.-]`.
pub fn valid_room(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// The `name=value` pairs of a request target's query (no percent-decoding: every value
/// this module accepts is plain ASCII).
fn query(target: &str) -> impl Iterator<Item = (&str, &str)> {
    target
        .split_once('?')
        .map_or("", |(_, q)| q)
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
}

fn param<'a>(target: &'a str, name: &str) -> Option<&'a str> {
    query(target).find(|(k, _)| *k == name).map(|(_, v)| v)
}

fn header<'a>(headers: &'a [httparse::Header<'_>], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

fn has_token(headers: &[httparse::Header<'_>], name: &str, token: &[u8]) -> bool {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(name))
        .flat_map(|h| h.value.split(|&b| b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

fn room_param(target: &str) -> Result<String, PushReq> {
    match param(target, "room") {
        None => Ok(DEFAULT_ROOM.to_owned()),
        Some(r) if valid_room(r) => Ok(r.to_owned()),
        Some(_) => Err(reject(
            400,
            "room must be 1..=64 characters of [A-Za-z0-9_.-]",
        )),
    }
}

/// An interval parameter: absent, `0` (off) or 10ms..=1h.
fn interval(target: &str, name: &str, detail: &'static str) -> Result<Option<Duration>, PushReq> {
    match param(target, name) {
        None => Ok(None),
        Some(v) => match parse_delay(v) {
            Some(d) if d.is_zero() || (MIN_INTERVAL..=MAX_INTERVAL).contains(&d) => Ok(Some(d)),
            _ => Err(reject(400, detail)),
        },
    }
}

fn number(v: Option<&str>, detail: &'static str) -> Result<Option<u64>, PushReq> {
    match v {
        None => Ok(None),
        Some(v) => v
            .trim()
            .parse::<u64>()
            .map(Some)
            .map_err(|_| reject(400, detail)),
    }
}

/// A Sec-WebSocket-Key is the base64 form of 16 bytes: 22 characters, the last of which
/// carries only 2 bits, then `==`.
pub fn valid_key(k: &[u8]) -> bool {
    let b64 = |b: &u8| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/';
    k.len() == 24
        && k[..21].iter().all(b64)
        && matches!(k[21], b'A' | b'Q' | b'g' | b'w')
        && &k[22..] == b"=="
}

/// Check a request for a push endpoint; `None` when the path is not one.
pub fn parse(
    method: &str,
    minor: u8,
    target: &str,
    headers: &[httparse::Header<'_>],
) -> Option<PushReq> {
    let path = target.split('?').next().unwrap_or(target);
    let r = match path {
        "/ws" => ws(method, minor, target, headers),
        "/sse" => sse(method, target, headers),
        "/poll" => poll(method, target),
        "/publish" => publish(method, target),
        _ => return None,
    };
    Some(r.unwrap_or_else(|e| e))
}

fn ws(
    method: &str,
    minor: u8,
    target: &str,
    headers: &[httparse::Header<'_>],
) -> Result<PushReq, PushReq> {
    if method != "GET" {
        return Err(reject(400, "a WebSocket handshake must be a GET"));
    }
    if minor != 1 {
        return Err(reject(400, "a WebSocket handshake needs HTTP/1.1"));
    }
    if !has_token(headers, "upgrade", b"websocket") {
        return Err(reject(
            400,
            "a WebSocket handshake needs Upgrade: websocket",
        ));
    }
    if !has_token(headers, "connection", b"upgrade") {
        return Err(reject(
            400,
            "a WebSocket handshake needs Connection: Upgrade",
        ));
    }
    let key = match header(headers, "sec-websocket-key") {
        None => return Err(reject(400, "missing Sec-WebSocket-Key")),
        Some(k) if valid_key(k.trim_ascii()) => k.trim_ascii(),
        Some(_) => {
            return Err(reject(
                400,
                "Sec-WebSocket-Key is not the base64 form of 16 bytes",
            ))
        }
    };
    if header(headers, "sec-websocket-version").map(<[u8]>::trim_ascii) != Some(b"13") {
        return Err(reject(426, "only WebSocket version 13 is supported"));
    }
    let room = match param(target, "room") {
        None => None,
        Some(_) => Some(room_param(target)?),
    };
    let ping = interval(target, "ping", "ping must be 0 (off) or 10ms..=1h")?;
    Ok(PushReq::Ws {
        key: String::from_utf8_lossy(key).into_owned(),
        room,
        ping,
    })
}

fn sse(method: &str, target: &str, headers: &[httparse::Header<'_>]) -> Result<PushReq, PushReq> {
    if method != "GET" {
        return Err(reject(405, "use GET for /sse"));
    }
    let room = room_param(target)?;
    let heartbeat = interval(
        target,
        "heartbeat",
        "heartbeat must be 0 (off) or 10ms..=1h",
    )?;
    let from_header = header(headers, "last-event-id").map(|v| String::from_utf8_lossy(v));
    let last_id = match number(from_header.as_deref(), "Last-Event-ID must be a number")? {
        Some(n) => Some(n),
        None => number(
            param(target, "last_event_id"),
            "last_event_id must be a number",
        )?,
    };
    Ok(PushReq::Sse {
        room,
        last_id,
        heartbeat,
    })
}

fn poll(method: &str, target: &str) -> Result<PushReq, PushReq> {
    if method != "GET" {
        return Err(reject(405, "use GET for /poll"));
    }
    let room = room_param(target)?;
    let since = number(param(target, "since"), "since must be a number")?.unwrap_or(0);
    let wait = match param(target, "wait") {
        None => None,
        Some(v) => match parse_delay(v) {
            Some(d) if d <= MAX_WAIT => Some(d),
            _ => return Err(reject(400, "wait must be a duration of 0..=5m")),
        },
    };
    Ok(PushReq::Poll { room, since, wait })
}

fn publish(method: &str, target: &str) -> Result<PushReq, PushReq> {
    if method != "POST" {
        return Err(reject(405, "use POST for /publish"));
    }
    Ok(PushReq::Publish {
        room: room_param(target)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h<'a>(pairs: &'a [(&'a str, &'a str)]) -> Vec<httparse::Header<'a>> {
        pairs
            .iter()
            .map(|(n, v)| httparse::Header {
                name: n,
                value: v.as_bytes(),
            })
            .collect()
    }

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn good() -> Vec<(&'static str, &'static str)> {
        vec![
            ("Host", "a"),
            ("Upgrade", "websocket"),
            ("Connection", "keep-alive, Upgrade"),
            ("Sec-WebSocket-Key", KEY),
            ("Sec-WebSocket-Version", "13"),
        ]
    }

    #[test]
    fn a_valid_handshake_is_accepted_with_room_and_ping() {
        let g = good();
        let r = parse("GET", 1, "/ws?room=chat.1&ping=1s", &h(&g)).unwrap();
        assert_eq!(
            r,
            PushReq::Ws {
                key: KEY.into(),
                room: Some("chat.1".into()),
                ping: Some(Duration::from_secs(1))
            }
        );
    }

    #[test]
    fn bad_handshakes_get_400_and_a_wrong_version_426() {
        let status = |m: &str, minor: u8, hs: &[(&str, &str)]| match parse(m, minor, "/ws", &h(hs))
        {
            Some(PushReq::Reject { status, .. }) => status,
            other => panic!("{other:?}"),
        };
        assert_eq!(status("POST", 1, &good()), 400);
        assert_eq!(status("GET", 0, &good()), 400);
        for drop in ["Upgrade", "Connection", "Sec-WebSocket-Key"] {
            let hs: Vec<_> = good().into_iter().filter(|(n, _)| *n != drop).collect();
            assert_eq!(status("GET", 1, &hs), 400, "without {drop}");
        }
        let mut hs = good();
        hs[3].1 = "short==";
        assert_eq!(status("GET", 1, &hs), 400);
        let mut hs = good();
        hs[4].1 = "8";
        assert_eq!(status("GET", 1, &hs), 426);
    }

    #[test]
    fn rooms_and_parameters_are_checked() {
        assert!(valid_room("a") && valid_room(&"x".repeat(64)) && valid_room("A-z_0.9"));
        assert!(!valid_room("") && !valid_room(&"x".repeat(65)) && !valid_room("a b"));
        let p = |t: &str| parse("GET", 1, t, &[]).unwrap();
        assert_eq!(
            p("/poll?since=3&wait=500ms"),
            PushReq::Poll {
                room: "default".into(),
                since: 3,
                wait: Some(Duration::from_millis(500))
            }
        );
        assert!(matches!(
            p("/poll?wait=6m"),
            PushReq::Reject { status: 400, .. }
        ));
        assert!(matches!(
            p("/sse?room=%20"),
            PushReq::Reject { status: 400, .. }
        ));
        assert!(matches!(
            p("/sse?heartbeat=1ms"),
            PushReq::Reject { status: 400, .. }
        ));
        assert!(matches!(p("/publish"), PushReq::Reject { status: 405, .. }));
        let hs = [("Last-Event-ID", " 7")];
        assert_eq!(
            parse("GET", 1, "/sse?room=r&heartbeat=0&last_event_id=2", &h(&hs)).unwrap(),
            PushReq::Sse {
                room: "r".into(),
                last_id: Some(7),
                heartbeat: Some(Duration::ZERO)
            }
        );
        assert_eq!(parse("GET", 1, "/wsx", &[]), None);
    }

    #[test]
    fn arbitrary_targets_and_headers_never_panic() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let bits = [
            "/ws",
            "/sse",
            "/poll",
            "/publish",
            "?",
            "&",
            "=",
            "room",
            "ping",
            "since",
            "wait",
            "heartbeat",
            "last_event_id",
            "1s",
            "0",
            "-1",
            "99999999999999999999",
            "%",
            "\u{e9}",
            "ms",
            "x",
        ];
        for _ in 0..20_000 {
            let mut t = String::new();
            for _ in 0..8 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                t.push_str(bits[(x % bits.len() as u64) as usize]);
            }
            let id: String = t.chars().take(5).collect();
            let hs = [
                ("Upgrade", "websocket"),
                ("Connection", "upgrade"),
                ("Last-Event-ID", id.as_str()),
            ];
            for m in ["GET", "POST"] {
                let _ = parse(m, 1, &t, &h(&hs));
            }
        }
    }
}
