//! `kaprobe sockets`: live TCP sockets (IPv4 and IPv6) with their timers, like `ss -tno`,
//! read through the sock_diag netlink interface. No root needed.

use std::io::{BufWriter, IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use kaprobe_sock::diag::{self, Filter, SocketEntry, States};
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
}

impl JsonSocket {
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
    let filter = Filter {
        port,
        states,
        ..Filter::default()
    };
    let fail = |e: kaprobe_sock::Error| -> anyhow::Error { crate::exit::sock_failure(e).into() };

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
        let r = if std::io::stdout().is_terminal() {
            // Width-aware (wraps to the terminal); a terminal is slower than any table.
            let mut t = crate::term::table();
            t.set_header(HEADER);
            diag::visit(&filter, |e| {
                t.add_row(row(&e));
            })
            .map_err(fail)?;
            if t.row_count() == 0 {
                eprintln!("no TCP sockets match");
                return Ok(ExitCode::SUCCESS);
            }
            fit_terminal(&mut t);
            let width = crate::term::output().width;
            let drawn = t.to_string();
            if drawn.lines().any(|l| l.chars().count() > width) {
                // Too narrow for the columns: one short block per socket.
                let mut r = Ok(());
                for row in t.row_iter() {
                    let c: Vec<String> = row.cell_iter().map(comfy_table::Cell::content).collect();
                    let c: Vec<&str> = c.iter().map(String::as_str).collect();
                    r = r.and_then(|()| write_stacked(&mut out, &c, width));
                }
                r
            } else {
                writeln!(out, "{drawn}")
            }
        } else {
            // Piped or redirected: the same table, drawn without comfy-table's per-cell
            // allocations (it costs ~10 us a row, too slow for tens of thousands of sockets).
            let mut t = PlainTable::new();
            diag::visit(&filter, |e| t.add(&e)).map_err(fail)?;
            if t.is_empty() {
                eprintln!("no TCP sockets match");
                return Ok(ExitCode::SUCCESS);
            }
            t.write(&mut out, crate::term::output().width)
        };
        if let Err(e) = r {
            return write_failed(&e);
        }
    }
    if let Err(e) = out.flush() {
        return write_failed(&e);
    }
    Ok(ExitCode::SUCCESS)
}

const HEADER: [&str; 9] = [
    "Local", "Peer", "State", "Timer", "Expires", "Probes", "Last ACK", "UID", "Inode",
];

/// On a terminal: addresses never wrap, and below 140 columns the UID and Inode columns
/// give their room to the rest.
fn fit_terminal(t: &mut comfy_table::Table) {
    use comfy_table::ColumnConstraint::{ContentWidth, Hidden};
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

/// The nine cells of one socket's row, written one after the other into `buf`; `ends[i]`
/// is where cell `i` ends.
fn cells(e: &SocketEntry, buf: &mut String, ends: &mut [usize; 9]) {
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
}

/// Split what [`cells`] wrote into the cells.
fn split<'a>(buf: &'a str, ends: &[usize; 9]) -> impl Iterator<Item = &'a str> + 'a {
    let ends = *ends;
    (0..9).map(move |i| {
        let start = if i == 0 { 0 } else { ends[i - 1] };
        buf.get(start..ends[i]).unwrap_or("")
    })
}

fn row(e: &SocketEntry) -> Vec<String> {
    let mut buf = String::new();
    let mut ends = [0; 9];
    cells(e, &mut buf, &mut ends);
    split(&buf, &ends).map(str::to_string).collect()
}

/// The table exactly as `crate::term::table()` draws it when it has no terminal width to fit
/// (same borders and padding), built while the kernel's answers stream in: every row is
/// formatted once into one shared buffer, then padded out on output. No per-cell
/// allocation, no stored socket list.
struct PlainTable {
    width: [usize; 9],
    arena: String,
    spans: Vec<[usize; 9]>,
    buf: String,
}

impl PlainTable {
    fn new() -> Self {
        Self {
            width: HEADER.map(|h| h.chars().count()),
            arena: String::with_capacity(64 * 1024),
            spans: Vec::new(),
            buf: String::with_capacity(128),
        }
    }

    fn add(&mut self, e: &SocketEntry) {
        let mut ends = [0; 9];
        cells(e, &mut self.buf, &mut ends);
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

    /// Draw the table; beyond `max_width` columns the Inode, UID and Last ACK columns are
    /// left out, in that order, until it fits.
    fn write(&self, out: &mut impl Write, max_width: usize) -> std::io::Result<()> {
        let mut shown = [true; 9];
        let total = |shown: &[bool; 9]| -> usize {
            (0..9)
                .filter(|&i| shown[i])
                .map(|i| self.width[i] + 3)
                .sum::<usize>()
                + 1
        };
        for drop in [8, 7, 6] {
            if total(&shown) <= max_width {
                break;
            }
            shown[drop] = false;
        }
        if total(&shown) > max_width {
            // Narrower than the six columns the timers need: one short block per socket.
            let mut start = 0;
            for ends in &self.spans {
                let cells: Vec<&str> = split(
                    self.arena.get(start..).unwrap_or(""),
                    &ends.map(|e| e - start),
                )
                .collect();
                write_stacked(out, &cells, max_width)?;
                start = ends[8];
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
        let mut row = |out: &mut dyn Write, text: &str, start: usize, ends: &[usize; 9]| {
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
        let mut header_ends = [0; 9];
        for (h, e) in HEADER.iter().zip(header_ends.iter_mut()) {
            header.push_str(h);
            *e = header.len();
        }
        row(out, &header, 0, &header_ends)?;
        rule(out, '╞', '═', '╪', '╡')?;
        let mut start = 0;
        for ends in &self.spans {
            row(out, &self.arena, start, ends)?;
            start = ends[8];
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
    for (i, name) in [(6, "last ACK"), (7, "uid"), (8, "inode")] {
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
        t.set_header(HEADER);
        for e in &entries {
            t.add_row(row(e));
        }
        let mut plain = PlainTable::new();
        for e in &entries {
            plain.add(e);
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
