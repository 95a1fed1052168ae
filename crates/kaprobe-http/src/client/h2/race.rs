//! `race` over HTTP/2: new streams sent as the idle GOAWAY arrives.
//!
//! Each attempt opens a connection, makes one request, leaves the connection idle for a
//! chosen time while reading it as a live client does (answering PINGs, noting a GOAWAY),
//! then opens a new stream on it whatever it has heard, like a pool that trusts its own idle
//! timer (the bug several HTTP/2 clients have had). Outcomes per idle time: answered, refused
//! with RST_STREAM REFUSED_STREAM, left unprocessed by a GOAWAY whose last stream id is below
//! the stream (both safe to retry, RFC 9113 section 8.7), reset, closed without an answer, or
//! no answer; and how many streams went out after the client had already read the GOAWAY.

use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use super::measure::{await_stream, cap, goaway_seen, left, StreamEnd, REFUSED_STREAM};
use super::wire::{Ev, H2Connector, Raw, ReqSpec};
use super::GoAwaySeen;
use crate::client::conn::IdleEnd;
use crate::client::race::{idle_bounds, run_plan, schedule, RaceOptions};
use crate::h2wire::Frame;
use crate::Error;

/// How one new stream went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum H2Outcome {
    /// Answered, not with a gateway error.
    Ok,
    /// Answered 502, 503 or 504.
    BadGateway,
    /// RST_STREAM REFUSED_STREAM: not processed, safe to retry.
    RefusedStream,
    /// Above the last stream id of a GOAWAY: not processed, safe to retry.
    Unprocessed,
    /// RST_STREAM with another error code.
    StreamReset,
    /// The TCP connection was reset.
    Reset,
    /// The connection closed (FIN) with no answer.
    EmptyReply,
    NoAnswer,
    /// The first request failed: nothing to reuse.
    SetupFailed,
    /// `--max-wait` ran out before the attempt.
    Skipped,
}

impl H2Outcome {
    pub fn is_failure(self) -> bool {
        !matches!(
            self,
            H2Outcome::Ok | H2Outcome::SetupFailed | H2Outcome::Skipped
        )
    }

    /// Failures a client may retry on another connection without asking (RFC 9113 8.7).
    pub fn retry_safe(self) -> bool {
        matches!(self, H2Outcome::RefusedStream | H2Outcome::Unprocessed)
    }
}

/// One attempt.
#[derive(Debug, Clone, Serialize)]
pub struct H2Attempt {
    pub idle_s: f64,
    /// From the end of the first response to sending the new stream, seconds.
    pub actual_idle_s: f64,
    pub outcome: H2Outcome,
    /// The client had already read a GOAWAY when it opened the stream.
    pub after_goaway: bool,
    /// Idle time when a GOAWAY arrived on this connection, seconds.
    pub goaway_at_s: Option<f64>,
    pub status: Option<u16>,
}

/// Attempts grouped by idle time.
#[derive(Debug, Clone, Serialize, Default)]
pub struct H2Bin {
    pub idle_from_s: f64,
    pub idle_to_s: f64,
    pub attempts: usize,
    pub ok: usize,
    pub bad_gateway: usize,
    pub refused_stream: usize,
    pub unprocessed: usize,
    pub stream_reset: usize,
    pub reset: usize,
    pub empty_reply: usize,
    pub no_answer: usize,
    pub setup_failed: usize,
    /// Streams opened after the GOAWAY had been read.
    pub after_goaway: usize,
}

impl H2Bin {
    pub fn failures(&self) -> usize {
        self.bad_gateway
            + self.refused_stream
            + self.unprocessed
            + self.stream_reset
            + self.reset
            + self.empty_reply
            + self.no_answer
    }
}

/// The result of an HTTP/2 race.
#[derive(Debug, Clone, Serialize)]
pub struct H2RaceReport {
    pub url: String,
    pub address: String,
    pub protocol: String,
    pub method: String,
    pub idle_s: f64,
    pub spread_s: f64,
    pub attempts: Vec<H2Attempt>,
    pub bins: Vec<H2Bin>,
    pub failures: usize,
    /// Failures that are safe to retry (REFUSED_STREAM, above the GOAWAY's last stream id).
    pub retry_safe: usize,
    pub after_goaway: usize,
    /// Median idle time at which GOAWAYs arrived, seconds.
    pub goaway_idle_s: Option<f64>,
    pub first_failure_idle_s: Option<f64>,
    pub last_success_idle_s: Option<f64>,
    pub verdict: String,
    pub elapsed_s: f64,
}

/// Run the race over HTTP/2 (`target` from [`super::h2_target`]).
///
/// # Errors
/// Bad options, or a first connection or request that fails.
pub async fn race_h2(url: &str, opts: &RaceOptions) -> Result<H2RaceReport, Error> {
    let Some((target, tls)) = super::h2_target(url, true)? else {
        return Err(Error::InvalidOption(format!(
            "'{url}' is not an HTTP/2 URL"
        )));
    };
    opts.validate()?;
    let method = opts.method.to_ascii_uppercase();
    let start = Instant::now();
    let deadline = start + opts.max_wait;
    let mut c = H2Connector::new(
        target,
        tls.then_some(&opts.tls),
        opts.max_wait.min(Duration::from_secs(10)),
    )
    .await?;
    let path = c.target.path.clone();
    let spec = ReqSpec::with_method(&c, &path, &method);
    // One checked exchange first: a dead or non-HTTP/2 URL is a clear error.
    let (io, _) = c
        .open_first(left(deadline).min(Duration::from_secs(10)))
        .await?;
    let mut raw = Raw::start(io, c.addr, cap(Duration::from_secs(10), deadline)).await?;
    let t = Instant::now();
    let id = raw.request(&spec).await.map_err(|e| Error::Io {
        what: format!("first request to {}", c.addr),
        source: e,
    })?;
    let wait = left(deadline).min(Duration::from_secs(15));
    match await_stream(&mut raw, id, Instant::now() + wait, t, &mut Vec::new()).await {
        StreamEnd::Done => {}
        StreamEnd::Timeout => {
            return Err(Error::NoAnswer {
                what: format!("first request to {}", c.addr),
                after: wait,
            })
        }
        other => {
            return Err(Error::NoResponse {
                what: format!("first request to {}", c.addr),
                detail: format!("the stream ended without an answer ({other:?})"),
            })
        }
    }
    let answer = (t.elapsed() * 10).clamp(Duration::from_secs(1), Duration::from_secs(5));
    drop(raw);

    let plan = schedule(opts.idle, opts.spread, opts.requests);
    let hard_stop = deadline + answer + Duration::from_millis(500);
    let attempts = run_plan(&plan, opts.parallel, hard_stop, |x| {
        let (c, spec) = (c.clone(), spec.clone());
        async move { attempt(&c, &spec, x, answer, deadline).await }
    })
    .await;
    let attempts: Vec<H2Attempt> = attempts
        .into_iter()
        .zip(&plan)
        .map(|(a, x)| {
            a.unwrap_or(H2Attempt {
                idle_s: x.as_secs_f64(),
                actual_idle_s: 0.0,
                outcome: H2Outcome::Skipped,
                after_goaway: false,
                goaway_at_s: None,
                status: None,
            })
        })
        .collect();
    let bins = bin(&attempts);
    let failures = attempts.iter().filter(|a| a.outcome.is_failure()).count();
    let retry_safe = attempts.iter().filter(|a| a.outcome.retry_safe()).count();
    let after_goaway = attempts.iter().filter(|a| a.after_goaway).count();
    let mut gs: Vec<f64> = attempts.iter().filter_map(|a| a.goaway_at_s).collect();
    let goaway_idle = super::measure::median(&mut gs);
    let (first_failure, last_success) = idle_bounds(attempts.iter().map(|a| {
        (
            a.actual_idle_s,
            a.outcome.is_failure(),
            a.outcome == H2Outcome::Ok,
        )
    }));
    let verdict = verdict(
        &attempts,
        failures,
        retry_safe,
        after_goaway,
        goaway_idle,
        first_failure,
    );
    Ok(H2RaceReport {
        url: c.target.url.clone(),
        address: c.addr.to_string(),
        protocol: if tls { "h2" } else { "h2c" }.into(),
        method,
        idle_s: opts.idle.as_secs_f64(),
        spread_s: opts.spread.as_secs_f64(),
        attempts,
        bins,
        failures,
        retry_safe,
        after_goaway,
        goaway_idle_s: goaway_idle,
        first_failure_idle_s: first_failure,
        last_success_idle_s: last_success,
        verdict,
        elapsed_s: start.elapsed().as_secs_f64(),
    })
}

async fn attempt(
    c: &H2Connector,
    spec: &ReqSpec,
    idle: Duration,
    answer: Duration,
    deadline: Instant,
) -> H2Attempt {
    let mut a = H2Attempt {
        idle_s: idle.as_secs_f64(),
        actual_idle_s: 0.0,
        outcome: H2Outcome::SetupFailed,
        after_goaway: false,
        goaway_at_s: None,
        status: None,
    };
    if Instant::now() + idle > deadline {
        a.outcome = H2Outcome::Skipped;
        return a;
    }
    let Ok(mut raw) = c.start(Duration::from_secs(10)).await else {
        return a;
    };
    let Ok(id) = raw.request(spec).await else {
        return a;
    };
    let mut goaways: Vec<GoAwaySeen> = Vec::new();
    let t = Instant::now();
    if await_stream(&mut raw, id, t + Duration::from_secs(10), t, &mut goaways).await
        != StreamEnd::Done
        || !goaways.is_empty()
    {
        return a;
    }
    let since = Instant::now();
    // Idle as a live client: read everything, answer PINGs, note a GOAWAY and the end.
    let mut ended: Option<IdleEnd> = None;
    let at = since + idle;
    while ended.is_none() {
        match raw.next(Some(at)).await {
            Ev::Frame(t, f @ Frame::GoAway { .. }) => goaways.extend(goaway_seen(t, since, &f)),
            Ev::Frame(..) => {}
            Ev::End(e, _) => ended = Some(e),
            Ev::Timeout => break,
        }
    }
    if ended.is_some() {
        tokio::time::sleep_until(at).await;
    }
    a.goaway_at_s = goaways.first().map(|g| g.at_s);
    a.after_goaway = !goaways.is_empty();
    let sent = Instant::now();
    a.actual_idle_s = sent.saturating_duration_since(since).as_secs_f64();
    let id = match raw.request(spec).await {
        Ok(id) => id,
        Err(e) => {
            a.outcome = if crate::client::conn::is_reset(&e) {
                H2Outcome::Reset
            } else {
                H2Outcome::EmptyReply
            };
            return a;
        }
    };
    let before = goaways.len();
    let end = await_stream(&mut raw, id, sent + answer, since, &mut goaways).await;
    if a.goaway_at_s.is_none() {
        a.goaway_at_s = goaways.first().map(|g| g.at_s);
    }
    let ignored = goaways[..before].iter().any(|g| g.last_stream_id < id);
    a.outcome = match end {
        StreamEnd::Done => {
            a.status = raw.status_of(id);
            if matches!(a.status, Some(502..=504)) {
                H2Outcome::BadGateway
            } else {
                H2Outcome::Ok
            }
        }
        StreamEnd::Reset(REFUSED_STREAM) => H2Outcome::RefusedStream,
        StreamEnd::Refused => H2Outcome::Unprocessed,
        _ if ignored => H2Outcome::Unprocessed,
        StreamEnd::Reset(_) => H2Outcome::StreamReset,
        StreamEnd::Closed(IdleEnd::Fin) => H2Outcome::EmptyReply,
        StreamEnd::Closed(_) => H2Outcome::Reset,
        StreamEnd::Timeout => H2Outcome::NoAnswer,
    };
    a
}

/// One bin per attempt up to 12 attempts, else 10 equal idle ranges.
fn bin(attempts: &[H2Attempt]) -> Vec<H2Bin> {
    let count = |b: &mut H2Bin, a: &H2Attempt| {
        b.attempts += 1;
        b.after_goaway += usize::from(a.after_goaway);
        match a.outcome {
            H2Outcome::Ok => b.ok += 1,
            H2Outcome::BadGateway => b.bad_gateway += 1,
            H2Outcome::RefusedStream => b.refused_stream += 1,
            H2Outcome::Unprocessed => b.unprocessed += 1,
            H2Outcome::StreamReset => b.stream_reset += 1,
            H2Outcome::Reset => b.reset += 1,
            H2Outcome::EmptyReply => b.empty_reply += 1,
            H2Outcome::NoAnswer => b.no_answer += 1,
            H2Outcome::SetupFailed | H2Outcome::Skipped => b.setup_failed += 1,
        }
    };
    crate::client::race::bin_by_idle(
        attempts,
        |a| a.idle_s,
        |from, to| H2Bin {
            idle_from_s: from,
            idle_to_s: to,
            ..H2Bin::default()
        },
        count,
    )
}

fn verdict(
    attempts: &[H2Attempt],
    failures: usize,
    retry_safe: usize,
    after_goaway: usize,
    goaway_idle: Option<f64>,
    first_failure: Option<f64>,
) -> String {
    let tried = attempts
        .iter()
        .filter(|a| !matches!(a.outcome, H2Outcome::SetupFailed | H2Outcome::Skipped))
        .count();
    if tried == 0 {
        return "no attempt got as far as opening a second stream".into();
    }
    let goaway = goaway_idle.map_or(String::new(), |g| {
        format!("; the idle GOAWAY arrived after {g:.2}s")
    });
    let after = if after_goaway > 0 {
        format!(
            "; {after_goaway} streams were opened after the GOAWAY had arrived (a client must not: RFC 9113 section 6.8)"
        )
    } else {
        String::new()
    };
    if failures == 0 {
        return format!("no failures: all {tried} new streams were answered{goaway}{after}");
    }
    let unsafe_n = failures - retry_safe;
    format!(
        "{failures} of {tried} new streams failed, the first after {:.2}s of idle; {retry_safe} of them were refused or left unprocessed (safe to retry), {unsafe_n} failed in a way a client cannot safely retry{goaway}{after}",
        first_failure.unwrap_or(0.0)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mk(idle_s: f64, outcome: H2Outcome, after: bool) -> H2Attempt {
        H2Attempt {
            idle_s,
            actual_idle_s: idle_s,
            outcome,
            after_goaway: after,
            goaway_at_s: None,
            status: None,
        }
    }

    #[test]
    fn bins_count_outcomes_and_streams_after_goaway() {
        let a: Vec<H2Attempt> = (0..20)
            .map(|i| {
                let x = f64::from(i) * 0.1;
                if x < 1.0 {
                    mk(x, H2Outcome::Ok, false)
                } else {
                    mk(x, H2Outcome::Unprocessed, true)
                }
            })
            .collect();
        let b = bin(&a);
        assert_eq!(b.len(), 10);
        assert_eq!(b.iter().map(H2Bin::failures).sum::<usize>(), 10);
        assert_eq!(b.iter().map(|b| b.after_goaway).sum::<usize>(), 10);
        assert_eq!(b[9].unprocessed, 2);
        let v = verdict(&a, 10, 10, 10, Some(1.0), Some(1.0));
        assert!(v.contains("10 of them were refused"), "{v}");
        assert!(v.contains("after the GOAWAY had arrived"), "{v}");
    }

    #[test]
    fn retry_safe_outcomes_are_the_unprocessed_ones() {
        assert!(H2Outcome::RefusedStream.retry_safe());
        assert!(H2Outcome::Unprocessed.retry_safe());
        assert!(!H2Outcome::Reset.retry_safe());
        assert!(H2Outcome::Reset.is_failure());
        assert!(!H2Outcome::Skipped.is_failure());
    }
}
