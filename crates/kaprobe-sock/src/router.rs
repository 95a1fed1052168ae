//! A router that forgets idle flows, built from network namespaces: a client namespace, a
//! router namespace whose conntrack forgets established TCP flows idle for a whole number of
//! seconds, and a server namespace, in a line. Packets of a forgotten flow are dropped (real
//! TCP-level silence: no ACK, so retransmissions and TCP_USER_TIMEOUT behave as behind a
//! NAT) or answered with a RST. TCP keep-alive probes are packets like any other: they keep
//! a flow alive, as they do through a NAT.
//!
//! Addresses: client 10.203.1.2, router 10.203.1.1 and 10.203.2.1, server 10.203.2.2; they
//! exist only inside the namespaces, which are removed when the [`RouterLine`] is dropped.
//! Needs root, `ip` (iproute2), `iptables` and `sysctl`.

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

/// The client's address inside its namespace.
pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(10, 203, 1, 2);
/// The server side's address inside its namespace.
pub const SERVER_ADDR: Ipv4Addr = Ipv4Addr::new(10, 203, 2, 2);

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
    /// Build the line; the router forgets established flows idle for `idle_secs` (1 or
    /// more) and treats their later packets as `forgotten` says. `tag` makes the names
    /// unique (the process id, say).
    ///
    /// # Errors
    /// A command that failed (not root, no iptables, ...), naming it; what was built is
    /// removed again.
    pub fn new(tag: &str, idle_secs: u32, forgotten: Forgotten) -> Result<Self> {
        let line = Self {
            client_ns: format!("kpmb{tag}c"),
            router_ns: format!("kpmb{tag}r"),
            server_ns: format!("kpmb{tag}s"),
        };
        line.build(tag, idle_secs.max(1), forgotten)?;
        Ok(line)
    }

    fn build(&self, tag: &str, idle_secs: u32, forgotten: Forgotten) -> Result<()> {
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
        let path = format!("/var/run/netns/{}", self.server_ns);
        std::thread::spawn(move || -> Result<TcpListener> {
            let ns =
                std::fs::File::open(&path).map_err(|e| Error::io(format!("open {path}"), e))?;
            // SAFETY: setns on a valid namespace descriptor; it changes only this thread,
            // which ends right after binding.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(Error::io(
                    format!("enter the network namespace {path}"),
                    io::Error::last_os_error(),
                ));
            }
            let addr = SocketAddr::from((SERVER_ADDR, port));
            TcpListener::bind(addr).map_err(|e| Error::io(format!("listen on {addr}"), e))
        })
        .join()
        .unwrap_or_else(|_| {
            Err(Error::Parse {
                what: "listen in the server namespace".into(),
                detail: "the thread panicked".into(),
            })
        })
    }
}

impl Drop for RouterLine {
    fn drop(&mut self) {
        for ns in [&self.client_ns, &self.router_ns, &self.server_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}
