//! A router that forgets idle flows, built from network namespaces: a client namespace, a
//! router namespace, and a server namespace, in a line.
//!
//! With [`Conntrack::Forget`] the router's conntrack forgets established TCP flows idle for a
//! whole number of seconds; later packets of a forgotten flow are dropped (real TCP-level
//! silence: no ACK, so retransmissions and TCP_USER_TIMEOUT behave as behind a NAT) or
//! answered with a RST. Conntrack refreshes a flow's timer on every packet it accepts, pure
//! ACKs included, so TCP keep-alive probes keep a flow alive, as they do through a NAT.
//!
//! With [`Conntrack::Default`] the router only forwards; a relay that terminates TCP in the
//! router namespace (listening on [`ROUTER_ADDR`]) does the idle work, as an L7 balancer
//! does, and [`RouterLine::drop_flows`] silences the connections it gives up on.
//!
//! Addresses: client 10.203.1.2, router 10.203.1.1 and 10.203.2.1, server 10.203.2.2; they
//! exist only inside the namespaces, which are removed (with every process left in them)
//! when the [`RouterLine`] is dropped. Needs root, `ip` (iproute2), `iptables`,
//! `iptables-restore` and `sysctl`.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::process::Command;

use crate::error::{Error, Result};

/// What the router does with a packet of a flow it has forgotten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forgotten {
    /// Drop it: nothing answers.
    Drop,
    /// Answer it with a TCP RST.
    Reset,
}

/// What the router's conntrack does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conntrack {
    /// Forget forwarded flows idle for `idle_secs` (1 or more) and treat their later packets
    /// as `forgotten` says.
    Forget {
        idle_secs: u32,
        forgotten: Forgotten,
    },
    /// Conntrack's defaults: the router forwards and forgets nothing by itself.
    Default,
}

/// The client's address inside its namespace.
pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(10, 203, 1, 2);
/// The server side's address inside its namespace.
pub const SERVER_ADDR: Ipv4Addr = Ipv4Addr::new(10, 203, 2, 2);
/// The router's address on the client's side (the client's gateway).
pub const ROUTER_ADDR: Ipv4Addr = Ipv4Addr::new(10, 203, 1, 1);

/// Three namespaces in a line; removed on drop.
#[derive(Debug)]
pub struct RouterLine {
    /// Run the client here (`ip netns exec NAME ...`).
    pub client_ns: String,
    pub router_ns: String,
    pub server_ns: String,
}

fn run(what: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| Error::io(format!("{what}: run {}", args[0]), e))?;
    if out.status.success() {
        return Ok(());
    }
    Err(Error::Parse {
        what: what.to_string(),
        detail: format!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ),
    })
}

impl RouterLine {
    /// Build the line, its router's conntrack set up as `conntrack` says. `tag` makes the
    /// names unique (the process id, say).
    ///
    /// # Errors
    /// A command that failed (not root, no iptables, ...), naming it; what was built is
    /// removed again.
    pub fn new(tag: &str, conntrack: Conntrack) -> Result<Self> {
        let line = Self {
            client_ns: format!("kpmb{tag}c"),
            router_ns: format!("kpmb{tag}r"),
            server_ns: format!("kpmb{tag}s"),
        };
        line.build(tag, conntrack)?;
        Ok(line)
    }

    fn build(&self, tag: &str, conntrack: Conntrack) -> Result<()> {
        let (c, r, s) = (&self.client_ns, &self.router_ns, &self.server_ns);
        let what = "build the router namespaces";
        for ns in [c, r, s] {
            run(what, &["ip", "netns", "add", ns])?;
            run(what, &["ip", "-n", ns, "link", "set", "lo", "up"])?;
        }
        // veth names live briefly in the host namespace: unique per tag.
        let (c0, r0, r1, s1) = (
            format!("kmc{tag}"),
            format!("kmr{tag}"),
            format!("kmq{tag}"),
            format!("kms{tag}"),
        );
        for (a, a_ns, b, b_ns) in [(&c0, c, &r0, r), (&r1, r, &s1, s)] {
            run(
                what,
                &["ip", "link", "add", a, "type", "veth", "peer", "name", b],
            )?;
            run(what, &["ip", "link", "set", a, "netns", a_ns])?;
            run(what, &["ip", "link", "set", b, "netns", b_ns])?;
            run(what, &["ip", "-n", a_ns, "link", "set", a, "up"])?;
            run(what, &["ip", "-n", b_ns, "link", "set", b, "up"])?;
        }
        // Addresses and routes, one `ip` command each.
        for cmd in [
            format!("ip -n {c} addr add 10.203.1.2/24 dev {c0}"),
            format!("ip -n {c} route add default via 10.203.1.1"),
            format!("ip -n {r} addr add 10.203.1.1/24 dev {r0}"),
            format!("ip -n {r} addr add 10.203.2.1/24 dev {r1}"),
            format!("ip -n {s} addr add 10.203.2.2/24 dev {s1}"),
            format!("ip -n {s} route add default via 10.203.2.1"),
        ] {
            run(what, &cmd.split_whitespace().collect::<Vec<_>>())?;
        }
        let exec = |args: &[&str]| -> Result<()> {
            let mut all = vec!["ip", "netns", "exec", r.as_str()];
            all.extend_from_slice(args);
            run("set up the router's conntrack", &all)
        };
        exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        let Conntrack::Forget {
            idle_secs,
            forgotten,
        } = conntrack
        else {
            return Ok(());
        };
        let idle_secs = idle_secs.max(1);
        // Packets of a flow conntrack no longer knows are INVALID once mid-stream pickup is off.
        let verdict: &[&str] = match forgotten {
            Forgotten::Drop => &["-j", "DROP"],
            Forgotten::Reset => &["-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"],
        };
        let mut rule = vec![
            "iptables",
            "-A",
            "FORWARD",
            "-m",
            "conntrack",
            "--ctstate",
            "INVALID",
        ];
        rule.extend_from_slice(verdict);
        exec(&rule)?;
        exec(&["sysctl", "-qw", "net.netfilter.nf_conntrack_tcp_loose=0"])?;
        exec(&[
            "sysctl",
            "-qw",
            &format!("net.netfilter.nf_conntrack_tcp_timeout_established={idle_secs}"),
        ])?;
        Ok(())
    }

    /// A listener on the server side (`SERVER_ADDR:port`, port 0 for a free one), made by a
    /// thread that enters the server namespace; the socket stays there, the caller does not.
    ///
    /// # Errors
    /// The namespace could not be entered or the address not bound.
    pub fn listen_on_server_side(&self, port: u16) -> Result<TcpListener> {
        listen_in(&self.server_ns, SocketAddr::from((SERVER_ADDR, port)))
    }

    /// A listener in the router namespace on its client-side address (`ROUTER_ADDR:port`):
    /// connections to it end at the router, as at an L7 balancer.
    ///
    /// # Errors
    /// The namespace could not be entered or the address not bound.
    pub fn listen_on_router(&self, port: u16) -> Result<TcpListener> {
        listen_in(&self.router_ns, SocketAddr::from((ROUTER_ADDR, port)))
    }

    /// Move the calling thread into the router namespace: the sockets it makes from then
    /// on (connections to [`SERVER_ADDR`], say) live there.
    ///
    /// # Errors
    /// The namespace could not be entered.
    pub fn enter_router(&self) -> Result<()> {
        enter(&self.router_ns)
    }

    /// Silence TCP connections that end in the router namespace, each given as (its address
    /// there, its peer's address): from now on the router's firewall drops every segment of
    /// them both ways, so nothing is acknowledged or answered. The rules stay until the line
    /// is removed.
    ///
    /// # Errors
    /// iptables-restore failed, naming it.
    pub fn drop_flows(&self, flows: &[(SocketAddr, SocketAddr)]) -> Result<()> {
        use std::fmt::Write as _;
        use std::io::Write as _;
        let mut rules = String::from("*filter\n");
        for (local, peer) in flows {
            if !local.is_ipv4() {
                continue; // the line is IPv4 only
            }
            let (l, lp, p, pp) = (local.ip(), local.port(), peer.ip(), peer.port());
            let _ = writeln!(
                rules,
                "-I INPUT -p tcp -s {p} --sport {pp} -d {l} --dport {lp} -j DROP"
            );
            let _ = writeln!(
                rules,
                "-I OUTPUT -p tcp -s {l} --sport {lp} -d {p} --dport {pp} -j DROP"
            );
        }
        rules.push_str("COMMIT\n");
        let what = "silence a connection at the router";
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.router_ns])
            .args(["iptables-restore", "-w", "--noflush"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| Error::io(format!("{what}: run iptables-restore"), e))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(rules.as_bytes())
                .map_err(|e| Error::io(format!("{what}: write to iptables-restore"), e))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| Error::io(format!("{what}: run iptables-restore"), e))?;
        if out.status.success() {
            return Ok(());
        }
        Err(Error::Parse {
            what: what.to_string(),
            detail: format!(
                "`iptables-restore --noflush` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        })
    }
}

/// Move the calling thread into the network namespace `ns` (a name under /var/run/netns).
fn enter(ns: &str) -> Result<()> {
    let path = format!("/var/run/netns/{ns}");
    let f = std::fs::File::open(&path).map_err(|e| Error::io(format!("open {path}"), e))?;
    // SAFETY: setns on a valid namespace descriptor; it changes only the calling thread.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(Error::io(
            format!("enter the network namespace {path}"),
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// A listener on `addr` in the namespace `ns`, made by a thread that enters it and ends
/// right after binding; the socket stays there, the caller does not.
fn listen_in(ns: &str, addr: SocketAddr) -> Result<TcpListener> {
    let ns = ns.to_string();
    std::thread::spawn(move || -> Result<TcpListener> {
        enter(&ns)?;
        TcpListener::bind(addr).map_err(|e| Error::io(format!("listen on {addr}"), e))
    })
    .join()
    .unwrap_or_else(|_| {
        Err(Error::Parse {
            what: "listen in a router namespace".into(),
            detail: "the thread panicked".into(),
        })
    })
}

impl Drop for RouterLine {
    fn drop(&mut self) {
        let me = libc::pid_t::try_from(std::process::id()).unwrap_or(0);
        for ns in [&self.client_ns, &self.router_ns, &self.server_ns] {
            // Whatever still runs in a namespace (a command's children) would keep it alive.
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                let pids = String::from_utf8_lossy(&out.stdout);
                for pid in pids.split_whitespace().filter_map(|p| p.parse().ok()) {
                    if pid != me {
                        // SAFETY: kill(2) on a process inside a namespace this line made.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
            }
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}
