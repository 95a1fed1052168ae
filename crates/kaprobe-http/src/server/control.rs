//! `serve --control ADDR`: change keep-alive settings while the server runs, on a listener of
//! its own (so a test can flip behaviour mid-run without its requests counting as traffic).
//!
//! - `GET /config`: the changeable settings as JSON;
//! - `PUT /config` (or `POST`, `PATCH`) with a JSON object of some of them: checked as the
//!   flags are, then in force for every request answered and every idle period begun after
//!   the answer; each changed setting is reported to the caller's `on_change`.
//!
//! Settings: `keepalive_timeout` and `advertise_timeout` (a duration string such as `"2s"`,
//! or seconds as a number; `advertise_timeout` may be `null`), `max_requests` (0: unlimited),
//! `close_style` (`"fin"`, `"rst"`), `advertise` (`"always"`, `"when-asked"`, `"never"`).

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::config::{Advertise, CloseStyle, Config};
use super::shared::Shared;

/// One setting changed through the control listener.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigChange {
    pub setting: &'static str,
    pub from: String,
    pub to: String,
    /// Who asked.
    pub peer: SocketAddr,
}

/// A changed setting: its name, the old value and the new one, as `GET /config` writes them.
pub type Changed = (&'static str, String, String);

/// The settings `--control` can change.
pub const SETTINGS: [&str; 5] = [
    "keepalive_timeout",
    "max_requests",
    "close_style",
    "advertise",
    "advertise_timeout",
];

/// Largest request body accepted.
const MAX_BODY: usize = 64 * 1024;

fn advertise_name(a: Advertise) -> &'static str {
    match a {
        Advertise::Always => "always",
        Advertise::WhenAsked => "when-asked",
        Advertise::Never => "never",
    }
}

fn duration_text(d: Duration) -> String {
    kaprobe_sock::fmt::duration(d)
}

/// The changeable settings of `cfg`, as `GET /config` shows them (and `PUT` takes them).
pub fn settings_json(cfg: &Config) -> Value {
    json!({
        "keepalive_timeout": duration_text(cfg.keepalive_timeout),
        "max_requests": cfg.max_requests,
        "close_style": cfg.close_style.as_str(),
        "advertise": advertise_name(cfg.advertise),
        "advertise_timeout": cfg.advertise_timeout.map(duration_text),
    })
}

fn duration_value(name: &str, v: &Value) -> Result<Duration, String> {
    match v {
        Value::String(s) => kaprobe_sock::fmt::parse_duration(s)
            .map_err(|e| format!("{name} {s:?} is not a duration: {e}")),
        Value::Number(n) => n
            .as_f64()
            .filter(|s| s.is_finite() && *s >= 0.0 && *s <= 86_400.0)
            .map(Duration::from_secs_f64)
            .ok_or_else(|| format!("{name} {n} is out of range: use 0s..=1d")),
        other => Err(format!(
            "{name} must be a duration such as \"2s\" or a number of seconds, not {other}"
        )),
    }
}

/// `cur` with the changes in `body` (a JSON object) applied and checked, and the list of what
/// changed. Nothing is applied when any part is wrong.
///
/// # Errors
/// One sentence naming the setting, the value and what is allowed.
pub fn apply(cur: &Config, body: &[u8]) -> Result<(Config, Vec<Changed>), String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        format!("the body is not JSON ({e}): send e.g. {{\"keepalive_timeout\":\"2s\"}}")
    })?;
    let Value::Object(map) = v else {
        return Err("the body must be a JSON object, e.g. {\"keepalive_timeout\":\"2s\"}".into());
    };
    let mut next = cur.clone();
    set_all(&mut next, &map)?;
    next.validate().map_err(|e| e.to_string())?;
    let before = settings_json(cur);
    let after = settings_json(&next);
    let changed = SETTINGS
        .iter()
        .filter(|s| before[**s] != after[**s])
        .map(|s| (*s, plain(&before[*s]), plain(&after[*s])))
        .collect();
    Ok((next, changed))
}

fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "none".into(),
        other => other.to_string(),
    }
}

fn set_all(cfg: &mut Config, map: &Map<String, Value>) -> Result<(), String> {
    for (name, v) in map {
        match name.as_str() {
            "keepalive_timeout" => cfg.keepalive_timeout = duration_value(name, v)?,
            "advertise_timeout" => {
                cfg.advertise_timeout = match v {
                    Value::Null => None,
                    v => Some(duration_value(name, v)?),
                }
            }
            "max_requests" => {
                cfg.max_requests = v.as_u64().ok_or_else(|| {
                    format!("max_requests {v} is not a whole number: use 0 (unlimited) or more")
                })?;
            }
            "close_style" => {
                cfg.close_style = match v.as_str() {
                    Some("fin") => CloseStyle::Fin,
                    Some("rst") => CloseStyle::Rst,
                    _ => return Err(format!("close_style {v} is not one of \"fin\", \"rst\"")),
                }
            }
            "advertise" => {
                cfg.advertise = match v.as_str() {
                    Some("always") => Advertise::Always,
                    Some("when-asked") => Advertise::WhenAsked,
                    Some("never") => Advertise::Never,
                    _ => {
                        return Err(format!(
                            "advertise {v} is not one of \"always\", \"when-asked\", \"never\""
                        ))
                    }
                }
            }
            other => {
                return Err(format!(
                    "{other:?} is not a setting that can change: use {}",
                    SETTINGS.join(", ")
                ))
            }
        }
    }
    Ok(())
}

/// What is told of each change.
pub type OnChange = Box<dyn Fn(&ConfigChange)>;

/// Accept control requests on `listener` for the server's life.
pub(crate) async fn serve(
    listener: std::net::TcpListener,
    sh: Rc<Shared>,
    on_change: Rc<dyn Fn(&ConfigChange)>,
) {
    if listener.set_nonblocking(true).is_err() {
        return;
    }
    let Ok(l) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    loop {
        let Ok((sock, peer)) = l.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let sh = sh.clone();
        let on_change = on_change.clone();
        tokio::task::spawn_local(async move {
            let _ = tokio::time::timeout(
                Duration::from_secs(10),
                answer(sock, peer, &sh, &*on_change),
            )
            .await;
        });
    }
}

async fn answer(
    mut sock: tokio::net::TcpStream,
    peer: SocketAddr,
    sh: &Shared,
    on_change: &dyn Fn(&ConfigChange),
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    // the head, then Content-Length bytes of body
    let (head_len, body_len) = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let len = head
                .lines()
                .skip(1)
                .find_map(|l| {
                    let (n, v) = l.split_once(':')?;
                    n.trim()
                        .eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            break (end + 4, len);
        }
        if buf.len() > 16 * 1024 {
            return reply(
                &mut sock,
                "431 Request Header Fields Too Large",
                &error("request head too large"),
            )
            .await;
        }
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    if body_len > MAX_BODY {
        return reply(
            &mut sock,
            "413 Content Too Large",
            &error("body larger than 64 KiB"),
        )
        .await;
    }
    while buf.len() < head_len + body_len {
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf[..head_len]).to_string();
    let body = buf.get(head_len..head_len + body_len).unwrap_or_default();
    let mut line = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (line.next().unwrap_or(""), line.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, out) = match (method, path) {
        ("GET" | "HEAD", "/config") => ("200 OK", settings_json(&sh.cfg())),
        ("PUT" | "POST" | "PATCH", "/config") => match apply(&sh.cfg(), body) {
            Ok((next, changed)) => {
                sh.set_cfg(next);
                for (setting, from, to) in changed {
                    on_change(&ConfigChange {
                        setting,
                        from,
                        to,
                        peer,
                    });
                }
                ("200 OK", settings_json(&sh.cfg()))
            }
            Err(e) => ("400 Bad Request", error(&e)),
        },
        (_, "/config") => ("405 Method Not Allowed", error("use GET or PUT /config")),
        _ => ("404 Not Found", error("not found: use GET or PUT /config")),
    };
    reply(&mut sock, status, &out).await
}

fn error(msg: &str) -> Value {
    json!({ "error": msg })
}

async fn reply(sock: &mut tokio::net::TcpStream, status: &str, v: &Value) -> std::io::Result<()> {
    let body = format!("{v}\n");
    let out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    sock.write_all(out.as_bytes()).await?;
    sock.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_checked_and_listed() {
        let cur = Config::default();
        let (next, changed) = apply(
            &cur,
            br#"{"keepalive_timeout":"2s","close_style":"rst","max_requests":100}"#,
        )
        .expect("valid");
        assert_eq!(next.keepalive_timeout, Duration::from_secs(2));
        assert_eq!(next.close_style, CloseStyle::Rst);
        assert_eq!(
            changed,
            vec![
                ("keepalive_timeout", "5s".to_string(), "2s".to_string()),
                ("close_style", "fin".to_string(), "rst".to_string()),
            ]
        );
        let (next, _) =
            apply(&next, br#"{"advertise_timeout":1.5,"advertise":"never"}"#).expect("valid");
        assert_eq!(next.advertise_timeout, Some(Duration::from_millis(1500)));
        let (next, changed) = apply(&next, br#"{"advertise_timeout":null}"#).expect("valid");
        assert_eq!(next.advertise_timeout, None);
        assert_eq!(
            changed,
            vec![("advertise_timeout", "1.5s".into(), "none".into())]
        );
        // what GET shows, PUT takes back unchanged
        let round = serde_json::to_vec(&settings_json(&next)).expect("json");
        assert!(apply(&next, &round).expect("round trip").1.is_empty());
    }

    #[test]
    fn bad_changes_name_the_setting_and_change_nothing() {
        let cur = Config::default();
        for (body, says) in [
            (
                &br#"{"keepalive_timeout":"2d"}"#[..],
                "--keepalive-timeout 2d is out of range",
            ),
            (
                br#"{"keepalive_timeout":"soon"}"#,
                "keepalive_timeout \"soon\"",
            ),
            (br#"{"keepalive_timeout":-1}"#, "out of range"),
            (br#"{"keepalive_timeout":true}"#, "must be a duration"),
            (br#"{"max_requests":-3}"#, "max_requests -3"),
            (br#"{"close_style":"slam"}"#, "close_style \"slam\""),
            (br#"{"advertise":1}"#, "advertise 1"),
            (br#"{"linger":"1s"}"#, "\"linger\" is not a setting"),
            (br#"[1]"#, "JSON object"),
            (b"keepalive_timeout=2s", "not JSON"),
            (b"", "not JSON"),
        ] {
            let e = apply(&cur, body).expect_err(&String::from_utf8_lossy(body));
            assert!(e.contains(says), "{}: {e}", String::from_utf8_lossy(body));
        }
    }
}
