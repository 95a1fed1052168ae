//! `kaprobe defaults`: the system keep-alive settings and what they mean.

use std::process::ExitCode;

use kaprobe_sock::defaults::SystemDefaults;
use serde_json::json;

use crate::util;

const HELP: &str =
    "Reads net.ipv4.tcp_keepalive_time, _intvl, _probes and tcp_retries2 for this network
namespace and says how long a silently dead peer goes unnoticed with them.

They apply to every socket that turns SO_KEEPALIVE on without setting its own
TCP_KEEPIDLE/TCP_KEEPINTVL/TCP_KEEPCNT. Change them with `sysctl -w`, or per socket
(see `kaprobe hold --idle/--interval/--count`). See docs/defaults.md.";

#[derive(Debug, clap::Args)]
#[command(after_long_help = HELP)]
pub struct Args {
    /// One JSON object instead of a table (durations in seconds).
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let d = SystemDefaults::read()?;
    let dead = d.dead_peer_after();
    let retrans = d.retransmit_give_up_after();
    let meaning = format!(
        "a silently dead peer is noticed after {} ({}s idle + {} probes x {}s)",
        util::human(dead),
        d.keepalive_time,
        d.keepalive_probes,
        d.keepalive_intvl
    );
    let retrans_meaning = format!(
        "with unacknowledged data, a silent peer is given up after about {} ({} retransmissions, RTO from 200ms doubling to 120s)",
        util::human(retrans),
        d.retries2
    );
    if args.json {
        crate::out::print_json_line(&json!({
            "tcp_keepalive_time": d.keepalive_time,
            "tcp_keepalive_intvl": d.keepalive_intvl,
            "tcp_keepalive_probes": d.keepalive_probes,
            "tcp_retries2": d.retries2,
            "dead_peer_after": util::secs(dead),
            "retransmit_give_up_after": util::secs(retrans),
            "meaning": meaning,
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = crate::term::table();
    t.set_header(["sysctl", "value", "meaning"]);
    t.add_row([
        "net.ipv4.tcp_keepalive_time".to_string(),
        format!("{}s", d.keepalive_time),
        "idle time before the first keep-alive probe".into(),
    ]);
    t.add_row([
        "net.ipv4.tcp_keepalive_intvl".to_string(),
        format!("{}s", d.keepalive_intvl),
        "time between unanswered probes".into(),
    ]);
    t.add_row([
        "net.ipv4.tcp_keepalive_probes".to_string(),
        d.keepalive_probes.to_string(),
        "unanswered probes before the connection is dropped (ETIMEDOUT)".into(),
    ]);
    t.add_row([
        "net.ipv4.tcp_retries2".to_string(),
        d.retries2.to_string(),
        "retransmissions of unacknowledged data before giving up".into(),
    ]);
    crate::out::print_table(t)?;
    for line in [
        format!("With SO_KEEPALIVE on and no per-socket settings, {meaning}."),
        "Keep-alive only runs on sockets that enable it; without it an idle connection to a vanished peer lives forever.".into(),
        format!("{}.", capitalize(&retrans_meaning)),
    ] {
        crate::outln!("{}", crate::term::wrap(&line, 2))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}
