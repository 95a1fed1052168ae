//! `kaprobe exporter --listen ADDR`: probes on demand for Prometheus.

use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use kaprobe_http::client::ProbeOptions;
use kaprobe_http::exporter::{serve, Exporter, ExporterOptions};

use crate::args::parse_duration;
use crate::exit::{Failure, USAGE};

/// Answer Prometheus scrapes of /probe?target=URL with a probe's result, like the blackbox
/// exporter: a Prometheus that already scrapes many servers measures their idle timeouts and
/// alerts when one changes.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
GET /probe?target=URL runs `kaprobe probe URL` and answers with its result as Prometheus
metrics (idle timeout and its uncertainty, how idle connections end, advertised vs measured,
the safe idle for a pool in front, reuse failures; see docs/metrics.md). Optional query
parameters: max_wait=D and connections=N, as the probe's flags.

A probe lasts about the target's idle timeout, often longer than a scrape may. One probe per
target runs at a time; a scrape waits for it up to the scrape timeout Prometheus sends
(X-Prometheus-Scrape-Timeout-Seconds, less half a second; --scrape-timeout when absent), then
answers with the last finished result, its age (kaprobe_probe_age_seconds) and
kaprobe_probe_running 1, while the probe goes on. GET /metrics has the exporter's own counters.

Examples:
  kaprobe exporter --listen 127.0.0.1:9435
  curl 'http://127.0.0.1:9435/probe?target=http://127.0.0.1:8080/&max_wait=90s'

Exit codes: 0 stopped by Ctrl-C or SIGTERM (or --duration), 1 --listen address in use,
2 bad flag. See docs/metrics.md for the Prometheus scrape config and alert rules.")]
pub struct Args {
    /// Address to answer scrapes on (IP:PORT; port 0 picks a free one, printed on stderr).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9435")]
    pub listen: String,

    /// Upper bound on each probe unless the scrape sets max_wait. Range 1s..=24h.
    #[arg(long, value_name = "D", value_parser = parse_duration, default_value = "150s")]
    pub max_wait: Duration,

    /// Connections on each probe's idle ladder unless the scrape sets connections.
    /// Range 2..=1000.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub connections: usize,

    /// Probes running at once, all targets together (others wait for a slot). Range 1..=64.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub max_concurrent: usize,

    /// How long a scrape waits for its probe when the scraper does not say. Range 1s..=10m.
    #[arg(long, value_name = "D", value_parser = parse_duration, default_value = "10s")]
    pub scrape_timeout: Duration,

    /// Distinct targets remembered; scrapes of more are refused with 503. Range 1..=100000.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub max_targets: usize,

    /// Stop after this long (for tests and scripts). Range 1s..=24h.
    #[arg(long, value_name = "D", value_parser = parse_duration)]
    pub duration: Option<Duration>,

    #[command(flatten)]
    pub tls: crate::args::TlsArgs,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let opts = ExporterOptions {
        probe: ProbeOptions {
            max_wait: args.max_wait,
            connections: args.connections,
            tls: args.tls.options(),
            ..ProbeOptions::default()
        },
        max_concurrent: args.max_concurrent,
        default_scrape_timeout: args.scrape_timeout,
        max_targets: args.max_targets,
    };
    let exporter = Exporter::new(opts).map_err(|e| Failure::new(USAGE, e.to_string()))?;
    if let Some(d) = args.duration {
        if d < Duration::from_secs(1) || d > Duration::from_secs(86_400) {
            return Err(Failure::usage(format!(
                "--duration {} is out of range: use 1s..=24h",
                crate::util::human(d)
            ))
            .into());
        }
    }
    let (std_listener, bound) = crate::args::listen_flag(&args.listen, "127.0.0.1:9435")?;
    eprintln!(
        "kaprobe exporter: scrapes on http://{bound}/probe?target=URL (own metrics on /metrics)"
    );

    let stop = crate::util::stop_flag()?;
    let rt = crate::measure::runtime()?;
    let (tx, rx) = tokio::sync::watch::channel(false);
    let ex = Arc::clone(&exporter);
    let deadline = args.duration.map(|d| std::time::Instant::now() + d);
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(std_listener)?;
        let server = tokio::spawn(serve(ex, listener, rx));
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if stop.load(Ordering::Relaxed)
                || deadline.is_some_and(|d| std::time::Instant::now() >= d)
            {
                break;
            }
        }
        let _ = tx.send(true);
        let _ = server.await;
        Ok::<(), std::io::Error>(())
    })?;
    rt.shutdown_timeout(Duration::from_millis(100));
    let c = &exporter.counters;
    eprintln!(
        "kaprobe exporter: stopped after {} scrapes ({} probes measured, {} failed)",
        c.scrapes.load(Ordering::Relaxed),
        c.probes_ok.load(Ordering::Relaxed),
        c.probes_failed.load(Ordering::Relaxed)
    );
    Ok(ExitCode::SUCCESS)
}
