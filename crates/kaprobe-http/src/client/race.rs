//! `race`: reproduce the keep-alive reuse race.
//!
//! Each attempt opens a connection, makes one request, leaves the connection idle for a
//! chosen time, then sends a second request on it without checking first whether the server
//! closed it, exactly like a connection pool that trusts its own idle timer. Idle times are
//! spread evenly over `idle - spread ..= idle + spread`; failures are counted per idle time.
//!
//! Attempts run one after another by default: behind a proxy with its own upstream pool, only
//! then does the proxy's pooled upstream connection idle as long as the client's.

use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use super::conn::{Connector, HttpVersion, ReadFail};
use super::target::Target;
use super::tls::TlsOptions;
use crate::Error;

/// What to send and when.
#[derive(Debug, Clone)]
pub struct RaceOptions {
    /// Centre of the idle times.
    pub idle: Duration,
    /// Idle times go from `idle - spread` to `idle + spread`.
    pub spread: Duration,
    /// Number of attempts.
    pub requests: usize,
    /// Attempts in flight at once.
    pub parallel: usize,
    /// `GET` or `POST` (proxies retry failed idempotent requests on a fresh connection; a
    /// POST shows the failure instead).
    pub method: String,
    /// Bound on the whole run.
    pub max_wait: Duration,
    pub tls: TlsOptions,
    /// `-H`, `-X`, `--data`, `--resolve`, `--connect-to` (`-X` or `--data` override `method`).
    pub request: super::request::RequestOptions,
}

/// How one reuse went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A response that is not a gateway error.
    Ok,
    /// 502, 503 or 504: a proxy could not use its upstream connection.
    BadGateway,
    /// The connection was reset (ECONNRESET / EPIPE).
    Reset,
    /// The connection ended (FIN) with no response byte.
    EmptyReply,
    /// Nothing came back in time.
    NoAnswer,
    /// Part of a response, or bytes that are not HTTP.
    Broken,
    /// The first request failed or said Connection: close, so there was nothing to reuse.
    SetupFailed,
    /// `--max-wait` ran out before the attempt.
    Skipped,
}

impl Outcome {
    /// True for outcomes that count as a reuse failure.
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            Outcome::BadGateway
                | Outcome::Reset
                | Outcome::EmptyReply
                | Outcome::NoAnswer
                | Outcome::Broken
        )
    }
}

/// One attempt.
#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    /// Planned idle time, seconds.
    pub idle_s: f64,
    /// Idle time actually waited (end of the first response to sending the second), seconds.
    pub actual_idle_s: f64,
    pub outcome: Outcome,
    pub status: Option<u16>,
}

/// Attempts grouped by idle time.
#[derive(Debug, Clone, Serialize)]
pub struct Bin {
    pub idle_from_s: f64,
    pub idle_to_s: f64,
    pub attempts: usize,
    pub ok: usize,
    pub bad_gateway: usize,
    pub reset: usize,
    pub empty_reply: usize,
    pub no_answer: usize,
    pub broken: usize,
    pub setup_failed: usize,
}

impl Bin {
    /// Reuse failures in this bin.
    pub fn failures(&self) -> usize {
        self.bad_gateway + self.reset + self.empty_reply + self.no_answer + self.broken
    }
}

/// The result of a race run.
#[derive(Debug, Clone, Serialize)]
pub struct RaceReport {
    pub url: String,
    pub address: String,
    pub method: String,
    pub idle_s: f64,
    pub spread_s: f64,
    pub attempts: Vec<Attempt>,
    pub bins: Vec<Bin>,
    pub failures: usize,
    /// Shortest idle time that failed, seconds.
    pub first_failure_idle_s: Option<f64>,
    /// Longest idle time that worked, seconds.
    pub last_success_idle_s: Option<f64>,
    pub verdict: String,
    pub elapsed_s: f64,
}

/// Run one attempt per idle time of `plan`, at most `parallel` at once, until all are done
/// or `hard_stop`: each attempt's result in plan order (`None`: not finished by then).
pub(crate) async fn run_plan<A, F, Fut>(
    plan: &[Duration],
    parallel: usize,
    hard_stop: Instant,
    attempt: F,
) -> Vec<Option<A>>
where
    A: Send + 'static,
    F: Fn(Duration) -> Fut,
    Fut: std::future::Future<Output = A> + Send + 'static,
{
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, x) in plan.iter().copied().enumerate() {
        let (sem, run) = (sem.clone(), attempt(x));
        tasks.spawn(async move {
            let _permit = sem.acquire_owned().await;
            (i, run.await)
        });
    }
    let mut done: Vec<Option<A>> = std::iter::repeat_with(|| None).take(plan.len()).collect();
    while let Ok(Some(r)) = tokio::time::timeout_at(hard_stop, tasks.join_next()).await {
        if let Ok((i, a)) = r {
            if let Some(slot) = done.get_mut(i) {
                *slot = Some(a);
            }
        }
    }
    tasks.abort_all();
    done
}

/// The shortest idle before a failed attempt and the longest before a successful one, from
/// each attempt's (actual idle seconds, failed, succeeded).
pub(crate) fn idle_bounds(
    attempts: impl Iterator<Item = (f64, bool, bool)>,
) -> (Option<f64>, Option<f64>) {
    let (mut first_failure, mut last_success) = (None::<f64>, None::<f64>);
    for (idle, failed, ok) in attempts {
        if failed {
            first_failure = Some(first_failure.map_or(idle, |f| f.min(idle)));
        }
        if ok {
            last_success = Some(last_success.map_or(idle, |l| l.max(idle)));
        }
    }
    (first_failure, last_success)
}

/// Idle times evenly spread over `idle ± spread`.
pub fn schedule(idle: Duration, spread: Duration, n: usize) -> Vec<Duration> {
    let lo = idle.saturating_sub(spread).as_secs_f64();
    let hi = (idle + spread).as_secs_f64();
    if n <= 1 {
        return vec![idle];
    }
    #[allow(clippy::cast_precision_loss)]
    let step = (hi - lo) / (n - 1) as f64;
    #[allow(clippy::cast_precision_loss)]
    (0..n)
        .map(|i| Duration::from_secs_f64(lo + step * i as f64))
        .collect()
}

impl RaceOptions {
    /// Check every option against its range.
    ///
    /// # Errors
    /// [`Error::InvalidOption`] naming the flag, the value and the range.
    pub fn validate(&self) -> Result<(), Error> {
        super::check_duration("--idle", self.idle, 0, 3_600_000, "0s..=1h")?;
        super::check_duration("--spread", self.spread, 0, 3_600_000, "0s..=1h")?;
        super::check_count("--requests", self.requests, 1..=10_000)?;
        super::check_count("--parallel", self.parallel, 1..=1000)?;
        if !matches!(
            self.method.to_ascii_uppercase().as_str(),
            "GET" | "HEAD" | "POST"
        ) {
            return Err(Error::InvalidOption(format!(
                "--method '{}' is not supported: use GET, HEAD or POST",
                self.method
            )));
        }
        super::check_max_wait(self.max_wait)
    }
}

/// Run the race.
pub async fn race(url: &str, opts: &RaceOptions) -> Result<RaceReport, Error> {
    let scheme = url
        .trim()
        .split_once("://")
        .map(|(s, _)| s.to_ascii_lowercase());
    if matches!(scheme.as_deref(), Some("ws" | "wss")) {
        return Err(Error::InvalidOption(format!(
            "race speaks HTTP only (http:// and https://): '{url}' is a WebSocket URL; \
             `kaprobe probe {url}` measures how long an idle WebSocket survives"
        )));
    }
    let target = Target::parse(url)?;
    opts.validate()?;
    let method = opts.request.method_or(&opts.method.to_ascii_uppercase());
    let start = Instant::now();
    let deadline = start + opts.max_wait;
    let mut connector = Connector::new_with(
        target,
        &opts.tls,
        opts.max_wait.min(Duration::from_secs(10)),
        &opts.request,
    )
    .await?;

    // One checked exchange first, so a dead or broken URL is a clear error, not a table
    // full of failures.
    let (mut c, _) = connector
        .open_first(
            deadline
                .saturating_duration_since(Instant::now())
                .min(Duration::from_secs(10)),
        )
        .await?;
    let req = connector.request(&method, None, HttpVersion::Http11);
    let head = method == "HEAD";
    let wait = deadline
        .saturating_duration_since(Instant::now())
        .min(Duration::from_secs(15));
    let t = Instant::now();
    let first = c
        .exchange(&req, head, Instant::now() + wait)
        .await
        .map_err(|e| e.into_error(format!("first request to {}", connector.addr), wait))?;
    let answer = (t.elapsed() * 10).clamp(Duration::from_secs(1), Duration::from_secs(5));
    drop(c);

    let plan = schedule(opts.idle, opts.spread, opts.requests);
    let hard_stop = deadline + answer + Duration::from_millis(500);
    let attempts = run_plan(&plan, opts.parallel, hard_stop, |x| {
        let (c, req) = (connector.clone(), req.clone());
        async move { attempt(&c, &req, head, x, answer, deadline).await }
    })
    .await;
    let attempts: Vec<Attempt> = attempts
        .into_iter()
        .zip(&plan)
        .map(|(a, x)| {
            a.unwrap_or(Attempt {
                idle_s: x.as_secs_f64(),
                actual_idle_s: 0.0,
                outcome: Outcome::Skipped,
                status: None,
            })
        })
        .collect();
    let bins = bin(&attempts);
    let failures = attempts.iter().filter(|a| a.outcome.is_failure()).count();
    let (first_failure, last_success) = idle_bounds(attempts.iter().map(|a| {
        (
            a.actual_idle_s,
            a.outcome.is_failure(),
            a.outcome == Outcome::Ok,
        )
    }));
    let verdict = if first.will_close() {
        "the server closes the connection after every response (Connection: close): there is nothing to reuse, so no race".to_string()
    } else {
        verdict(&attempts, failures, first_failure, last_success)
    };
    Ok(RaceReport {
        url: connector.target.url.clone(),
        address: connector.addr.to_string(),
        method,
        idle_s: opts.idle.as_secs_f64(),
        spread_s: opts.spread.as_secs_f64(),
        attempts,
        bins,
        failures,
        first_failure_idle_s: first_failure,
        last_success_idle_s: last_success,
        verdict,
        elapsed_s: start.elapsed().as_secs_f64(),
    })
}

async fn attempt(
    c: &Connector,
    req: &[u8],
    head: bool,
    idle: Duration,
    answer: Duration,
    deadline: Instant,
) -> Attempt {
    let mut a = Attempt {
        idle_s: idle.as_secs_f64(),
        actual_idle_s: 0.0,
        outcome: Outcome::SetupFailed,
        status: None,
    };
    if Instant::now() + idle > deadline {
        a.outcome = Outcome::Skipped;
        return a;
    }
    let Ok((mut conn, _)) = c.open(Duration::from_secs(10)).await else {
        return a;
    };
    match conn
        .exchange(req, head, Instant::now() + Duration::from_secs(10))
        .await
    {
        Ok(r) if !r.will_close() => {}
        _ => return a,
    }
    // Idle like a pool that trusts its timer: no look at the socket before reuse.
    tokio::time::sleep_until(conn.idle_since + idle).await;
    let sent = Instant::now();
    a.actual_idle_s = sent
        .saturating_duration_since(conn.idle_since)
        .as_secs_f64();
    a.outcome = match conn.exchange(req, head, sent + answer).await {
        Ok(r) => {
            a.status = Some(r.status);
            if matches!(r.status, 502..=504) {
                Outcome::BadGateway
            } else {
                Outcome::Ok
            }
        }
        Err(f) => match (&f, f.kind()) {
            (ReadFail::Eof, _) => Outcome::EmptyReply,
            (_, "reset") => Outcome::Reset,
            (ReadFail::Timeout { .. }, _) => Outcome::NoAnswer,
            _ => Outcome::Broken,
        },
    };
    a
}

/// Group attempts: one bin per attempt up to 12 attempts, else 10 equal idle ranges.
fn bin(attempts: &[Attempt]) -> Vec<Bin> {
    bin_by_idle(
        attempts,
        |a| a.idle_s,
        |from, to| Bin {
            idle_from_s: from,
            idle_to_s: to,
            attempts: 0,
            ok: 0,
            bad_gateway: 0,
            reset: 0,
            empty_reply: 0,
            no_answer: 0,
            broken: 0,
            setup_failed: 0,
        },
        count,
    )
}

/// Race attempts (over HTTP/1.x or HTTP/2) grouped by their idle time `idle`: one bin per
/// attempt, in idle order, up to 12 attempts, else 10 equal idle ranges from the shortest
/// idle to the longest. `empty(from, to)` makes a bin, `count` adds an attempt to one.
pub(crate) fn bin_by_idle<A, B>(
    attempts: &[A],
    idle: impl Fn(&A) -> f64,
    empty: impl Fn(f64, f64) -> B,
    mut count: impl FnMut(&mut B, &A),
) -> Vec<B> {
    if attempts.len() <= 12 {
        let mut sorted: Vec<&A> = attempts.iter().collect();
        sorted.sort_by(|a, b| idle(a).total_cmp(&idle(b)));
        return sorted
            .into_iter()
            .map(|a| {
                let mut b = empty(idle(a), idle(a));
                count(&mut b, a);
                b
            })
            .collect();
    }
    let lo = attempts.iter().map(&idle).fold(f64::INFINITY, f64::min);
    let hi = attempts.iter().map(&idle).fold(0.0, f64::max);
    let width = ((hi - lo) / 10.0).max(1e-9);
    let mut bins: Vec<B> = (0..10)
        .map(|i| empty(lo + width * f64::from(i), lo + width * f64::from(i + 1)))
        .collect();
    for a in attempts {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let i = (((idle(a) - lo) / width) as usize).min(9);
        count(&mut bins[i], a);
    }
    bins
}

fn count(b: &mut Bin, a: &Attempt) {
    b.attempts += 1;
    match a.outcome {
        Outcome::Ok => b.ok += 1,
        Outcome::BadGateway => b.bad_gateway += 1,
        Outcome::Reset => b.reset += 1,
        Outcome::EmptyReply => b.empty_reply += 1,
        Outcome::NoAnswer => b.no_answer += 1,
        Outcome::Broken => b.broken += 1,
        Outcome::SetupFailed | Outcome::Skipped => b.setup_failed += 1,
    }
}

fn verdict(
    attempts: &[Attempt],
    failures: usize,
    first_failure: Option<f64>,
    last_success: Option<f64>,
) -> String {
    let tried = attempts
        .iter()
        .filter(|a| a.outcome == Outcome::Ok || a.outcome.is_failure())
        .count();
    if tried == 0 {
        return "no attempt got as far as reusing a connection".into();
    }
    if failures == 0 {
        return format!(
            "no failures: all {tried} reuses worked (longest idle {:.2}s)",
            last_success.unwrap_or(0.0)
        );
    }
    let ff = first_failure.unwrap_or(0.0);
    format!(
        "{failures} of {tried} reuses failed; the first failure came after {ff:.2}s of idle{}: a client or pool that keeps idle connections that long will see these errors",
        last_success.map_or(String::new(), |s| format!(", the longest idle that worked was {s:.2}s"))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_spreads_evenly_and_clamps_at_zero() {
        let s = schedule(Duration::from_secs(2), Duration::from_millis(500), 5);
        let secs: Vec<f64> = s.iter().map(Duration::as_secs_f64).collect();
        assert_eq!(secs, vec![1.5, 1.75, 2.0, 2.25, 2.5]);
        let s = schedule(Duration::from_millis(100), Duration::from_secs(1), 3);
        assert_eq!(s[0], Duration::ZERO);
        assert_eq!(schedule(Duration::from_secs(1), Duration::ZERO, 1).len(), 1);
    }

    #[test]
    fn bins_count_each_outcome() {
        let mk = |idle_s, outcome| Attempt {
            idle_s,
            actual_idle_s: idle_s,
            outcome,
            status: None,
        };
        let a: Vec<Attempt> = (0..20)
            .map(|i| {
                let x = f64::from(i) * 0.1;
                mk(x, if x < 1.0 { Outcome::Ok } else { Outcome::Reset })
            })
            .collect();
        let b = bin(&a);
        assert_eq!(b.len(), 10);
        assert_eq!(b.iter().map(|b| b.attempts).sum::<usize>(), 20);
        assert_eq!(b.iter().map(Bin::failures).sum::<usize>(), 10);
        assert_eq!(b[0].ok, 2);
        assert_eq!(b[9].reset, 2);
    }
}
