//! Broadcast fan-out load client for `bench/ws_fanout.sh`.
//!
//! Opens `--clients` WebSocket connections to one URL (spread over source addresses
//! 127.0.0.1..=127.0.0.N), reads the server's RSS before and after (memory per idle
//! connection), then a publisher connection sends `--messages` text messages paced
//! `--interval-ms` apart, each carrying its send time; every client records the delivery
//! latency of each (p50/p99). Then `--burst` messages back to back: delivered messages/s is
//! the burst's deliveries over the time from its first send to its last delivery. Prints one
//! JSON line.
//!
//! The server must broadcast every text message it receives to all connections of the URL
//! (kaprobe: `/ws?room=NAME`; the Node `ws` server in the bench script does the same).
#![allow(clippy::unwrap_used, clippy::missing_panics_doc, clippy::print_stderr)]

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::Message;

struct Args {
    url: String,
    clients: usize,
    messages: usize,
    interval: Duration,
    pid: Option<u32>,
    sources: u8,
    burst: usize,
}

fn args() -> Args {
    let mut a = Args {
        url: String::new(),
        clients: 1000,
        messages: 50,
        interval: Duration::from_millis(20),
        pid: None,
        sources: 8,
        burst: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--url" => a.url = v,
            "--clients" => a.clients = v.parse().unwrap(),
            "--messages" => a.messages = v.parse().unwrap(),
            "--interval-ms" => a.interval = Duration::from_millis(v.parse().unwrap()),
            "--pid" => a.pid = Some(v.parse().unwrap()),
            "--sources" => a.sources = v.parse().unwrap(),
            "--burst" => a.burst = v.parse().unwrap(),
            _ => panic!("unknown option {k}"),
        }
    }
    assert!(!a.url.is_empty(), "--url ws://HOST:PORT/PATH is required");
    a
}

fn rss_kib(pid: Option<u32>) -> u64 {
    let Some(pid) = pid else { return 0 };
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

async fn connect(url: &str, target: SocketAddr, source: Ipv4Addr) -> Ws {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::from((source, 0))).unwrap();
    let tcp = sock.connect(target).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    // A small read buffer: tungstenite's default (128 KiB) is prepared on every read, which
    // would make this client, not the server, the thing measured.
    let cfg = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    tokio_tungstenite::client_async_with_config(url, tcp, Some(cfg))
        .await
        .unwrap()
        .0
}

fn main() {
    let a = args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(a));
}

async fn run(a: Args) {
    let hostport = a
        .url
        .strip_prefix("ws://")
        .and_then(|r| r.split('/').next())
        .unwrap();
    let target: SocketAddr = hostport.parse().unwrap();
    let epoch = Instant::now();
    let rss0 = rss_kib(a.pid);
    let mut conns = Vec::with_capacity(a.clients);
    let t_connect = Instant::now();
    let batch = 256;
    let mut i = 0usize;
    while i < a.clients {
        let n = batch.min(a.clients - i);
        let mut fs = Vec::with_capacity(n);
        for k in 0..n {
            let src = Ipv4Addr::new(
                127,
                0,
                0,
                1 + u8::try_from((i + k) % usize::from(a.sources)).unwrap(),
            );
            fs.push(connect(&a.url, target, src));
        }
        conns.extend(futures_util::future::join_all(fs).await);
        i += n;
    }
    let connect_s = t_connect.elapsed().as_secs_f64();
    // Let the server settle, then measure memory with every connection idle.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let rss1 = rss_kib(a.pid);
    let messages = a.messages;
    let total = a.messages + a.burst;
    let done = Arc::new(tokio::sync::Semaphore::new(0));
    let mut tasks = Vec::with_capacity(conns.len());
    for mut c in conns {
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(messages);
            let mut last = Duration::ZERO;
            let mut got = 0;
            let mut burst_got = 0u64;
            while got < total {
                let m = match tokio::time::timeout(Duration::from_secs(60), c.next()).await {
                    Ok(Some(Ok(m))) => m,
                    _ => break,
                };
                if let Message::Text(t) = m {
                    let now = epoch.elapsed();
                    let mut parts = t.split(':');
                    let seq: usize = parts.next().and_then(|v| v.parse().ok()).unwrap_or(0);
                    let sent: u64 = parts.next().and_then(|v| v.parse().ok()).unwrap_or(0);
                    got += 1;
                    if seq < messages {
                        let sent = Duration::from_nanos(sent);
                        lat.push(now.saturating_sub(sent).as_micros() as u32);
                    } else {
                        burst_got += 1;
                        last = now;
                    }
                }
            }
            done.add_permits(1);
            (lat, last, burst_got, c)
        }));
    }
    let source = Ipv4Addr::new(127, 0, 0, 1);
    let mut publisher = connect(&a.url, target, source).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pad = "x".repeat(32);
    for seq in 0..a.messages {
        let now = epoch.elapsed().as_nanos();
        publisher
            .send(Message::text(format!("{seq}:{now}:{pad}")))
            .await
            .unwrap();
        if !a.interval.is_zero() {
            tokio::time::sleep(a.interval).await;
        }
    }
    // Let the paced phase drain before the burst.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let first_send = epoch.elapsed();
    for seq in a.messages..total {
        let now = epoch.elapsed().as_nanos();
        publisher
            .feed(Message::text(format!("{seq}:{now}:{pad}")))
            .await
            .unwrap();
    }
    publisher.flush().await.unwrap();
    let mut all = Vec::with_capacity(a.clients * a.messages);
    let mut last = Duration::ZERO;
    let mut burst_delivered = 0u64;
    let mut keep = Vec::with_capacity(a.clients);
    for t in tasks {
        let (lat, l, b, c) = t.await.unwrap();
        all.extend(lat);
        last = last.max(l);
        burst_delivered += b;
        keep.push(c);
    }
    all.sort_unstable();
    let pct = |p: f64| -> f64 {
        if all.is_empty() {
            return f64::NAN;
        }
        let idx = ((all.len() as f64 - 1.0) * p).round() as usize;
        f64::from(all[idx]) / 1000.0
    };
    let span = last.saturating_sub(first_send).as_secs_f64();
    let delivered = all.len() as u64 + burst_delivered;
    let v = serde_json::json!({
        "clients": a.clients,
        "messages": a.messages,
        "burst": a.burst,
        "expected": a.clients * total,
        "delivered": delivered,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "max_ms": pct(1.0),
        "msgs_per_s": if span > 0.0 { burst_delivered as f64 / span } else { 0.0 },
        "span_s": span,
        "connect_s": connect_s,
        "rss_before_kib": rss0,
        "rss_idle_kib": rss1,
        "bytes_per_idle_conn": if a.clients > 0 { (rss1.saturating_sub(rss0) * 1024) as f64 / a.clients as f64 } else { 0.0 },
    });
    println!("{v}");
    drop(keep);
    drop(publisher);
}
