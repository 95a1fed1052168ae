//! `kaprobe race URL --idle D`: reproduce the keep-alive reuse race and count failures.

use std::process::ExitCode;
use std::time::Duration;

use serde::Serialize;

use kaprobe_http::client::{race, RaceOptions, RaceReport};

use crate::args::parse_duration;
use crate::exit::http_failure as failure;
use crate::measure::runtime;
use crate::out::print_json_line;
use crate::term::table;

/// Reproduce the keep-alive reuse race: requests on connections idled around --idle.
///
/// Each attempt opens a connection, makes a request, leaves the connection idle, then sends
/// a second request on it without checking first, as a connection pool that trusts its own
/// idle timer does. Idle times are spread evenly over idle-spread ..= idle+spread, and the
/// failures (reset, empty reply, no answer, 502/503/504 from a proxy) are counted per idle
/// time. Run it with --idle near the timeout `kaprobe probe` reported to see the failure
/// window, then again after a fix to see it closed.
///
/// Attempts run one at a time by default, so a proxy's pooled upstream connection idles as
/// long as the client's; --parallel speeds up runs against a server with no proxy in front.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Each attempt opens a connection, makes a request, leaves the connection idle, then sends
a second request on it without checking first, as a connection pool that trusts its own
idle timer does. Idle times are spread evenly over idle-spread ..= idle+spread, and the
failures (reset, empty reply, no answer, 502/503/504 from a proxy) are counted per idle
time. Run it with --idle near the timeout `kaprobe probe` reported to see the failure
window, then again after a fix to see it closed.

Attempts run one at a time by default, so a proxy's pooled upstream connection idles as
long as the client's; --parallel speeds up runs against a server with no proxy in front.

HTTP/2 (h2c:// URLs, or --http2): each attempt's connection idles while it is read as a live
client reads it, then a new stream goes out whatever arrived, as a pool that trusts its
timer would. Streams refused (RST_STREAM REFUSED_STREAM) or above the GOAWAY's last stream
id were never processed and are safe to retry; the others are not. See docs/http2.md.

Examples:
  kaprobe race http://127.0.0.1:8080/ --idle 5s --spread 1s --requests 20
  kaprobe race http://proxy:80/api --idle 60s --spread 2s --method POST --json
  kaprobe race https://shop.example.com/api --idle 55s -X PUT -d @order.json
  kaprobe race https://a.example/ --idle 9s --resolve a.example:443:10.0.3.7
  kaprobe race h2c://127.0.0.1:8080/ --idle 1s --spread 20ms --requests 10 --parallel 10

Exit codes: 0 the race ran (failures or not: read the table), 2 bad URL or flag,
3 host not resolved, 4 connection refused, 5 unreachable or no answer in time,
7 --cacert file unreadable or not PEM, 8 TLS error,
9 not HTTP. See docs/race.md.")]
pub struct Args {
    /// The URL: http://HOST[:PORT][/PATH] or https://HOST[:PORT][/PATH]; h2c://... for
    /// HTTP/2 without TLS.
    pub url: String,

    /// Centre of the idle times (e.g. 5s, 60s). Range 0s..=1h.
    #[arg(long, value_name = "D", value_parser = parse_duration)]
    pub idle: Duration,

    /// The attempts' idle times are spaced evenly from idle-spread to idle+spread, both
    /// ends included (never below 0s; a single --requests tests --idle alone). Range
    /// 0s..=1h [default: a tenth of --idle].
    #[arg(long, value_name = "D", value_parser = parse_duration)]
    pub spread: Option<Duration>,

    /// Number of attempts (each one connection, one reuse). Range 1..=10000.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub requests: usize,

    /// Attempts in flight at once. Range 1..=1000.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub parallel: usize,

    /// Request method: GET, HEAD or POST (proxies retry a failed GET on a fresh upstream
    /// connection; a POST shows the failure).
    #[arg(long, value_name = "M", default_value = "GET")]
    pub method: String,

    /// Upper bound on the whole run; attempts that would end later are skipped. Range 1s..=24h
    /// [default: enough for every attempt, plus 30s].
    #[arg(long, value_name = "D", value_parser = parse_duration)]
    pub max_wait: Option<Duration>,

    /// HTTP/2 (h2c:// URLs always are): new streams on idle connections, sent as the idle
    /// GOAWAY arrives; counts refused and unprocessed streams (safe to retry), streams
    /// opened after the GOAWAY, resets and successes. With https://, ALPN h2. See
    /// docs/http2.md.
    #[arg(long)]
    pub http2: bool,

    #[command(flatten)]
    pub tls: crate::args::TlsArgs,

    #[command(flatten)]
    pub request: crate::args::RequestArgs,

    /// JSON lines on stdout instead of the table (shape in docs/race.md).
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let spread = args.spread.unwrap_or(args.idle / 10);
    let max_wait = match args.max_wait {
        Some(d) => d,
        None => {
            let rounds =
                u32::try_from(args.requests.div_ceil(args.parallel.max(1))).unwrap_or(u32::MAX);
            (args.idle + spread + Duration::from_secs(2))
                .saturating_mul(rounds)
                .saturating_add(Duration::from_secs(30))
                .min(Duration::from_secs(86_400))
        }
    };
    let opts = RaceOptions {
        idle: args.idle,
        spread,
        requests: args.requests,
        parallel: args.parallel,
        method: args.method,
        max_wait,
        tls: args.tls.options(),
        request: args.request.options()?,
    };
    opts.validate().map_err(failure)?;
    if args.http2 || args.url.trim().to_ascii_lowercase().starts_with("h2c://") {
        if opts.request != kaprobe_http::client::RequestOptions::default() {
            return Err(crate::exit::Failure::usage(
                "-H, -X, --data, --resolve and --connect-to apply to HTTP/1.1 races; over HTTP/2 (--http2, h2c://) the request is fixed",
            )
            .into());
        }
        return run_h2(&args.url, &opts, args.json);
    }
    let rt = runtime()?;
    let result = rt.block_on(race(&args.url, &opts));
    // A resolver thread stuck on a slow DNS server must not hold the exit past --max-wait.
    rt.shutdown_timeout(Duration::from_millis(100));
    let report = result.map_err(failure)?;
    if args.json {
        print_json(&report.attempts, &report.bins, |b| b.failures(), &report)?;
    } else {
        render(&report)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `kaprobe race h2c://...` / `--http2`: the race over HTTP/2 (rendered in render::http).
fn run_h2(url: &str, opts: &RaceOptions, json: bool) -> anyhow::Result<ExitCode> {
    let rt = runtime()?;
    let result = rt.block_on(kaprobe_http::client::h2::race_h2(url, opts));
    rt.shutdown_timeout(Duration::from_millis(100));
    let report = result.map_err(failure)?;
    if !json {
        crate::render::http::race_h2(&report)?;
        return Ok(ExitCode::SUCCESS);
    }
    print_json(&report.attempts, &report.bins, |b| b.failures(), &report)?;
    Ok(ExitCode::SUCCESS)
}

/// `--json`: one line per attempt, one per bin (with its failures), then the summary (the
/// report without those lists).
fn print_json<A: Serialize, B: Serialize, R: Serialize>(
    attempts: &[A],
    bins: &[B],
    failures: impl Fn(&B) -> usize,
    report: &R,
) -> anyhow::Result<()> {
    for a in attempts {
        let mut v = serde_json::to_value(a)?;
        v["type"] = "attempt".into();
        print_json_line(&v)?;
    }
    for b in bins {
        let mut v = serde_json::to_value(b)?;
        v["type"] = "bin".into();
        v["failures"] = failures(b).into();
        print_json_line(&v)?;
    }
    let mut v = serde_json::to_value(report)?;
    if let Some(o) = v.as_object_mut() {
        o.remove("attempts");
        o.remove("bins");
    }
    v["type"] = "summary".into();
    print_json_line(&v)
}

fn render(r: &RaceReport) -> anyhow::Result<()> {
    crate::out::println_wrapped(&format!(
        "{} -> {}: {} {} {} after {:.2}s to {:.2}s of idle",
        r.url,
        r.address,
        r.attempts.len(),
        r.method,
        if r.attempts.len() == 1 {
            "reuse"
        } else {
            "reuses"
        },
        (r.idle_s - r.spread_s).max(0.0),
        if r.attempts.len() == 1 {
            r.idle_s
        } else {
            r.idle_s + r.spread_s
        }
    ))?;
    let mut t = table();
    t.set_header(vec![
        "idle",
        "tries",
        "ok",
        "502-504",
        "reset",
        "empty",
        "no answer",
        "other",
        "reuses",
    ]);
    let widest = r.bins.iter().map(|b| b.attempts).max().unwrap_or(1).max(1);
    // Ranges as `4.80-4.84s`: as few decimals (1 to 3) as keep neighbouring bins apart.
    let step = r
        .bins
        .iter()
        .map(|b| b.idle_to_s - b.idle_from_s)
        .filter(|w| *w > 1e-9)
        .fold(f64::INFINITY, f64::min);
    let decimals = if step >= 0.1 {
        1
    } else if step >= 0.01 {
        2
    } else {
        3
    };
    let idle_cells: Vec<String> = r
        .bins
        .iter()
        .map(|b| {
            if (b.idle_to_s - b.idle_from_s).abs() < 1e-9 {
                format!("{:.3}s", b.idle_from_s)
            } else {
                format!("{:.d$}-{:.d$}s", b.idle_from_s, b.idle_to_s, d = decimals)
            }
        })
        .collect();
    // A bar per bin: '#' per failure, '.' per success, scaled to the columns the other
    // cells leave free (6 to 20), so that each bin stays one line at 80 columns.
    let counts = |b: &kaprobe_http::client::Bin| {
        [
            b.attempts,
            b.ok,
            b.bad_gateway,
            b.reset,
            b.empty_reply,
            b.no_answer,
            b.broken + b.setup_failed,
        ]
    };
    let widest_idle = idle_cells.iter().map(String::len).max().unwrap_or(4).max(4);
    let digits = |n: usize| n.to_string().len();
    let others: usize = widest_idle
        + [5, 2, 7, 5, 5, 6, 5]
            .iter()
            .enumerate()
            .map(|(i, head)| {
                r.bins
                    .iter()
                    .map(|b| digits(counts(b)[i]))
                    .max()
                    .unwrap_or(1)
                    .max(*head)
            })
            .sum::<usize>();
    // 9 columns: 28 columns of borders and padding.
    let bar_cols = crate::term::output()
        .width
        .saturating_sub(others + 28)
        .clamp(6, 20);
    let scale = |n: usize| (n * bar_cols).div_ceil(widest);
    for (b, idle) in r.bins.iter().zip(idle_cells) {
        let bad = scale(b.failures());
        let good = scale(b.failures() + b.ok).saturating_sub(bad);
        let mut row = vec![idle];
        row.extend(counts(b).iter().map(ToString::to_string));
        row.push(format!("{}{}", "#".repeat(bad), ".".repeat(good)));
        t.add_row(row);
    }
    let t = crate::term::lay_out_table(t, |_, c, text| {
        (c == 8 && text.contains('#')).then_some(comfy_table::Color::Red)
    });
    crate::outln!("{t}")?;
    crate::outln!("('#' = failed reuse, '.' = worked)")?;
    crate::outln!("{}", crate::term::verdict_line(&r.verdict))?;
    Ok(())
}
