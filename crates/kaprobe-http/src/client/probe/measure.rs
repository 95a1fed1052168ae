//! The measuring half of the probe: the idle ladder (each rung waits for the server to end
//! it, or reuses it after its idle time), the HTTP/1.0 checks, the request count and the
//! pipelining check. Everything here talks to the server; nothing here judges.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::*;
use crate::client::conn::{Connector, HttpVersion, IdleEnd, ReadFail, Response};

pub(super) fn left(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

pub(super) fn cap(d: Duration, deadline: Instant) -> Instant {
    (Instant::now() + d).min(deadline)
}

pub(super) fn no_keep_alive_idle() -> IdleResult {
    IdleResult {
        close_style: ObservedClose::NoKeepAlive,
        timeout_s: Some(0.0),
        timeout_error_s: None,
        closes_seen: 0,
        close_min_s: None,
        close_max_s: None,
        longest_alive_s: None,
        first_dead_s: None,
        on_reuse: None,
        unasked_bytes: 0,
        still_open_after_s: None,
        connections: 1,
        connections_failed: 0,
    }
}

/// Events from the ladder's connections.
#[derive(Debug)]
enum Event {
    Failed,
    /// The pure watcher (never reuses its connection) is idle from this instant.
    Watching(Instant),
    Closed {
        end: IdleEnd,
        idle: Duration,
    },
    Unasked(usize),
    ReuseOk {
        idle: Duration,
    },
    ReuseFailed {
        idle: Duration,
        kind: &'static str,
    },
}

/// The geometric ladder of idle times: `n` values from LADDER_MIN to `top`.
pub fn ladder(n: usize, top: Duration) -> Vec<Duration> {
    let lo = LADDER_MIN.as_secs_f64();
    let hi = top.as_secs_f64().max(lo * 1.5);
    let steps = n.saturating_sub(1).max(1);
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_wrap,
        clippy::cast_possible_truncation
    )]
    let ratio = (hi / lo).powf(1.0 / steps as f64);
    (0..n)
        .map(|i| {
            #[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
            Duration::from_secs_f64(lo * ratio.powi(i as i32))
        })
        .collect()
}

async fn rung(
    connector: Connector,
    idle_target: Option<Duration>,
    answer_timeout: Duration,
    deadline: Instant,
    tx: mpsc::UnboundedSender<Event>,
    setup_limit: std::sync::Arc<tokio::sync::Semaphore>,
) {
    let setup = async {
        // Limit concurrent setups; each rung's idle clock starts at its own response.
        let _permit = setup_limit.acquire().await.ok()?;
        let (mut c, _) = connector.open(Duration::from_secs(10)).await.ok()?;
        let req = connector.request("GET", None, HttpVersion::Http11);
        let r = c
            .exchange(&req, false, cap(Duration::from_secs(10), deadline))
            .await
            .ok()?;
        (!r.will_close()).then_some(c)
    };
    let Some(mut conn) = setup.await else {
        let _ = tx.send(Event::Failed);
        return;
    };
    let req = connector.request("GET", None, HttpVersion::Http11);
    let mut probe_at = idle_target.map(|x| conn.idle_since + x);
    if probe_at.is_none() {
        let _ = tx.send(Event::Watching(conn.idle_since));
    }
    enum Step {
        Watched(Result<(IdleEnd, Instant), usize>),
        Probe,
        Stop,
    }
    loop {
        let step = tokio::select! {
            r = conn.watch() => Step::Watched(r),
            () = sleep_opt(probe_at) => Step::Probe,
            () = tokio::time::sleep_until(deadline) => Step::Stop,
        };
        match step {
            Step::Stop => return,
            Step::Watched(Ok((end, at))) => {
                let idle = at.saturating_duration_since(conn.idle_since);
                let _ = tx.send(Event::Closed { end, idle });
                return;
            }
            Step::Watched(Err(n)) => {
                // Unasked bytes (e.g. a 408): never reuse this connection, keep watching.
                probe_at = None;
                let _ = tx.send(Event::Unasked(n));
            }
            Step::Probe => {
                probe_at = None;
                let sent = Instant::now();
                let idle = sent.saturating_duration_since(conn.idle_since);
                match conn.exchange(&req, false, sent + answer_timeout).await {
                    Ok(r) => {
                        let _ = tx.send(Event::ReuseOk { idle });
                        if r.will_close() {
                            return;
                        }
                    }
                    Err(f) => {
                        let kind = match f {
                            ReadFail::Timeout { .. } => "no_answer",
                            ReadFail::Eof => "empty_reply",
                            ref other => other.kind(),
                        };
                        let _ = tx.send(Event::ReuseFailed { idle, kind });
                        return;
                    }
                }
            }
        }
    }
}

async fn sleep_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The middle value (the upper one of an even count), sorting `v`.
pub(crate) fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

pub(super) async fn measure_idle(
    connector: &Connector,
    opts: &ProbeOptions,
    answer_timeout: Duration,
    deadline: Instant,
) -> IdleResult {
    let top = left(deadline).saturating_sub(answer_timeout + Duration::from_millis(200));
    let rungs = ladder(opts.connections, top);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut tasks = tokio::task::JoinSet::new();
    let setup_limit = std::sync::Arc::new(tokio::sync::Semaphore::new(16));
    // Rung 0 only watches (its idle time is the whole run); the others reuse their
    // connection once, after their idle time on the ladder.
    let plan = std::iter::once(None).chain(rungs.iter().copied().map(Some));
    for x in plan {
        let (c, tx, lim) = (connector.clone(), tx.clone(), setup_limit.clone());
        tasks.spawn(rung(c, x, answer_timeout, deadline, tx, lim));
    }
    drop(tx);

    let mut closes: Vec<(IdleEnd, f64)> = Vec::new();
    let mut oks: Vec<f64> = Vec::new();
    let mut fails: Vec<(f64, &'static str)> = Vec::new();
    let mut failed = 0usize;
    let mut unasked = 0u64;
    let mut first_close_at: Option<Instant> = None;
    let mut watcher_since: Option<Instant> = None;
    let grace = Duration::from_millis(300);
    loop {
        let stop_at = match first_close_at {
            Some(t) => (t + grace).min(deadline),
            None => deadline,
        };
        let ev = tokio::select! {
            ev = rx.recv() => ev,
            () = tokio::time::sleep_until(stop_at) => None,
        };
        let Some(ev) = ev else { break };
        match ev {
            Event::Failed => failed += 1,
            Event::Watching(at) => watcher_since = Some(at),
            Event::Unasked(n) => unasked += n as u64,
            Event::Closed { end, idle } => {
                closes.push((end, idle.as_secs_f64()));
                first_close_at.get_or_insert_with(Instant::now);
            }
            Event::ReuseOk { idle } => oks.push(idle.as_secs_f64()),
            Event::ReuseFailed { idle, kind } => fails.push((idle.as_secs_f64(), kind)),
        }
        if closes.is_empty() && silent_bounds(&oks, &fails).is_some() {
            break;
        }
    }
    tasks.abort_all();
    let watcher_open = watcher_since
        .filter(|_| closes.is_empty())
        .map(|at| Instant::now().saturating_duration_since(at).as_secs_f64());

    let longest_alive = oks
        .iter()
        .copied()
        .fold(None, |a: Option<f64>, x| Some(a.map_or(x, |a| a.max(x))));
    let mut result = IdleResult {
        close_style: ObservedClose::OpenAtMaxWait,
        timeout_s: None,
        timeout_error_s: None,
        closes_seen: closes.len(),
        close_min_s: closes.iter().map(|c| c.1).reduce(f64::min),
        close_max_s: closes.iter().map(|c| c.1).reduce(f64::max),
        longest_alive_s: longest_alive,
        first_dead_s: fails.iter().map(|f| f.0).reduce(f64::min),
        on_reuse: None,
        unasked_bytes: unasked,
        still_open_after_s: watcher_open,
        connections: rungs.len() + 1,
        connections_failed: failed,
    };
    if !closes.is_empty() {
        let rst = closes.iter().filter(|c| c.0 == IdleEnd::Rst).count();
        result.close_style = if rst * 2 > closes.len() {
            ObservedClose::Rst
        } else {
            ObservedClose::Fin
        };
        let mut idles: Vec<f64> = closes.iter().map(|c| c.1).collect();
        result.timeout_s = median(&mut idles);
        if let (Some(lo), Some(hi)) = (result.close_min_s, result.close_max_s) {
            result.timeout_error_s = Some((hi - lo) / 2.0);
        }
    } else if let Some((alive, dead, kind)) = silent_bounds(&oks, &fails) {
        result.close_style = ObservedClose::Silent;
        result.timeout_s = Some((alive + dead) / 2.0);
        result.timeout_error_s = Some((dead - alive) / 2.0);
        result.longest_alive_s = Some(alive);
        result.first_dead_s = Some(dead);
        result.on_reuse = Some(kind.to_string());
    } else if let Some(a) = longest_alive {
        // Open at max-wait: the timeout is at least the longest idle that still worked.
        result.timeout_s = None;
        result.longest_alive_s = Some(a);
    }
    result
}

pub(super) async fn http10_checks(
    connector: &Connector,
    answer: Duration,
    deadline: Instant,
) -> Http10 {
    let mut out = Http10::default();
    // HTTP/1.0 with Connection: keep-alive.
    if let Ok((mut c, _)) = connector.open(left(deadline)).await {
        let req = connector.request("GET", None, HttpVersion::Http10KeepAlive);
        if let Ok(r) = c.exchange(&req, false, cap(answer * 2, deadline)).await {
            if r.will_close() {
                out.keep_alive_honored = Some(false);
            } else {
                let again = c.exchange(&req, false, cap(answer * 2, deadline)).await;
                out.keep_alive_honored = Some(again.is_ok());
            }
        }
    }
    // Plain HTTP/1.0: answered, then closed.
    if let Ok((mut c, _)) = connector.open(left(deadline)).await {
        let req = connector.request("GET", None, HttpVersion::Http10);
        if let Ok(r) = c.exchange(&req, false, cap(answer * 2, deadline)).await {
            if r.body_until_close {
                out.plain_closes = Some(true);
            } else {
                let closed =
                    tokio::time::timeout_at(cap(Duration::from_secs(1), deadline), c.watch()).await;
                out.plain_closes = Some(matches!(closed, Ok(Ok(_))));
            }
        }
    }
    out
}

pub(super) async fn count_requests(
    connector: &Connector,
    cap_n: u64,
    deadline: Instant,
) -> MaxRequests {
    let mut out = MaxRequests {
        cap: cap_n,
        ended_by: EndedBy::Error,
        ..MaxRequests::default()
    };
    let Ok((mut c, _)) = connector
        .open(left(deadline).min(Duration::from_secs(10)))
        .await
    else {
        return out;
    };
    let req = connector.request("GET", None, HttpVersion::Http11);
    let mut maxes: Vec<u64> = Vec::new();
    let mut answered = 0u64;
    loop {
        if Instant::now() >= deadline {
            out.ended_by = EndedBy::MaxWait;
            break;
        }
        match c
            .exchange(&req, false, cap(Duration::from_secs(10), deadline))
            .await
        {
            Ok(r) => {
                answered += 1;
                if let Some(m) = r.keep_alive.and_then(|k| k.max) {
                    maxes.push(m);
                }
                if r.will_close() {
                    out.ended_by = EndedBy::ConnectionCloseHeader;
                    break;
                }
                if answered >= cap_n {
                    out.ended_by = EndedBy::Cap;
                    break;
                }
            }
            Err(ReadFail::Eof | ReadFail::Reset) => {
                out.ended_by = EndedBy::Closed;
                break;
            }
            Err(ReadFail::Write(_)) => {
                out.ended_by = EndedBy::Closed;
                break;
            }
            Err(_) => break,
        }
    }
    out.observed = (answered > 0).then_some(answered);
    if maxes.len() >= 2 {
        out.countdown_ok = Some(maxes.windows(2).all(|w| w[0] == w[1] + 1));
    }
    out
}

pub(super) async fn pipelining_check(
    connector: &Connector,
    answer: Duration,
    deadline: Instant,
) -> Pipelining {
    let mut out = Pipelining {
        result: PipelineResult::Error,
        sent: 4,
        ..Pipelining::default()
    };
    let missing = connector.target.missing_path();
    let a = connector.request("GET", None, HttpVersion::Http11);
    let b = connector.request("GET", Some(&missing), HttpVersion::Http11);
    // Learn each path's status on its own first, then pipeline on a fresh connection, so
    // that requests already spent do not count against the server's `max`.
    let Some((mut c, sa, sb)) = async {
        let (mut c, _) = connector.open(left(deadline)).await.ok()?;
        let ra = c
            .exchange(&a, false, cap(answer * 2, deadline))
            .await
            .ok()?;
        if ra.will_close() {
            return None;
        }
        let rb = c
            .exchange(&b, false, cap(answer * 2, deadline))
            .await
            .ok()?;
        drop(c);
        let (fresh, _) = connector.open(left(deadline)).await.ok()?;
        Some((fresh, ra.status, rb.status))
    }
    .await
    else {
        out.detail = Some("could not set up a connection for the check".into());
        return out;
    };
    let mut batch = Vec::new();
    for r in [&a, &b, &a, &b] {
        batch.extend_from_slice(r);
    }
    if c.send(&batch).await.is_err() {
        out.detail = Some("sending the pipelined requests failed".into());
        return out;
    }
    let expected = [sa, sb, sa, sb];
    let mut got: Vec<Response> = Vec::new();
    while got.len() < 4 {
        match c.read_response(false, cap(answer * 2, deadline)).await {
            Ok(r) => {
                let close = r.will_close();
                got.push(r);
                if close {
                    break;
                }
            }
            Err(e) => {
                out.detail = Some(format!("after {} answers: {}", got.len(), e.kind()));
                break;
            }
        }
    }
    out.answered = got.len();
    let statuses: Vec<u16> = got.iter().map(|r| r.status).collect();
    // A short answer the server announced: its last response said it would close, because
    // its `max` ran out (the first response's `Keep-Alive: max` counts what was left) or
    // for its own reasons (`Connection: close`).
    let announced = got.last().filter(|r| r.will_close()).map(|last| {
        let max = got
            .first()
            .and_then(|r| r.keep_alive)
            .and_then(|k| k.max)
            .filter(|m| usize::try_from(*m).is_ok_and(|m| m + 1 == got.len()));
        match max {
            Some(m) => format!(
                "the server allows {} requests per connection (Keep-Alive: max={m} after the first), and its last answer said Connection: close",
                got.len()
            ),
            None => format!(
                "response {} said Connection: close{}",
                got.len(),
                last.header("connection")
                    .map_or(String::new(), |v| format!(" ({v})"))
            ),
        }
    });
    out.result = if got.len() < 4 && statuses[..] == expected[..got.len()] && announced.is_some() {
        out.detail = announced;
        PipelineResult::Limited
    } else if got.len() < 4 {
        PipelineResult::Partial
    } else if statuses != expected {
        out.detail = Some(format!("expected statuses {expected:?}, got {statuses:?}"));
        PipelineResult::OutOfOrder
    } else if sa == sb {
        out.detail = Some(format!(
            "both paths answer {sa}, so the order could not be told apart"
        ));
        PipelineResult::InOrderUnverified
    } else {
        PipelineResult::InOrder
    };
    out
}
