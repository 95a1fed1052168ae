//! `kaprobe sockets`: live TCP sockets (IPv4 and IPv6) with their timers, like `ss -tno`,
//! read through the sock_diag netlink interface. No root needed.

use std::io::{BufWriter, Write};
use std::process::ExitCode;
use std::time::Duration;

use kaprobe_sock::diag::{self, Filter, SocketEntry, States};
use serde::Serialize;

use crate::exit::{Failure, FAILURE, PERMISSION};

/// List live TCP sockets with their keep-alive and other timers.
///
/// For each socket: local and peer address, state, the pending timer and when it fires,
/// the timer's counter, and when an ACK was last received. Timers, as `ss -o` names them:
///
///   keepalive  idle connection with SO_KEEPALIVE: a probe goes out when it expires;
///              the counter is probes sent without an answer (0 = the peer answers)
///   on         retransmission: data in flight not yet acknowledged; counter = retries
///   persist    zero-window probe: the peer's receive window is 0; counter = probes
///   timewait   TIME-WAIT: the socket disappears when it expires
///   none       nothing pending (e.g. idle without keep-alive: such a connection can be
///              dead for hours before anyone notices)
///
/// Filtering is done by the kernel. Examples:
///
///   kaprobe sockets                          every connected socket
///   kaprobe sockets --port 443 --json        sockets to or from port 443, as JSON lines
///   kaprobe sockets --state established,close-wait
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Only sockets whose local or peer port is PORT (1..=65535).
    #[arg(long, value_name = "PORT")]
    pub port: Option<String>,

    /// Only sockets in these states (repeat or comma-separate). Names as in ss:
    /// established, syn-sent, syn-recv, fin-wait-1, fin-wait-2, time-wait, close,
    /// close-wait, last-ack, listen, closing; groups: all, connected (all but listen and
    /// close; the default), synchronized (connected but syn-sent), bucket, big.
    #[arg(long, value_name = "STATE")]
    pub state: Vec<String>,

    /// One JSON object per socket per line (see docs/sockets.md for the fields).
    #[arg(long)]
    pub json: bool,
}

/// One socket as a JSON line: durations in seconds, optional fields null when the kernel
/// has no tcp_info for the socket (TIME-WAIT) or the value has no meaning (a listener's
/// last ACK).
#[derive(Serialize)]
struct JsonSocket {
    family: &'static str,
    local: String,
    peer: String,
    state: &'static str,
    timer: &'static str,
    expires: f64,
    retrans: u8,
    probes: Option<u8>,
    last_ack_age: Option<f64>,
    last_data_recv_age: Option<f64>,
    last_data_sent_age: Option<f64>,
    rtt: Option<f64>,
    recv_q: u32,
    send_q: u32,
    uid: u32,
    inode: u32,
    cookie: u64,
}

impl JsonSocket {
    fn new(e: &SocketEntry) -> Self {
        let info = e.info.as_ref();
        Self {
            family: if e.local.is_ipv4() { "ipv4" } else { "ipv6" },
            local: e.local.to_string(),
            peer: e.peer.to_string(),
            state: e.state_name(),
            timer: e.timer.as_str(),
            expires: e.expires.as_secs_f64(),
            retrans: e.retrans,
            probes: info.map(|i| i.probes),
            last_ack_age: e.last_ack_age().map(|d| d.as_secs_f64()),
            last_data_recv_age: e.last_data_recv_age().map(|d| d.as_secs_f64()),
            last_data_sent_age: e.last_data_sent_age().map(|d| d.as_secs_f64()),
            rtt: info.map(|i| f64::from(i.rtt_us) / 1e6),
            recv_q: e.recv_q,
            send_q: e.send_q,
            uid: e.uid,
            inode: e.inode,
            cookie: e.cookie,
        }
    }
}

/// A short human duration: `830ms`, `1.5s`, `1h 59m 58s`.
fn short(d: Duration) -> String {
    if d.is_zero() {
        "0".into()
    } else if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else if d < Duration::from_secs(60) {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
    }
}

fn usage(e: &kaprobe_sock::Error) -> anyhow::Error {
    Failure::usage(e.to_string()).into()
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let port = match &args.port {
        Some(p) => Some(diag::parse_port(p).map_err(|e| usage(&e))?),
        None => None,
    };
    let states = if args.state.is_empty() {
        States::default()
    } else {
        let mut bits = 0;
        for s in &args.state {
            bits |= States::parse(s).map_err(|e| usage(&e))?.0;
        }
        States(bits)
    };
    let filter = Filter {
        port,
        states,
        ..Filter::default()
    };
    let fail = |e: kaprobe_sock::Error| -> anyhow::Error {
        let code = match e.io_error().map(std::io::Error::kind) {
            Some(std::io::ErrorKind::PermissionDenied) => PERMISSION,
            _ => FAILURE,
        };
        Failure::new(code, e.to_string()).into()
    };

    let stdout = std::io::stdout();
    let mut out = BufWriter::with_capacity(256 * 1024, stdout.lock());
    if args.json {
        let mut werr = None;
        diag::visit(&filter, |e| {
            if werr.is_some() {
                return;
            }
            let r = serde_json::to_writer(&mut out, &JsonSocket::new(&e))
                .map_err(std::io::Error::from)
                .and_then(|()| out.write_all(b"\n"));
            if let Err(e) = r {
                werr = Some(e);
            }
        })
        .map_err(fail)?;
        if let Some(e) = werr {
            return write_failed(&e);
        }
    } else {
        let mut rows = Vec::new();
        diag::visit(&filter, |e| rows.push(row(&e))).map_err(fail)?;
        if rows.is_empty() {
            eprintln!("no TCP sockets match");
            return Ok(ExitCode::SUCCESS);
        }
        let mut t = crate::util::table();
        t.set_header([
            "Local",
            "Peer",
            "State",
            "Timer",
            "Expires",
            "Retrans/Probes",
            "Last ACK",
            "UID",
            "Inode",
        ]);
        for r in rows {
            t.add_row(r);
        }
        if let Err(e) = writeln!(out, "{t}") {
            return write_failed(&e);
        }
    }
    if let Err(e) = out.flush() {
        return write_failed(&e);
    }
    Ok(ExitCode::SUCCESS)
}

fn row(e: &SocketEntry) -> [String; 9] {
    [
        e.local.to_string(),
        e.peer.to_string(),
        e.state_name().to_string(),
        e.timer.as_str().to_string(),
        if matches!(e.timer, diag::TimerKind::None) {
            "-".into()
        } else {
            short(e.expires)
        },
        e.retrans.to_string(),
        e.last_ack_age()
            .map_or_else(|| "-".into(), |d| format!("{} ago", short(d))),
        e.uid.to_string(),
        e.inode.to_string(),
    ]
}

/// Writing to stdout failed: a closed pipe (`| head`) is not an error worth a message.
fn write_failed(e: &std::io::Error) -> anyhow::Result<ExitCode> {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        return Ok(ExitCode::SUCCESS);
    }
    Err(Failure::new(FAILURE, format!("write the socket list to stdout: {e}")).into())
}
