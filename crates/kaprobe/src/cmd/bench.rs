//! `kaprobe bench push`: bytes on the wire and latency per delivered message for short
//! polling, long polling, SSE and WebSocket against one server.

use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use kaprobe_http::client::push_bench::{bench_push, BenchOptions, BenchReport};

use crate::args::parse_duration;
use crate::exit::Failure;
use crate::term::table;
use crate::util::{self, ChildGuard};

/// Measure what push channels cost per delivered message.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub what: What,
}

#[derive(Debug, clap::Subcommand)]
pub enum What {
    /// Bytes on the wire and delivery latency per message: polling, long polling, SSE, WebSocket.
    Push(PushArgs),
}

/// Publish N messages to one room and receive them by four clients at once: short polling
/// (`/poll?since=` every --poll-interval, empty polls included), long polling
/// (`/poll?since=&wait=30s`), Server-Sent Events (`/sse`) and WebSocket (`/ws`).
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Publish N messages to one room and receive them by four clients at once: short polling
(/poll?since= every --poll-interval, empty polls included), long polling
(/poll?since=&wait=30s), Server-Sent Events (/sse) and WebSocket (/ws).

For each channel: bytes on the wire per delivered message (everything the client's sockets
sent and received: handshakes, HTTP headers, framing, empty polls), delivery latency from the
publish to the client (p50, p99, max), and messages delivered and lost.

Without --url it starts `kaprobe serve` on 127.0.0.1 (a free port) and stops it afterwards;
with --url it uses a running server that has the push endpoints (/publish, /poll, /sse, /ws).

Examples:
  kaprobe bench push
  kaprobe bench push --messages 100 --rate 20 --poll-interval 1s
  kaprobe bench push --url http://127.0.0.1:8080 --json

Exit codes: 0 measured, 1 the server could not be started, 2 bad flag, 3 host not resolved,
4 connection refused, 5 no answer in time, 9 the server has no push endpoints.
See docs/push-probe.md.")]
pub struct PushArgs {
    /// A running server (http://HOST:PORT) with the push endpoints; default: start
    /// `kaprobe serve` on 127.0.0.1 for the run.
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,

    /// Messages to publish. Range 1..=100000.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub messages: usize,

    /// Messages published per second. Range 0.1..=10000.
    #[arg(long, value_name = "R", default_value_t = 5.0)]
    pub rate: f64,

    /// How often the short polling client asks (the default keeps its latency near the push
    /// channels'; a longer interval batches messages but delays them). Range 10ms..=1m.
    #[arg(long, value_name = "D", default_value = "100ms", value_parser = parse_duration)]
    pub poll_interval: Duration,

    /// One JSON object on stdout instead of the table (shape in docs/push-probe.md).
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.what {
        What::Push(a) => run_push(a),
    }
}

/// `kaprobe serve` on a free loopback port, stopped when dropped.
fn start_server() -> anyhow::Result<(ChildGuard, String)> {
    use std::io::BufRead;
    let exe = std::env::current_exe().map_err(|e| {
        Failure::new(
            1,
            format!(
                "cannot find the kaprobe executable: {}",
                kaprobe_sock::fmt::os_error(&e)
            ),
        )
    })?;
    let mut child = Command::new(&exe)
        .args(["serve", "--listen", "127.0.0.1:0", "--max-requests", "0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            Failure::new(
                1,
                format!(
                    "cannot start {} serve: {}",
                    exe.display(),
                    kaprobe_sock::fmt::os_error(&e)
                ),
            )
        })?;
    let Some(stderr) = child.stderr.take() else {
        return Err(Failure::new(1, "kaprobe serve: no stderr to read its address from").into());
    };
    let server = ChildGuard(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if !sent {
                if let Some(a) = line.trim().strip_prefix("kaprobe serve: listening on ") {
                    sent = tx.send(Ok(a.trim_end_matches('/').to_string())).is_ok();
                    continue;
                }
                let _ = tx.send(Err(line));
            }
            // Keep draining so the server never blocks on a full pipe.
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut said = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(Ok(url)) => return Ok((server, url)),
            Ok(Err(line)) => said.push(line),
            Err(_) => {
                return Err(Failure::new(
                    1,
                    format!(
                        "kaprobe serve did not start within 10s{}",
                        if said.is_empty() {
                            String::new()
                        } else {
                            format!(": {}", said.join(" / "))
                        }
                    ),
                )
                .into())
            }
        }
    }
}

fn run_push(a: PushArgs) -> anyhow::Result<ExitCode> {
    crate::args::in_range("--messages", a.messages, 1..=100_000)?;
    if !(a.rate.is_finite() && (0.1..=10_000.0).contains(&a.rate)) {
        return Err(Failure::usage(format!(
            "--rate {} is out of range: use 0.1..=10000 messages per second",
            a.rate
        ))
        .into());
    }
    if a.poll_interval < Duration::from_millis(10) || a.poll_interval > Duration::from_secs(60) {
        return Err(Failure::usage(format!(
            "--poll-interval {} is out of range: use 10ms..=1m",
            util::human(a.poll_interval)
        ))
        .into());
    }
    let (own, url) = match &a.url {
        Some(u) => (None, u.trim_end_matches('/').to_string()),
        None => {
            let (s, u) = start_server()?;
            (Some(s), u)
        }
    };
    let opts = BenchOptions {
        messages: a.messages,
        rate: a.rate,
        poll_interval: a.poll_interval,
        ..BenchOptions::default()
    };
    let code = crate::measure::measure(bench_push(&url, &opts), a.json, render);
    drop(own);
    code
}

fn opt_ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |s| format!("{:.1}ms", s * 1000.0))
}

/// Short names for the table (JSON keeps the snake_case ones).
fn channel_label(name: &str) -> &str {
    match name {
        "short_polling" => "short poll",
        "long_polling" => "long poll",
        "sse" => "SSE",
        "websocket" => "WebSocket",
        other => other,
    }
}

fn render(r: &BenchReport) -> anyhow::Result<()> {
    crate::outln!(
        "{}",
        crate::term::wrap(
            &format!(
                "{} messages of {} bytes at {}/s to room {} on {} (short polling every {})",
                r.messages,
                r.message_bytes,
                r.rate,
                r.room,
                r.url,
                util::human(Duration::from_secs_f64(r.poll_interval_s))
            ),
            2
        )
    )?;
    let mut t = table();
    t.set_header(vec![
        "channel", "msgs", "lost", "B/msg", "reqs", "p50", "p99", "max",
    ]);
    for c in &r.channels {
        t.add_row(vec![
            channel_label(c.channel).to_string(),
            c.delivered.to_string(),
            c.lost.to_string(),
            c.bytes_per_message
                .map_or("-".into(), |b| format!("{b:.0}")),
            c.requests.to_string(),
            opt_ms(c.latency_p50_s),
            opt_ms(c.latency_p99_s),
            opt_ms(c.latency_max_s),
        ]);
    }
    crate::out::print_table(t)?;
    crate::outln!(
        "{}",
        crate::term::wrap(
            "B/msg: bytes the client's sockets sent and received per delivered message \
             (--json also has the totals); p50/p99/max: delivery latency",
            2
        )
    )?;
    let per = |name: &str| {
        r.channels
            .iter()
            .find(|c| c.channel == name)
            .and_then(|c| c.bytes_per_message)
    };
    if let (Some(p), Some(w)) = (per("short_polling"), per("websocket")) {
        if w > 0.0 {
            crate::outln!(
                "short polling moves {:.1}x the bytes of WebSocket per delivered message",
                p / w
            )?;
        }
    }
    crate::outln!("(bench took {:.2}s)", r.elapsed_s)?;
    Ok(())
}
