//! `kaprobe exporter`: probes on demand for Prometheus, in the manner of the blackbox exporter.
//! `GET /probe?target=URL` runs [`crate::client::probe`] against the target and answers with
//! its result as Prometheus metrics, so one Prometheus measures many servers' idle timeouts
//! and alerts when one changes.
//!
//! A probe takes about the target's idle timeout (often longer than a scrape may), so:
//! - one probe per target runs at a time: a scrape that arrives while one runs waits for it
//!   instead of starting another;
//! - a scrape waits at most its scrape timeout (Prometheus sends it in
//!   `X-Prometheus-Scrape-Timeout-Seconds`), less a margin; when the probe has not finished by
//!   then, the answer is the last finished result with its age
//!   (`kaprobe_probe_age_seconds`) and `kaprobe_probe_running 1`, and the probe goes on;
//! - probes of different targets run side by side, at most `max_concurrent` at once.
//!
//! The module is the state and the answers; [`serve`] is the listener.

mod metrics;
mod query;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, Semaphore};

use crate::client::{probe, ProbeOptions, ProbeReport};
use crate::Error;
pub use query::{percent_decode, ProbeRequest};

/// The exporter's settings.
#[derive(Debug, Clone)]
pub struct ExporterOptions {
    /// The probe's settings unless a scrape's query sets them.
    pub probe: ProbeOptions,
    /// Probes running at once, all targets together.
    pub max_concurrent: usize,
    /// How long a scrape waits when the scraper does not say its timeout.
    pub default_scrape_timeout: Duration,
    /// Distinct targets remembered; a new one beyond this is refused with 503.
    pub max_targets: usize,
}

impl Default for ExporterOptions {
    fn default() -> Self {
        ExporterOptions {
            probe: ProbeOptions::default(),
            max_concurrent: 4,
            default_scrape_timeout: Duration::from_secs(10),
            max_targets: 1000,
        }
    }
}

impl ExporterOptions {
    /// # Errors
    /// [`Error::InvalidOption`] naming the flag, the value and the range.
    pub fn validate(&self) -> Result<(), Error> {
        self.probe.validate()?;
        crate::client::check_count("--max-concurrent", self.max_concurrent, 1..=64)?;
        crate::client::check_count("--max-targets", self.max_targets, 1..=100_000)?;
        crate::client::check_duration(
            "--scrape-timeout",
            self.default_scrape_timeout,
            1_000,
            600_000,
            "1s..=10m",
        )
    }
}

/// A finished probe.
#[derive(Debug, Clone)]
pub struct Finished {
    pub at: Instant,
    pub wall: SystemTime,
    pub result: Result<ProbeReport, String>,
}

#[derive(Default)]
struct Entry {
    /// Set while a probe runs; notified when it ends.
    running: Option<Arc<Notify>>,
    last: Option<Finished>,
    started: u64,
}

/// Counters for the exporter's own `/metrics`.
#[derive(Default)]
pub struct Counters {
    pub scrapes: AtomicU64,
    pub probes_ok: AtomicU64,
    pub probes_failed: AtomicU64,
    pub bad_requests: AtomicU64,
    pub stale_answers: AtomicU64,
}

/// The exporter: targets, their probes and their last results.
pub struct Exporter {
    opts: ExporterOptions,
    entries: Mutex<HashMap<String, Entry>>,
    slots: Arc<Semaphore>,
    pub counters: Counters,
    started: SystemTime,
}

/// What one scrape of `/probe` gets.
#[derive(Debug, Clone)]
pub struct Scrape {
    /// The result reported (None: no probe of this target has finished yet).
    pub finished: Option<Finished>,
    /// A probe of this target is still running.
    pub running: bool,
    /// Probes started for this target so far.
    pub probes_started: u64,
}

impl Exporter {
    pub fn new(opts: ExporterOptions) -> Result<Arc<Exporter>, Error> {
        opts.validate()?;
        Ok(Arc::new(Exporter {
            slots: Arc::new(Semaphore::new(opts.max_concurrent)),
            opts,
            entries: Mutex::new(HashMap::new()),
            counters: Counters::default(),
            started: SystemTime::now(),
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // a panic elsewhere cannot leave the map half-written: every change is one statement
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Answer one scrape of `req`: start its probe unless one runs, wait up to `wait` for it,
    /// then report the newest finished result.
    ///
    /// # Errors
    /// [`Error::InvalidOption`] when the exporter already remembers `max_targets` targets.
    pub async fn scrape(
        self: &Arc<Self>,
        req: &ProbeRequest,
        wait: Duration,
    ) -> Result<Scrape, Error> {
        let asked = Instant::now();
        let key = req.key();
        let notify = {
            let mut map = self.lock();
            if !map.contains_key(&key) && map.len() >= self.opts.max_targets {
                return Err(Error::InvalidOption(format!(
                    "the exporter already probes {} targets (--max-targets); not adding {}",
                    map.len(),
                    req.target
                )));
            }
            let entry = map.entry(key.clone()).or_default();
            match &entry.running {
                Some(n) => n.clone(),
                None => {
                    let n = Arc::new(Notify::new());
                    entry.running = Some(n.clone());
                    entry.started += 1;
                    self.start(key.clone(), req.clone(), n.clone());
                    n
                }
            }
        };
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        // the probe may have ended between the lock above and `enable`: look again
        let still_running = {
            let map = self.lock();
            map.get(&key)
                .and_then(|e| e.running.as_ref())
                .is_some_and(|n| Arc::ptr_eq(n, &notify))
        };
        if still_running {
            let _ = tokio::time::timeout(wait, notified).await;
        }
        let map = self.lock();
        let entry = map.get(&key);
        let finished = entry.and_then(|e| e.last.clone());
        if finished.as_ref().is_some_and(|f| f.at < asked) {
            self.counters.stale_answers.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Scrape {
            running: entry.is_some_and(|e| e.running.is_some()),
            probes_started: entry.map_or(0, |e| e.started),
            finished,
        })
    }

    fn start(self: &Arc<Self>, key: String, req: ProbeRequest, done: Arc<Notify>) {
        let me = self.clone();
        let mut opts = self.opts.probe.clone();
        if let Some(w) = req.max_wait {
            opts.max_wait = w;
        }
        if let Some(c) = req.connections {
            opts.connections = c;
        }
        tokio::spawn(async move {
            let permit = me.slots.clone().acquire_owned().await;
            let result = probe(&req.target, &opts).await.map_err(|e| e.to_string());
            drop(permit);
            match &result {
                Ok(_) => me.counters.probes_ok.fetch_add(1, Ordering::Relaxed),
                Err(_) => me.counters.probes_failed.fetch_add(1, Ordering::Relaxed),
            };
            {
                let mut map = me.lock();
                let entry = map.entry(key).or_default();
                entry.running = None;
                entry.last = Some(Finished {
                    at: Instant::now(),
                    wall: SystemTime::now(),
                    result,
                });
            }
            done.notify_waiters();
        });
    }

    /// The exporter's own metrics (`/metrics`).
    pub fn own_metrics(&self) -> String {
        let (targets, running) = {
            let map = self.lock();
            (
                map.len(),
                map.values().filter(|e| e.running.is_some()).count(),
            )
        };
        metrics::own(self, targets, running)
    }

    /// The `/probe` answer for a scrape.
    pub fn probe_metrics(&self, s: &Scrape) -> String {
        metrics::probe(s, Instant::now())
    }
}

/// The longest request head read.
const MAX_HEAD: usize = 8192;

/// Serve `/probe`, `/metrics` and `/` on `listener` until `stop` turns true.
pub async fn serve(
    exporter: Arc<Exporter>,
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
) -> Result<(), Error> {
    loop {
        tokio::select! {
            _ = stop.changed() => return Ok(()),
            accepted = listener.accept() => {
                let Ok((conn, peer)) = accepted else { continue };
                let ex = exporter.clone();
                tokio::spawn(async move { let _ = answer(ex, conn, peer).await; });
            }
        }
    }
}

async fn answer(ex: Arc<Exporter>, mut conn: TcpStream, _peer: SocketAddr) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 2048];
    let read = async {
        while !kaprobe_sock::scrape::head_done(&head) && head.len() <= MAX_HEAD {
            let n = conn.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(())
    };
    if tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .is_err()
    {
        return Ok(());
    }
    let reply = route(&ex, &head).await;
    conn.write_all(&reply).await?;
    conn.shutdown().await
}

/// The whole HTTP response to a request head.
pub async fn route(ex: &Arc<Exporter>, head: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(head);
    let line = text.lines().next().unwrap_or("");
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let head_only = method == "HEAD";
    if method != "GET" && method != "HEAD" {
        ex.counters.bad_requests.fetch_add(1, Ordering::Relaxed);
        return respond(
            "405 Method Not Allowed",
            TEXT,
            "use GET /probe?target=URL\n",
            head_only,
        );
    }
    match path {
        "/metrics" => respond(
            "200 OK",
            kaprobe_sock::scrape::CONTENT_TYPE,
            &ex.own_metrics(),
            head_only,
        ),
        "/" => respond("200 OK", TEXT, HELP, head_only),
        "/probe" => {
            ex.counters.scrapes.fetch_add(1, Ordering::Relaxed);
            let req = match ProbeRequest::from_query(query) {
                Ok(r) => r,
                Err(e) => {
                    ex.counters.bad_requests.fetch_add(1, Ordering::Relaxed);
                    return respond("400 Bad Request", TEXT, &format!("{e}\n"), head_only);
                }
            };
            let wait = scrape_wait(&text, ex.opts.default_scrape_timeout);
            match ex.scrape(&req, wait).await {
                Ok(s) => respond(
                    "200 OK",
                    kaprobe_sock::scrape::CONTENT_TYPE,
                    &ex.probe_metrics(&s),
                    head_only,
                ),
                Err(e) => respond(
                    "503 Service Unavailable",
                    TEXT,
                    &format!("{e}\n"),
                    head_only,
                ),
            }
        }
        _ => respond(
            "404 Not Found",
            TEXT,
            "not found: try /probe?target=URL or /metrics\n",
            head_only,
        ),
    }
}

const TEXT: &str = "text/plain; charset=utf-8";

const HELP: &str = "kaprobe exporter\n\
GET /probe?target=URL            probe URL's keep-alive behaviour; Prometheus metrics\n\
    &max_wait=D                  bound on the probe (default: the exporter's --max-wait)\n\
    &connections=N               connections on the idle ladder\n\
GET /metrics                     the exporter's own metrics\n";

/// How long a scrape may wait: the scraper's `X-Prometheus-Scrape-Timeout-Seconds` less half
/// a second (at least 0.5 s), or `default`.
pub fn scrape_wait(head: &str, default: Duration) -> Duration {
    let said = head.lines().skip(1).find_map(|l| {
        let (name, value) = l.split_once(':')?;
        if !name
            .trim()
            .eq_ignore_ascii_case("x-prometheus-scrape-timeout-seconds")
        {
            return None;
        }
        let secs: f64 = value.trim().parse().ok()?;
        (secs.is_finite() && secs > 0.0).then_some(secs.min(3600.0))
    });
    match said {
        Some(s) => Duration::from_secs_f64((s - 0.5).max(0.5)),
        None => default,
    }
}

fn respond(status: &str, ctype: &str, body: &str, head_only: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrape_wait_follows_the_header() {
        let d = Duration::from_secs(10);
        assert_eq!(scrape_wait("GET /probe HTTP/1.1\r\n", d), d);
        assert_eq!(
            scrape_wait(
                "GET / HTTP/1.1\r\nX-Prometheus-Scrape-Timeout-Seconds: 5\r\n",
                d
            ),
            Duration::from_millis(4500)
        );
        assert_eq!(
            scrape_wait(
                "GET / HTTP/1.1\r\nx-prometheus-scrape-timeout-seconds: 0.2\r\n",
                d
            ),
            Duration::from_millis(500)
        );
        for bad in ["nan", "-3", "inf", "x", ""] {
            let h = format!("GET / HTTP/1.1\r\nX-Prometheus-Scrape-Timeout-Seconds: {bad}\r\n");
            assert_eq!(scrape_wait(&h, d), d, "{bad}");
        }
    }

    #[tokio::test]
    async fn routes_answer_without_panicking_on_garbage() {
        let ex = Exporter::new(ExporterOptions::default()).expect("defaults are valid");
        for head in [
            &b""[..],
            b"\xff\xfe\r\n\r\n",
            b"POST /probe HTTP/1.1\r\n\r\n",
            b"GET /probe HTTP/1.1\r\n\r\n",
            b"GET /probe?target=ftp://x HTTP/1.1\r\n\r\n",
            b"GET /probe?target=%zz HTTP/1.1\r\n\r\n",
            b"GET /nope HTTP/1.1\r\n\r\n",
        ] {
            let r = route(&ex, head).await;
            let status = String::from_utf8_lossy(&r[..12.min(r.len())]).to_string();
            assert!(
                status.starts_with("HTTP/1.1 4"),
                "{:?} -> {status}",
                String::from_utf8_lossy(head)
            );
        }
        let own = String::from_utf8(route(&ex, b"GET /metrics HTTP/1.1\r\n\r\n").await)
            .unwrap_or_default();
        assert!(own.contains("kaprobe_exporter_scrapes_total 3"), "{own}");
        assert!(
            own.contains("kaprobe_exporter_bad_requests_total 6"),
            "{own}"
        );
    }
}
