//! Benchmark helper: many idle loopback connections with short keep-alive timers.
//!
//! ```text
//! ka_storm server --secs S [--port N]           # prints "port N", holds accepted sockets
//! ka_storm client --port N --conns C --secs S [--idle 1 --intvl 1 --count 5] [--drop]
//! ```
//! Clients connect to 127.0.0.1:N, send one byte, set TCP keep-alive and stay idle for S
//! seconds. `--drop` (use inside a throw-away network namespace only) then makes the server
//! side silent with `iptables -A INPUT -p tcp --dport N -j DROP`, so the probes go
//! unanswered and the kernel resets the connections: a dead-peer set.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use socket2::{SockRef, TcpKeepalive};

fn arg(args: &[String], name: &str, default: u64) -> u64 {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map_or(default, |v| v.parse().expect("numeric argument"))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let secs = Duration::from_secs(arg(&args, "--secs", 10));
    match args.get(1).map(String::as_str) {
        Some("server") => {
            let port = u16::try_from(arg(&args, "--port", 0)).unwrap();
            // A deep backlog: thousands of connects arrive at once.
            let sock =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            sock.set_reuse_address(true).unwrap();
            sock.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], port)).into())
                .unwrap();
            sock.listen(8192).unwrap();
            let l: TcpListener = sock.into();
            println!("port {}", l.local_addr().unwrap().port());
            std::io::stdout().flush().unwrap();
            l.set_nonblocking(true).unwrap();
            let start = Instant::now();
            let mut held = Vec::new();
            while start.elapsed() < secs {
                match l.accept() {
                    Ok((s, _)) => held.push(s),
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            eprintln!("server held {} connections", held.len());
        }
        Some("client") => {
            let port = u16::try_from(arg(&args, "--port", 0)).unwrap();
            let conns = arg(&args, "--conns", 100);
            let ka = TcpKeepalive::new()
                .with_time(Duration::from_secs(arg(&args, "--idle", 1)))
                .with_interval(Duration::from_secs(arg(&args, "--intvl", 1)))
                .with_retries(u32::try_from(arg(&args, "--count", 5)).unwrap());
            let start = Instant::now();
            let mut held = Vec::new();
            for _ in 0..conns {
                let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
                SockRef::from(&s).set_tcp_keepalive(&ka).unwrap();
                s.write_all(b"x").unwrap();
                held.push(s);
            }
            eprintln!("{conns} connections up in {:?}", start.elapsed());
            if args.iter().any(|a| a == "--drop") {
                let ok = std::process::Command::new("iptables")
                    .args([
                        "-A",
                        "INPUT",
                        "-p",
                        "tcp",
                        "--dport",
                        &port.to_string(),
                        "-j",
                        "DROP",
                    ])
                    .status()
                    .unwrap()
                    .success();
                assert!(ok, "iptables failed");
            }
            std::thread::sleep(secs.saturating_sub(start.elapsed()));
            let mut dead = 0;
            for s in &mut held {
                s.set_nonblocking(true).unwrap();
                let mut b = [0u8; 1];
                if let Err(e) = s.read(&mut b) {
                    if e.raw_os_error() == Some(110) {
                        dead += 1;
                    }
                }
            }
            eprintln!("{dead} connections timed out (ETIMEDOUT)");
        }
        _ => eprintln!("usage: ka_storm server|client ..."),
    }
}
