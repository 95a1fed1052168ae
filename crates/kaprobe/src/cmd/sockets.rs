//! `kaprobe sockets`: live TCP sockets (IPv4 and IPv6) with their timers, like `ss -tno`,
//! read through the sock_diag netlink interface. No root needed.

use std::io::{BufWriter, IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use kaprobe_sock::destroy::{Closed, Closes, Heard, Killer};
use kaprobe_sock::diag::{self, AddrMatch, Filter, SocketEntry, States};
use kaprobe_sock::owners::{Owner, Owners};
use serde::Serialize;

use crate::exit::{Failure, FAILURE};

const AFTER_HELP: &str = "\
For each socket: local and peer address, state, the pending timer and when it fires, the
timer's counter, and how long ago an ACK last arrived. Timers, as `ss -o` names them:

  keepalive  idle connection with SO_KEEPALIVE: a probe goes out when it
             expires; the counter is probes sent without an answer (0 = the
             peer answers)
  on         retransmission: data in flight not yet acknowledged;
             counter = retries
  persist    zero-window probe: the peer's receive window is 0; counter = probes
  timewait   TIME-WAIT: the socket disappears when it expires
  none       nothing pending (idle without keep-alive: such a connection can
             be dead for hours before anyone notices)

Read through the kernel's sock_diag interface (no root needed); the kernel does the
filtering. Examples:

  kaprobe sockets                    open connections (ss's default states)
  kaprobe sockets --port 443 --json  sockets to or from port 443, as JSON lines
  kaprobe sockets --state established,close-wait
  kaprobe sockets --state all            listeners and TIME-WAIT too
  kaprobe sockets -p --dst 10.0.0.0/8    with owners (ss -tnp dst 10.0.0.0/8)
  kaprobe sockets --netns blue           in a namespace (ss -N blue)
  kaprobe sockets --kill --dst 127.0.0.1:6379   a pool must reconnect (ss -K)
  kaprobe sockets --watch 1s --port 443  a live table
  kaprobe sockets --events --json        closes as they happen (ss -E)

Fields and their meaning: docs/sockets.md.";

/// `kaprobe sockets` arguments.
#[derive(Debug, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    /// Only sockets whose local or peer port is PORT (1..=65535).
    #[arg(long, value_name = "PORT", allow_hyphen_values = true)]
    pub port: Option<String>,

    /// Only sockets in these states (repeat or comma-separate). Names as in ss:
    /// established, syn-sent, syn-recv, fin-wait-1, fin-wait-2, time-wait, close,
    /// close-wait, last-ack, listen, closing; groups: open (the default, as ss: all but
    /// listen, close, time-wait and syn-recv), all, connected (all but listen and close),
    /// synchronized (connected but syn-sent), bucket (syn-recv, time-wait), big.
    #[arg(long, value_name = "STATE")]
    pub state: Vec<String>,

    /// Only sockets whose local address is in this prefix, as `ss src`: ADDR, ADDR/LEN,
    /// ADDR:PORT, ADDR/LEN:PORT, [IPv6]:PORT or :PORT (e.g. 10.0.0.0/8, [::1]:443).
    #[arg(long, value_name = "PREFIX", allow_hyphen_values = true)]
    pub src: Option<String>,

    /// Only sockets whose peer address is in this prefix, as `ss dst` (same forms as --src).
    #[arg(long, value_name = "PREFIX", allow_hyphen_values = true)]
    pub dst: Option<String>,

    /// Show the processes holding each socket (pid/command, as `ss -p` finds them in
    /// /proc/*/fd). Without root only your own processes are seen.
    #[arg(short = 'p', long)]
    pub processes: bool,

    /// Look in the network namespace NAME (as `ip netns add NAME` made it; like `ss -N`).
    /// Needs root.
    #[arg(short = 'N', long, value_name = "NAME")]
    pub netns: Option<String>,

    /// Kill the matching sockets (SOCK_DESTROY, like `ss -K`): each peer gets a RST, each
    /// owner's next call fails with ECONNABORTED. Needs root. Asks first on a terminal;
    /// with no --port, --src, --dst or --state it refuses unless --yes.
    #[arg(long, conflicts_with_all = ["watch", "events"])]
    pub kill: bool,

    /// With --kill: ask nothing, kill every match.
    #[arg(short = 'y', long, requires = "kill")]
    pub yes: bool,

    /// Refresh the list every D (e.g. 1s, 500ms) until interrupted. Range 100ms..=1h.
    #[arg(long, value_name = "D", value_parser = crate::args::parse_duration, conflicts_with = "events")]
    pub watch: Option<Duration>,

    /// Stream TCP sockets as the kernel destroys them, with how each ended (like `ss -E`),
    /// until interrupted. Needs root.
    #[arg(long)]
    pub events: bool,

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
    local: std::net::SocketAddr,
    peer: std::net::SocketAddr,
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
    /// With -p: the processes holding the socket.
    #[serde(skip_serializing_if = "Option::is_none")]
    processes: Option<Vec<Owner>>,
    /// With --kill: whether this socket was killed (false: it was already gone).
    #[serde(skip_serializing_if = "Option::is_none")]
    killed: Option<bool>,
}

impl JsonSocket {
    fn with(e: &SocketEntry, owners: Option<&Owners>) -> Self {
        let mut j = Self::new(e);
        j.processes = owners.map(|o| o.of(e.inode).to_vec());
        j
    }

    fn new(e: &SocketEntry) -> Self {
        let info = e.info.as_ref();
        Self {
            family: if e.local.is_ipv4() { "ipv4" } else { "ipv6" },
            local: e.local,
            peer: e.peer,
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
            processes: None,
            killed: None,
        }
    }
}

/// A short human duration: `830ms`, `1.5s`, `1h59m58s`.
fn push_short(buf: &mut String, d: Duration) {
    use std::fmt::Write as _;
    // Writing into a String cannot fail.
    let _ = if d.is_zero() {
        write!(buf, "0")
    } else if d < Duration::from_secs(1) {
        write!(buf, "{}ms", d.as_millis())
    } else if d < Duration::from_secs(60) {
        write!(buf, "{:.1}s", d.as_secs_f64())
    } else {
        write!(
            buf,
            "{}",
            crate::util::human(Duration::from_secs(d.as_secs()))
        )
    };
}

fn usage(e: &kaprobe_sock::Error) -> anyhow::Error {
    Failure::usage(e.to_string()).into()
}

/// What the command does once its flags are checked.
enum Mode {
    List,
    Kill { yes: bool, filtered: bool },
    Watch(Duration),
    Events,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let port = match &args.port {
        Some(p) => Some(diag::parse_port(p).map_err(|e| usage(&e))?),
        None => None,
    };
    let states = if args.state.is_empty() {
        States::default()
    } else {
        // Repeated flags add up like a comma-separated list.
        States::parse(&args.state.join(",")).map_err(|e| usage(&e))?
    };
    let prefix = |flag: &str, v: &Option<String>| -> anyhow::Result<Option<AddrMatch>> {
        v.as_deref()
            .map(|s| AddrMatch::parse(flag, s).map_err(|e| usage(&e)))
            .transpose()
    };
    let filter = Filter {
        port,
        states,
        src: prefix("--src", &args.src)?,
        dst: prefix("--dst", &args.dst)?,
        ..Filter::default()
    }
    .narrowed();
    let mode = if args.kill {
        Mode::Kill {
            yes: args.yes,
            filtered: port.is_some()
                || filter.src.is_some()
                || filter.dst.is_some()
                || !args.state.is_empty(),
        }
    } else if let Some(d) = args.watch {
        if d < Duration::from_millis(100) || d > Duration::from_secs(3600) {
            return Err(Failure::usage(format!(
                "--watch {} is out of range: use 100ms..=1h",
                kaprobe_sock::fmt::duration(d)
            ))
            .into());
        }
        Mode::Watch(d)
    } else if args.events {
        if args.processes {
            return Err(Failure::usage(
                "-p has nothing to show with --events: a closed socket has no process left",
            )
            .into());
        }
        if !args.state.is_empty() {
            return Err(Failure::usage(
                "--state does not apply to --events: every closed socket is in state CLOSE",
            )
            .into());
        }
        Mode::Events
    } else {
        Mode::List
    };
    let view = View {
        json: args.json,
        processes: args.processes,
    };
    let work = move || match mode {
        Mode::List => list(&filter, view),
        Mode::Kill { yes, filtered } => kill(&filter, view, yes, filtered),
        Mode::Watch(every) => watch(&filter, view, every),
        Mode::Events => events(&filter, args.json),
    };
    match &args.netns {
        Some(name) => kaprobe_sock::netns::in_named_netns(name, work).map_err(|e| {
            let e = crate::exit::sock_failure(e);
            anyhow::Error::from(e)
        })?,
        None => work(),
    }
}

/// How sockets are shown.
#[derive(Clone, Copy)]
struct View {
    json: bool,
    processes: bool,
}

fn fail(e: kaprobe_sock::Error) -> anyhow::Error {
    crate::exit::sock_failure(e).into()
}

/// `kaprobe sockets`: one listing.
fn list(filter: &Filter, view: View) -> anyhow::Result<ExitCode> {
    let owners = view.processes.then(Owners::scan);
    let stdout = std::io::stdout();
    let mut out = BufWriter::with_capacity(256 * 1024, stdout.lock());
    let r = if view.json {
        write_json(&mut out, filter, owners.as_ref())?
    } else {
        let terminal = std::io::stdout().is_terminal();
        write_table(&mut out, filter, owners.as_ref(), terminal)?.map(|n| {
            if n == 0 {
                eprintln!("no TCP sockets match");
            }
        })
    };
    if let Err(e) = r.and_then(|()| out.flush()) {
        return write_failed(&e);
    }
    Ok(ExitCode::SUCCESS)
}

/// Every matching socket as a JSON line. The outer error is sock_diag's, the inner one
/// writing's.
fn write_json(
    out: &mut impl Write,
    filter: &Filter,
    owners: Option<&Owners>,
) -> anyhow::Result<std::io::Result<()>> {
    let mut werr = None;
    diag::visit(filter, |e| {
        if werr.is_some() {
            return;
        }
        let r = serde_json::to_writer(&mut *out, &JsonSocket::with(&e, owners))
            .map_err(std::io::Error::from)
            .and_then(|()| out.write_all(b"\n"));
        if let Err(e) = r {
            werr = Some(e);
        }
    })
    .map_err(fail)?;
    Ok(werr.map_or(Ok(()), Err))
}

/// Every matching socket in one table (width-aware on a terminal); returns how many were
/// drawn. The outer error is sock_diag's, the inner one writing's.
fn write_table(
    out: &mut impl Write,
    filter: &Filter,
    owners: Option<&Owners>,
    terminal: bool,
) -> anyhow::Result<std::io::Result<usize>> {
    let processes = owners.is_some();
    if terminal {
        // Width-aware (wraps to the terminal); a terminal is slower than any table.
        let mut t = crate::term::table();
        t.set_header(HEADER);
        diag::visit(filter, |e| {
            t.add_row(row(&e, owners));
        })
        .map_err(fail)?;
        let n = t.row_count();
        if n == 0 {
            return Ok(Ok(0));
        }
        fit_terminal(&mut t, processes);
        let width = crate::term::output().width;
        let drawn = t.to_string();
        if drawn.lines().any(|l| l.chars().count() > width) {
            // Too narrow for the columns: one short block per socket.
            let mut r = Ok(());
            for row in t.row_iter() {
                let c: Vec<String> = row.cell_iter().map(comfy_table::Cell::content).collect();
                let mut c: Vec<&str> = c.iter().map(String::as_str).collect();
                if !processes {
                    c.truncate(COLS - 1);
                }
                r = r.and_then(|()| write_stacked(out, &c, width));
            }
            Ok(r.map(|()| n))
        } else {
            Ok(writeln!(out, "{drawn}").map(|()| n))
        }
    } else {
        // Piped or redirected: the same table, drawn without comfy-table's per-cell
        // allocations (it costs ~10 us a row, too slow for tens of thousands of sockets).
        let mut t = PlainTable::new(processes);
        diag::visit(filter, |e| t.add(&e, owners)).map_err(fail)?;
        let n = t.spans.len();
        if n == 0 {
            return Ok(Ok(0));
        }
        Ok(t.write(out, crate::term::output().width).map(|()| n))
    }
}

/// `--kill`: list, confirm, kill, report what was killed.
fn kill(filter: &Filter, view: View, yes: bool, filtered: bool) -> anyhow::Result<ExitCode> {
    if !filtered && !yes {
        return Err(Failure::usage(
            "--kill with no --port, --src, --dst or --state would kill every open TCP connection \
             here: narrow it with a filter, or add --yes to mean it",
        )
        .into());
    }
    let owners = view.processes.then(Owners::scan);
    let victims = diag::list(filter).map_err(fail)?;
    if victims.is_empty() {
        eprintln!("no TCP sockets match: nothing killed");
        return Ok(ExitCode::SUCCESS);
    }
    if !yes && std::io::stdin().is_terminal() {
        let mut t = PlainTable::new(view.processes);
        for v in &victims {
            t.add(v, owners.as_ref());
        }
        let mut err = std::io::stderr().lock();
        let _ = t.write(&mut err, crate::term::output().width);
        let what = match victims.len() {
            1 => "this socket".to_string(),
            n => format!("these {n} sockets"),
        };
        let _ = write!(err, "kill {what}? Each peer gets a RST. [y/N] ");
        let _ = err.flush();
        let mut answer = String::new();
        let _ = std::io::stdin().read_line(&mut answer);
        if !matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
            return Err(Failure::new(FAILURE, "nothing killed: not confirmed").into());
        }
    }
    let mut killer = Killer::open().map_err(fail)?;
    let mut killed = Vec::new();
    let mut gone = 0usize;
    for v in victims {
        match killer.kill(&v) {
            Ok(()) => killed.push((v, true)),
            Err(e) if e.io_error().and_then(std::io::Error::raw_os_error) == Some(libc::ENOENT) => {
                gone += 1;
                killed.push((v, false));
            }
            Err(e) => {
                let code = e.io_error().and_then(std::io::Error::raw_os_error);
                let advice = match code {
                    Some(libc::EPERM | libc::EACCES) => {
                        " (killing sockets needs CAP_NET_ADMIN: run as root)"
                    }
                    Some(libc::EOPNOTSUPP) => {
                        " (this kernel was built without CONFIG_INET_DIAG_DESTROY)"
                    }
                    _ => "",
                };
                let n = killed.iter().filter(|(_, k)| *k).count();
                let f = crate::exit::sock_failure(e);
                return Err(Failure::new(
                    f.code,
                    format!("{f}{advice}; {n} killed before this one"),
                )
                .into());
            }
        }
    }
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let r = if view.json {
        killed.iter().try_for_each(|(e, k)| {
            let mut j = JsonSocket::with(e, owners.as_ref());
            j.killed = Some(*k);
            serde_json::to_writer(&mut out, &j)
                .map_err(std::io::Error::from)
                .and_then(|()| out.write_all(b"\n"))
        })
    } else {
        let mut t = PlainTable::new(view.processes);
        for (e, _) in killed.iter().filter(|(_, k)| *k) {
            t.add(e, owners.as_ref());
        }
        if t.is_empty() {
            Ok(())
        } else {
            t.write(&mut out, crate::term::output().width)
        }
    };
    if let Err(e) = r.and_then(|()| out.flush()) {
        return write_failed(&e);
    }
    let n = killed.len() - gone;
    eprintln!(
        "killed {n} socket{}{}",
        if n == 1 { "" } else { "s" },
        if gone > 0 {
            format!(" ({gone} had already closed)")
        } else {
            String::new()
        }
    );
    Ok(ExitCode::SUCCESS)
}

/// `--watch D`: the listing again every D; on a terminal in place, like watch(1).
fn watch(filter: &Filter, view: View, every: Duration) -> anyhow::Result<ExitCode> {
    let terminal = std::io::stdout().is_terminal();
    let mut buf = Vec::with_capacity(64 * 1024);
    loop {
        let owners = view.processes.then(Owners::scan);
        buf.clear();
        let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
        let r = if view.json {
            // Each refresh ends with a line that says so and how many sockets it listed.
            let mut n = 0usize;
            let mut counted = Vec::with_capacity(64 * 1024);
            write_json(&mut counted, filter, owners.as_ref())?.and_then(|()| {
                n = counted.iter().filter(|&&b| b == b'\n').count();
                buf.extend_from_slice(&counted);
                serde_json::to_writer(
                    &mut buf,
                    &serde_json::json!({ "refresh": now.to_string(), "sockets": n }),
                )
                .map_err(std::io::Error::from)?;
                writeln!(buf)
            })
        } else {
            if terminal {
                buf.extend_from_slice(b"\x1b[H\x1b[2J");
            }
            let _ = writeln!(buf, "every {}: {now}", crate::util::human(every));
            write_table(&mut buf, filter, owners.as_ref(), terminal)?.and_then(|n| {
                if n == 0 {
                    writeln!(buf, "no TCP sockets match")?;
                }
                writeln!(buf)
            })
        };
        let mut out = std::io::stdout().lock();
        if let Err(e) = r
            .and_then(|()| out.write_all(&buf))
            .and_then(|()| out.flush())
        {
            return write_failed(&e);
        }
        drop(out);
        std::thread::sleep(every);
    }
}

/// One closed socket as a JSON line.
#[derive(Serialize)]
struct JsonClosed {
    time: String,
    family: &'static str,
    local: std::net::SocketAddr,
    peer: std::net::SocketAddr,
    ended: &'static str,
    retransmits: Option<u8>,
    probes: Option<u8>,
    unacked: Option<u32>,
    bytes_acked: Option<u64>,
    bytes_received: Option<u64>,
    segs_out: Option<u32>,
    segs_in: Option<u32>,
    last_data_sent_age: Option<f64>,
    last_data_recv_age: Option<f64>,
    last_ack_age: Option<f64>,
    rtt: Option<f64>,
    uid: u32,
    cookie: u64,
}

impl JsonClosed {
    fn new(c: &Closed, time: String) -> Self {
        let e = &c.entry;
        // An abort (tcp_disconnect) zeroes the counters before the kernel reports it.
        let i = e
            .info
            .as_ref()
            .filter(|_| c.ending != kaprobe_sock::destroy::Ending::Aborted);
        let age = |ms: fn(&kaprobe_sock::info::TcpInfo) -> u32| i.map(|i| f64::from(ms(i)) / 1e3);
        Self {
            time,
            family: if e.local.is_ipv4() { "ipv4" } else { "ipv6" },
            local: e.local,
            peer: e.peer,
            ended: c.ending.as_str(),
            retransmits: i.map(|i| i.retransmits),
            probes: i.map(|i| i.probes),
            unacked: i.map(|i| i.unacked),
            bytes_acked: i.map(|i| i.bytes_acked),
            bytes_received: i.map(|i| i.bytes_received),
            segs_out: i.map(|i| i.segs_out),
            segs_in: i.map(|i| i.segs_in),
            last_data_sent_age: age(|i| i.last_data_sent_ms),
            last_data_recv_age: age(|i| i.last_data_recv_ms),
            last_ack_age: age(|i| i.last_ack_recv_ms),
            rtt: i.map(|i| f64::from(i.rtt_us) / 1e6),
            uid: e.uid,
            cookie: e.cookie,
        }
    }
}

/// What a closed socket's line says after the addresses.
fn ending_text(c: &Closed) -> String {
    let mut s = String::from(match c.ending {
        kaprobe_sock::destroy::Ending::KeepaliveTimeout => "keep-alive timed out",
        kaprobe_sock::destroy::Ending::RetransmitTimeout => "retransmissions timed out",
        kaprobe_sock::destroy::Ending::Unacked => "cut off with data unacknowledged",
        kaprobe_sock::destroy::Ending::Aborted => "aborted here (RST sent)",
        kaprobe_sock::destroy::Ending::Closed => "closed",
    });
    if let Some(i) = c
        .entry
        .info
        .as_ref()
        .filter(|_| c.ending != kaprobe_sock::destroy::Ending::Aborted)
    {
        let mut idle = String::new();
        push_short(
            &mut idle,
            Duration::from_millis(u64::from(i.last_data_recv_ms.min(i.last_data_sent_ms))),
        );
        s.push_str(&format!(
            " (idle {idle}, {} B sent, {} B received",
            i.bytes_acked, i.bytes_received
        ));
        if i.probes > 0 {
            s.push_str(&format!(", {} probes unanswered", i.probes));
        }
        if i.retransmits > 0 {
            s.push_str(&format!(", {} retransmissions", i.retransmits));
        }
        s.push(')');
    }
    s
}

/// `--events`: every TCP socket the kernel destroys, as it happens.
fn events(filter: &Filter, json: bool) -> anyhow::Result<ExitCode> {
    let mut closes = Closes::subscribe().map_err(|e| {
        let denied = e
            .io_error()
            .is_some_and(|x| x.kind() == std::io::ErrorKind::PermissionDenied);
        let f = crate::exit::sock_failure(e);
        if denied {
            Failure::new(f.code, format!("{f} (needs CAP_NET_ADMIN: run as root)")).into()
        } else {
            anyhow::Error::from(f)
        }
    })?;
    eprintln!("listening for closed TCP sockets (Ctrl-C to stop)");
    loop {
        let heard = closes.next(Duration::from_secs(1)).map_err(fail)?;
        let list = match heard {
            Heard::Nothing => continue,
            Heard::Overrun => {
                eprintln!("some closes were missed: the kernel's buffer overflowed");
                continue;
            }
            Heard::Closed(v) => v,
        };
        let now = std::time::SystemTime::now();
        let mut out = std::io::stdout().lock();
        let mut r = Ok(());
        for c in list.iter().filter(|c| filter.matches_addresses(&c.entry)) {
            r = r.and_then(|()| {
                if json {
                    let time = humantime::format_rfc3339_micros(now).to_string();
                    serde_json::to_writer(&mut out, &JsonClosed::new(c, time))
                        .map_err(std::io::Error::from)
                        .and_then(|()| out.write_all(b"\n"))
                } else {
                    let time = humantime::format_rfc3339_millis(now).to_string();
                    let clock = time.get(11..23).unwrap_or(&time);
                    let line = format!(
                        "{clock} {} -> {} {}",
                        c.entry.local,
                        c.entry.peer,
                        ending_text(c)
                    );
                    writeln!(
                        out,
                        "{}",
                        crate::term::wrap_to(&line, crate::term::output().width, 4)
                    )
                }
            });
        }
        if let Err(e) = r.and_then(|()| out.flush()) {
            return write_failed(&e);
        }
    }
}

/// Columns of the table; the last (Process) only with -p.
const COLS: usize = 10;

const HEADER: [&str; COLS] = [
    "Local", "Peer", "State", "Timer", "Expires", "Probes", "Last ACK", "UID", "Inode", "Process",
];

/// On a terminal: addresses never wrap, and below 140 columns the UID and Inode columns
/// give their room to the rest.
fn fit_terminal(t: &mut comfy_table::Table, processes: bool) {
    use comfy_table::ColumnConstraint::{ContentWidth, Hidden};
    if !processes {
        if let Some(c) = t.column_mut(COLS - 1) {
            c.set_constraint(Hidden);
        }
    }
    if t.width().is_some_and(|w| w < 140) {
        for i in [7, 8] {
            if let Some(c) = t.column_mut(i) {
                c.set_constraint(Hidden);
            }
        }
    }
    for i in [0, 1] {
        if let Some(c) = t.column_mut(i) {
            c.set_constraint(ContentWidth);
        }
    }
}

/// The cells of one socket's row, written one after the other into `buf`; `ends[i]` is
/// where cell `i` ends. The Process cell (`PID/command`, comma-separated, as netstat -p
/// writes it) is empty without `owners`.
fn cells(e: &SocketEntry, owners: Option<&Owners>, buf: &mut String, ends: &mut [usize; COLS]) {
    use std::fmt::Write as _;
    buf.clear();
    let mut i = 0;
    let mut end = |buf: &String| {
        ends[i] = buf.len();
        i += 1;
    };
    // Writing into a String cannot fail.
    let _ = write!(buf, "{}", e.local);
    end(buf);
    let _ = write!(buf, "{}", e.peer);
    end(buf);
    buf.push_str(e.state_name());
    end(buf);
    buf.push_str(e.timer.as_str());
    end(buf);
    if matches!(e.timer, diag::TimerKind::None) {
        buf.push('-');
    } else {
        push_short(buf, e.expires);
    }
    end(buf);
    let _ = write!(buf, "{}", e.retrans);
    end(buf);
    match e.last_ack_age() {
        Some(d) => {
            push_short(buf, d);
            buf.push_str(" ago");
        }
        None => buf.push('-'),
    }
    end(buf);
    let _ = write!(buf, "{}", e.uid);
    end(buf);
    let _ = write!(buf, "{}", e.inode);
    end(buf);
    if let Some(o) = owners {
        for (i, o) in o.of(e.inode).iter().enumerate() {
            if i > 0 {
                buf.push(',');
            }
            let _ = write!(buf, "{}/{}", o.pid, o.command);
        }
    }
    end(buf);
}

/// Split what [`cells`] wrote into the cells.
fn split<'a>(buf: &'a str, ends: &[usize; COLS]) -> impl Iterator<Item = &'a str> + 'a {
    let ends = *ends;
    (0..COLS).map(move |i| {
        let start = if i == 0 { 0 } else { ends[i - 1] };
        buf.get(start..ends[i]).unwrap_or("")
    })
}

fn row(e: &SocketEntry, owners: Option<&Owners>) -> Vec<String> {
    let mut buf = String::new();
    let mut ends = [0; COLS];
    cells(e, owners, &mut buf, &mut ends);
    split(&buf, &ends).map(str::to_string).collect()
}

/// The table exactly as `crate::term::table()` draws it when it has no terminal width to fit
/// (same borders and padding), built while the kernel's answers stream in: every row is
/// formatted once into one shared buffer, then padded out on output. No per-cell
/// allocation, no stored socket list.
struct PlainTable {
    width: [usize; COLS],
    arena: String,
    spans: Vec<[usize; COLS]>,
    buf: String,
    processes: bool,
}

impl PlainTable {
    fn new(processes: bool) -> Self {
        Self {
            width: HEADER.map(|h| h.chars().count()),
            arena: String::with_capacity(64 * 1024),
            spans: Vec::new(),
            buf: String::with_capacity(128),
            processes,
        }
    }

    fn add(&mut self, e: &SocketEntry, owners: Option<&Owners>) {
        let mut ends = [0; COLS];
        cells(e, owners, &mut self.buf, &mut ends);
        for (w, c) in self.width.iter_mut().zip(split(&self.buf, &ends)) {
            *w = (*w).max(c.chars().count());
        }
        let base = self.arena.len();
        self.arena.push_str(&self.buf);
        self.spans.push(ends.map(|x| x + base));
    }

    fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Draw the table; beyond `max_width` columns the Inode, UID and Last ACK columns (and with
    /// -p the Probes column) are
    /// left out, in that order, until it fits.
    fn write(&self, out: &mut impl Write, max_width: usize) -> std::io::Result<()> {
        let mut shown = [true; COLS];
        shown[COLS - 1] = self.processes;
        let total = |shown: &[bool; COLS]| -> usize {
            (0..COLS)
                .filter(|&i| shown[i])
                .map(|i| self.width[i] + 3)
                .sum::<usize>()
                + 1
        };
        // With -p the Process column is worth more than the probe counter.
        let drops: &[usize] = if self.processes {
            &[8, 7, 6, 5]
        } else {
            &[8, 7, 6]
        };
        for &drop in drops {
            if total(&shown) <= max_width {
                break;
            }
            shown[drop] = false;
        }
        if total(&shown) > max_width {
            // Narrower than the six columns the timers need: one short block per socket.
            let mut start = 0;
            for ends in &self.spans {
                let mut cells: Vec<&str> = split(
                    self.arena.get(start..).unwrap_or(""),
                    &ends.map(|e| e - start),
                )
                .collect();
                if !self.processes {
                    cells.truncate(COLS - 1);
                }
                write_stacked(out, &cells, max_width)?;
                start = ends[COLS - 1];
            }
            return Ok(());
        }
        let width = self.width;
        let mut line = String::with_capacity(256);
        let mut rule = |out: &mut dyn Write, l: char, fill: char, mid: char, r: char| {
            line.clear();
            line.push(l);
            for (i, w) in width.iter().enumerate().filter(|&(i, _)| shown[i]) {
                if i > 0 {
                    line.push(mid);
                }
                line.extend(std::iter::repeat_n(fill, w + 2));
            }
            line.push(r);
            line.push('\n');
            out.write_all(line.as_bytes())
        };
        let mut row_line = String::with_capacity(256);
        let mut row = |out: &mut dyn Write, text: &str, start: usize, ends: &[usize; COLS]| {
            row_line.clear();
            row_line.push('│');
            let mut from = start;
            for (i, (&to, w)) in ends.iter().zip(width).enumerate() {
                let c = text.get(from..to).unwrap_or("");
                from = to;
                if !shown[i] {
                    continue;
                }
                if i > 0 {
                    row_line.push('┆');
                }
                row_line.push(' ');
                row_line.push_str(c);
                row_line.extend(std::iter::repeat_n(' ', w - c.chars().count() + 1));
            }
            row_line.push_str("│\n");
            out.write_all(row_line.as_bytes())
        };
        rule(out, '┌', '─', '┬', '┐')?;
        let mut header = String::new();
        let mut header_ends = [0; COLS];
        for (h, e) in HEADER.iter().zip(header_ends.iter_mut()) {
            header.push_str(h);
            *e = header.len();
        }
        row(out, &header, 0, &header_ends)?;
        rule(out, '╞', '═', '╪', '╡')?;
        let mut start = 0;
        for ends in &self.spans {
            row(out, &self.arena, start, ends)?;
            start = ends[COLS - 1];
        }
        rule(out, '└', '─', '┴', '┘')
    }
}

/// One socket as a short block, for outputs too narrow for the table: the two addresses
/// and the state on the first line, the timer and the rest indented below, wrapped to
/// `width` between values.
fn write_stacked(out: &mut impl Write, c: &[&str], width: usize) -> std::io::Result<()> {
    let get = |i: usize| c.get(i).copied().unwrap_or("-");
    let head = format!("{} -> {} {}", get(0), get(1), get(2));
    let mut details = format!("timer {}, expires {}, probes {}", get(3), get(4), get(5));
    for (i, name) in [(6, "last ACK"), (7, "uid"), (8, "inode"), (9, "process")] {
        if c.len() > i {
            details.push_str(&format!(", {name} {}", get(i)));
        }
    }
    writeln!(
        out,
        "{}\n{}",
        crate::term::wrap_to(&head, width, 4),
        crate::term::wrap_to(&format!("    {details}"), width, 0)
    )
}

/// Writing to stdout failed: a closed pipe (`| head`) is not an error worth a message.
fn write_failed(e: &std::io::Error) -> anyhow::Result<ExitCode> {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        return Ok(ExitCode::SUCCESS);
    }
    Err(Failure::new(
        FAILURE,
        format!(
            "write the socket list to stdout: {}",
            kaprobe_sock::fmt::os_error(e)
        ),
    )
    .into())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn plain_table_draws_what_comfy_table_draws_off_a_terminal() {
        let est = SocketEntry {
            local: "127.0.0.1:40000".parse().unwrap(),
            peer: "127.0.0.1:8080".parse().unwrap(),
            state: 1,
            timer: diag::TimerKind::Keepalive,
            expires: Duration::from_millis(830),
            retrans: 0,
            recv_q: 0,
            send_q: 0,
            uid: 1000,
            inode: 4242,
            cookie: 1,
            info: Some(kaprobe_sock::info::TcpInfo {
                state: 1,
                last_ack_recv_ms: 170,
                ..Default::default()
            }),
        };
        let listen = SocketEntry {
            local: "[::1]:443".parse().unwrap(),
            peer: "[::]:0".parse().unwrap(),
            state: 10,
            timer: diag::TimerKind::None,
            expires: Duration::ZERO,
            inode: 12,
            info: None,
            ..est.clone()
        };
        let entries = [est, listen];
        let mut t = crate::term::table();
        t.set_content_arrangement(comfy_table::ContentArrangement::Disabled);
        t.set_header(&HEADER[..COLS - 1]);
        for e in &entries {
            t.add_row(row(e, None).into_iter().take(COLS - 1).collect::<Vec<_>>());
        }
        let mut plain = PlainTable::new(false);
        for e in &entries {
            plain.add(e, None);
        }
        let mut out = Vec::new();
        plain.write(&mut out, usize::MAX).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), format!("{t}\n"));
        assert!(t.to_string().contains("170ms ago"), "{t}");
    }

    fn short(d: Duration) -> String {
        let mut s = String::new();
        push_short(&mut s, d);
        s
    }

    #[test]
    fn short_durations_read_naturally() {
        assert_eq!(short(Duration::ZERO), "0");
        assert_eq!(short(Duration::from_millis(830)), "830ms");
        assert_eq!(short(Duration::from_millis(1540)), "1.5s");
        assert_eq!(short(Duration::from_secs(7198)), "1h59m58s");
    }
}
