//! A TCP relay with an idle timer per connection, standing in for a NAT gateway or a load
//! balancer that forgets idle flows: clients connect to it, it connects to the upstream, and
//! when no payload byte has crossed a connection in either direction for `idle`, it does what
//! the middlebox being imitated does (close with FIN, reset, go silent, or reset the next
//! segment). Optional latency per direction puts a real flight time between the two ends,
//! which is where the proxy reuse race lives.
//!
//! Without latency the bytes move by splice(2) (the `splice` module); with it they wait in
//! a queue per direction. A [`Silencer`] lets `silent` be silent at the TCP level where the
//! network below the relay can drop segments (router mode's firewall).
//!
//! Each connection's fate is reported once, as a [`Fate`], and counted in [`Stats`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

mod splice;

/// What the middlebox does to a connection idle for `idle`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnIdle {
    /// Close both sides with FIN.
    Fin,
    /// Reset both sides.
    Rst,
    /// Stop relaying both ways and never answer again (the kernel still ACKs at the TCP
    /// level: a real drop needs router mode).
    Silent,
    /// Nothing while idle; the next segment from either side is answered with a RST.
    RstOnNext,
}

impl OnIdle {
    /// The name used on the command line and in logs.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fin => "fin",
            Self::Rst => "rst",
            Self::Silent => "silent",
            Self::RstOnNext => "rst-on-next",
        }
    }

    /// Parse a command-line name.
    ///
    /// # Errors
    /// A sentence naming the value and the accepted ones.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "fin" => Ok(Self::Fin),
            "rst" => Ok(Self::Rst),
            "silent" => Ok(Self::Silent),
            "rst-on-next" => Ok(Self::RstOnNext),
            _ => Err(format!(
                "'{s}' is not an idle action: use fin, rst, silent or rst-on-next"
            )),
        }
    }
}

/// A middlebox of a known kind: its idle timeout and what it does at expiry, from the
/// provider's documentation (sources in docs/middlebox.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preset {
    pub name: &'static str,
    pub idle: Duration,
    pub on_idle: OnIdle,
    pub what: &'static str,
}

/// The presets `--like` knows.
pub const PRESETS: &[Preset] = &[
    Preset {
        name: "aws-alb",
        idle: Duration::from_secs(60),
        on_idle: OnIdle::Fin,
        what: "AWS Application Load Balancer: connection idle timeout 60s (default), then it closes the connection",
    },
    Preset {
        name: "aws-nlb",
        idle: Duration::from_secs(350),
        on_idle: OnIdle::RstOnNext,
        what: "AWS Network Load Balancer: TCP idle timeout 350s (default); data sent after it gets a RST",
    },
    Preset {
        name: "aws-nat-gateway",
        idle: Duration::from_secs(350),
        on_idle: OnIdle::RstOnNext,
        what: "AWS NAT gateway: idle timeout 350s; packets of a timed-out connection get a RST, no FIN is sent",
    },
    Preset {
        name: "azure-lb",
        idle: Duration::from_secs(240),
        on_idle: OnIdle::Silent,
        what: "Azure Load Balancer: TCP idle timeout 4 minutes (default), flow dropped silently",
    },
    Preset {
        name: "azure-lb-reset",
        idle: Duration::from_secs(240),
        on_idle: OnIdle::Rst,
        what: "Azure Load Balancer with TCP reset on idle: RST to both ends at the 4-minute idle timeout",
    },
    Preset {
        name: "gcp-lb",
        idle: Duration::from_secs(600),
        on_idle: OnIdle::Fin,
        what: "Google Cloud Application Load Balancer: keep-alive to the backends closed after 600s idle",
    },
];

/// The preset called `name`.
///
/// # Errors
/// A sentence naming the value and the known presets.
pub fn preset(name: &str) -> Result<Preset, String> {
    PRESETS
        .iter()
        .find(|p| p.name.eq_ignore_ascii_case(name.trim()))
        .copied()
        .ok_or_else(|| {
            let names: Vec<&str> = PRESETS.iter().map(|p| p.name).collect();
            format!(
                "'{name}' is not a known middlebox: use one of {}",
                names.join(", ")
            )
        })
}

/// How a relayed connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Ending {
    /// The idle timer expired: both sides closed with FIN.
    IdleFin,
    /// The idle timer expired: both sides reset.
    IdleRst,
    /// The idle timer expired: the relay went silent (until both ends gave up).
    IdleSilent,
    /// The idle timer had expired; the next segment was answered with a RST.
    RstOnNext,
    /// The client closed (FIN), the upstream followed.
    ClientFin,
    /// The upstream closed (FIN), the client followed.
    UpstreamFin,
    /// The client reset the connection; the upstream was reset.
    ClientRst,
    /// The upstream reset the connection; the client was reset.
    UpstreamRst,
    /// The upstream could not be reached; the client was reset.
    UpstreamUnreachable,
    /// The middlebox stopped.
    Shutdown,
}

impl Ending {
    /// The name in logs and metrics.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::IdleFin => "idle_fin",
            Self::IdleRst => "idle_rst",
            Self::IdleSilent => "idle_silent",
            Self::RstOnNext => "rst_on_next",
            Self::ClientFin => "client_fin",
            Self::UpstreamFin => "upstream_fin",
            Self::ClientRst => "client_rst",
            Self::UpstreamRst => "upstream_rst",
            Self::UpstreamUnreachable => "upstream_unreachable",
            Self::Shutdown => "shutdown",
        }
    }

    /// Every ending, in the order metrics list them.
    pub const ALL: [Ending; 10] = [
        Self::IdleFin,
        Self::IdleRst,
        Self::IdleSilent,
        Self::RstOnNext,
        Self::ClientFin,
        Self::UpstreamFin,
        Self::ClientRst,
        Self::UpstreamRst,
        Self::UpstreamUnreachable,
        Self::Shutdown,
    ];
}

/// One connection's fate, reported when it ends.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fate {
    pub client: SocketAddr,
    /// The upstream address connected to (`None` when it could not be reached).
    pub upstream: Option<SocketAddr>,
    pub ending: Ending,
    /// Seconds from accept to the end.
    pub lifetime: f64,
    /// Seconds without payload in either direction before the end began.
    pub idle: f64,
    /// Payload bytes client -> upstream and upstream -> client.
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// What went wrong: why the upstream was unreachable, or why `silent` could not
    /// silence the connection at the TCP level.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct Stats {
    pub accepted: AtomicU64,
    pub open: AtomicU64,
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
    endings: [AtomicU64; 10],
}

impl Stats {
    /// Connections that ended with `e`.
    pub fn ended(&self, e: Ending) -> u64 {
        let i = Ending::ALL.iter().position(|x| *x == e).unwrap_or(0);
        self.endings[i].load(Ordering::Relaxed)
    }

    fn count(&self, e: Ending) {
        if let Some(i) = Ending::ALL.iter().position(|x| *x == e) {
            self.endings[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The counters in the Prometheus text format.
    #[must_use]
    pub fn prometheus(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# HELP kaprobe_middlebox_connections_total Connections accepted.\n\
             # TYPE kaprobe_middlebox_connections_total counter\n\
             kaprobe_middlebox_connections_total {}",
            self.accepted.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            s,
            "# HELP kaprobe_middlebox_open_connections Connections relayed now.\n\
             # TYPE kaprobe_middlebox_open_connections gauge\n\
             kaprobe_middlebox_open_connections {}",
            self.open.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            s,
            "# HELP kaprobe_middlebox_closed_total Connections ended, by how they ended.\n\
             # TYPE kaprobe_middlebox_closed_total counter"
        );
        for e in Ending::ALL {
            let _ = writeln!(
                s,
                "kaprobe_middlebox_closed_total{{ending=\"{}\"}} {}",
                e.as_str(),
                self.ended(e)
            );
        }
        let _ = writeln!(
            s,
            "# HELP kaprobe_middlebox_bytes_total Payload bytes relayed, by direction.\n\
             # TYPE kaprobe_middlebox_bytes_total counter\n\
             kaprobe_middlebox_bytes_total{{direction=\"up\"}} {}\n\
             kaprobe_middlebox_bytes_total{{direction=\"down\"}} {}",
            self.bytes_up.load(Ordering::Relaxed),
            self.bytes_down.load(Ordering::Relaxed)
        );
        s
    }
}

/// A connection as (its address on the relay's side, its peer's address).
pub type Flow = (SocketAddr, SocketAddr);

/// What a [`Silencer`] calls: silence these flows, or say why not.
pub type SilenceFn = dyn Fn(&[Flow]) -> Result<(), String> + Send + Sync;

/// Makes TCP connections silent below the relay: given each connection as a [`Flow`], it
/// has the network drop their segments both ways (a firewall rule, say). The relay then
/// discards its own sockets without a word.
#[derive(Clone)]
pub struct Silencer(pub Arc<SilenceFn>);

impl std::fmt::Debug for Silencer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Silencer")
    }
}

/// What the relay does.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to connect for each client (tried in order).
    pub upstream: Vec<SocketAddr>,
    pub idle: Duration,
    pub on_idle: OnIdle,
    /// Added to each direction's delivery.
    pub latency: Duration,
    /// Up to this much more, drawn per chunk (delivery order is kept).
    pub jitter: Duration,
    pub connect_timeout: Duration,
    /// For `silent`: how to silence both connections at the TCP level. Without one, the
    /// relay reads and drops what either end sends, and its kernel still acknowledges it.
    pub silencer: Option<Silencer>,
}

/// Accepted ranges, checked by [`Config::validate`].
pub const IDLE_RANGE: (Duration, Duration) =
    (Duration::from_millis(10), Duration::from_secs(86_400));
pub const LATENCY_MAX: Duration = Duration::from_secs(10);

impl Config {
    /// Check every value against its range.
    ///
    /// # Errors
    /// A sentence naming the flag, the value and the range.
    pub fn validate(&self) -> Result<(), String> {
        use kaprobe_sock::fmt::duration as d;
        if self.idle < IDLE_RANGE.0 || self.idle > IDLE_RANGE.1 {
            return Err(format!(
                "--idle {} is out of range: use {}..={}",
                d(self.idle),
                d(IDLE_RANGE.0),
                d(IDLE_RANGE.1)
            ));
        }
        for (flag, v) in [("--latency", self.latency), ("--jitter", self.jitter)] {
            if v > LATENCY_MAX {
                return Err(format!(
                    "{flag} {} is out of range: use 0s..={}",
                    d(v),
                    d(LATENCY_MAX)
                ));
            }
        }
        if self.upstream.is_empty() {
            return Err("--upstream resolved to no address".into());
        }
        Ok(())
    }
}

/// Relay every connection `listener` accepts until `stop` is set; `on_fate` hears of each
/// connection's end. Returns when the listener has stopped and every connection has ended.
pub async fn run(
    listener: TcpListener,
    cfg: Arc<Config>,
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
    on_fate: impl Fn(&Fate) + Send + Sync + 'static,
) {
    let on_fate = Arc::new(on_fate);
    // Wakes every connection when the middlebox stops, whatever it is waiting for.
    let (shutdown_tx, shutdown) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64 ^ u64::from(std::process::id());
    loop {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let accepted = tokio::time::timeout(Duration::from_millis(100), listener.accept()).await;
        let Ok(Ok((client, peer))) = accepted else {
            // Reap finished connections while waiting.
            while tasks.try_join_next().is_some() {}
            continue;
        };
        let _ = client.set_nodelay(true);
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        stats.open.fetch_add(1, Ordering::Relaxed);
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let (cfg, stats, on_fate, shutdown) = (
            Arc::clone(&cfg),
            Arc::clone(&stats),
            Arc::clone(&on_fate),
            shutdown.clone(),
        );
        let fut = async move {
            let fate = relay(client, peer, &cfg, &stats, shutdown, seed).await;
            stats.count(fate.ending);
            stats.open.fetch_sub(1, Ordering::Relaxed);
            on_fate(&fate);
        };
        tasks.spawn(fut);
    }
    let _ = shutdown_tx.send(true);
    while tasks.join_next().await.is_some() {}
}

/// Reset a connection: SO_LINGER 0, then close.
fn reset(s: TcpStream) {
    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
    drop(s);
}

async fn connect(cfg: &Config) -> Result<TcpStream, String> {
    let mut last = String::from("no address");
    for a in &cfg.upstream {
        match tokio::time::timeout(cfg.connect_timeout, TcpStream::connect(a)).await {
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(e)) => last = format!("connect to {a}: {}", kaprobe_sock::fmt::os_error(&e)),
            Err(_) => {
                last = format!(
                    "connect to {a}: no answer within {}",
                    kaprobe_sock::fmt::duration(cfg.connect_timeout)
                );
            }
        }
    }
    Err(last)
}

/// Bytes waiting for their delivery time, in order.
#[derive(Default)]
struct Lane {
    queue: std::collections::VecDeque<(Instant, Option<Vec<u8>>)>,
    queued: usize,
    /// The FIN has been passed on: nothing more goes this way.
    done: bool,
}

/// Read no more from a side while this much waits to be delivered to the other.
const QUEUE_LIMIT: usize = 1 << 20;
const BUF: usize = 64 * 1024;

struct Jitter(u64);

impl Jitter {
    fn next(&mut self, max: Duration) -> Duration {
        if max.is_zero() {
            return Duration::ZERO;
        }
        // xorshift64: spread, not secrecy.
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        let nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(self.0 % nanos.max(1))
    }
}

/// Direction indexes: client to upstream, upstream to client.
const UP: usize = 0;
const DOWN: usize = 1;

/// One relayed connection's state between events.
struct Relay<'a> {
    cfg: &'a Config,
    stats: &'a Stats,
    fate: Fate,
    jitter: Jitter,
    /// The latest payload byte, either way: the idle timer runs from here.
    last: Instant,
    /// The idle timer ran out (`rst-on-next` waits for the next segment).
    expired: bool,
    /// Each direction's sender has closed (FIN).
    eof: [bool; 2],
    /// Which end closed first (set at the first FIN).
    first_fin_from_client: bool,
}

impl Relay<'_> {
    /// A read on direction `dir` (its chunk, empty at FIN, or its error), queued in `lane`
    /// for delivery; `Some` ends the connection.
    fn on_read(
        &mut self,
        dir: usize,
        r: std::io::Result<Vec<u8>>,
        lane: &mut Lane,
    ) -> Option<Ending> {
        let reader_reset = if dir == UP {
            Ending::ClientRst
        } else {
            Ending::UpstreamRst
        };
        let Ok(chunk) = r else {
            return Some(reader_reset);
        };
        if self.expired && self.cfg.on_idle == OnIdle::RstOnNext {
            self.fate.idle = (Instant::now() - self.last).as_secs_f64();
            return Some(Ending::RstOnNext);
        }
        if chunk.is_empty() {
            if !self.eof[1 - dir] {
                self.first_fin_from_client = dir == UP;
            }
            self.eof[dir] = true;
            lane.queue
                .push_back((deliver_at(lane, self.cfg, &mut self.jitter), None));
            return None;
        }
        self.last = Instant::now();
        let n = chunk.len() as u64;
        let (mine, total) = if dir == UP {
            (&mut self.fate.bytes_up, &self.stats.bytes_up)
        } else {
            (&mut self.fate.bytes_down, &self.stats.bytes_down)
        };
        *mine += n;
        total.fetch_add(n, Ordering::Relaxed);
        let at = deliver_at(lane, self.cfg, &mut self.jitter);
        lane.queued += chunk.len();
        lane.queue.push_back((at, Some(chunk)));
        None
    }

    /// The idle timer ran out: what `--on-idle` says, unless bytes are still in flight.
    fn on_idle(&mut self, up: &Lane, down: &Lane) -> Option<Ending> {
        if !up.queue.is_empty() || !down.queue.is_empty() {
            // Data still in flight counts as activity.
            self.last = Instant::now();
            return None;
        }
        self.fate.idle = (Instant::now() - self.last).as_secs_f64();
        match self.cfg.on_idle {
            OnIdle::Fin => Some(Ending::IdleFin),
            OnIdle::Rst => Some(Ending::IdleRst),
            OnIdle::Silent => Some(Ending::IdleSilent),
            OnIdle::RstOnNext => {
                self.expired = true;
                None
            }
        }
    }
}

/// Deliver the next queued chunk (or FIN) of `lane` through `w`; a failed write ends the
/// connection with `reset`.
async fn deliver(
    lane: &mut Lane,
    w: &mut tokio::net::tcp::WriteHalf<'_>,
    reset: Ending,
) -> Option<Ending> {
    match lane.queue.pop_front()? {
        (_, Some(b)) => {
            lane.queued -= b.len();
            w.write_all(&b).await.is_err().then_some(reset)
        }
        (_, None) => {
            let _ = w.shutdown().await;
            lane.done = true;
            None
        }
    }
}

async fn relay(
    client: TcpStream,
    peer: SocketAddr,
    cfg: &Config,
    stats: &Stats,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    seed: u64,
) -> Fate {
    let start = Instant::now();
    let mut fate = Fate {
        client: peer,
        upstream: None,
        ending: Ending::Shutdown,
        lifetime: 0.0,
        idle: 0.0,
        bytes_up: 0,
        bytes_down: 0,
        error: None,
    };
    let upstream = match connect(cfg).await {
        Ok(u) => u,
        Err(e) => {
            reset(client);
            fate.ending = Ending::UpstreamUnreachable;
            fate.error = Some(e);
            fate.lifetime = start.elapsed().as_secs_f64();
            return fate;
        }
    };
    let _ = upstream.set_nodelay(true);
    fate.upstream = upstream.peer_addr().ok();
    let (mut client, mut upstream) = (client, upstream);
    let (ending, fate, last) = if cfg.latency.is_zero() && cfg.jitter.is_zero() {
        let s = splice::relay(&client, &upstream, cfg, stats, &mut shutdown).await;
        fate.bytes_up = s.bytes_up;
        fate.bytes_down = s.bytes_down;
        fate.idle = (Instant::now() - s.last).as_secs_f64();
        if s.error.is_some() {
            fate.error = s.error;
        }
        (s.ending, fate, s.last)
    } else {
        // Boxed: an idle connection without latency keeps only the spliced relay's state.
        Box::pin(delayed(
            &mut client,
            &mut upstream,
            cfg,
            stats,
            fate,
            &mut shutdown,
            seed,
        ))
        .await
    };
    // Boxed too: it runs once, at the end, and need not make every idle connection larger.
    Box::pin(finish(
        client, upstream, cfg, ending, fate, last, start, shutdown,
    ))
    .await
}

/// The relay with latency: chunks wait in a lane until their delivery time.
async fn delayed(
    client: &mut TcpStream,
    upstream: &mut TcpStream,
    cfg: &Config,
    stats: &Stats,
    fate: Fate,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
    seed: u64,
) -> (Ending, Fate, Instant) {
    let mut st = Relay {
        cfg,
        stats,
        fate,
        jitter: Jitter(seed | 1),
        last: Instant::now(),
        expired: false,
        eof: [false; 2],
        first_fin_from_client: true,
    };
    let mut up = Lane::default(); // client -> upstream
    let mut down = Lane::default(); // upstream -> client
    let ending = loop {
        if *shutdown.borrow() {
            break Ending::Shutdown;
        }
        if up.done && down.done {
            break if st.first_fin_from_client {
                Ending::ClientFin
            } else {
                Ending::UpstreamFin
            };
        }
        let deadline = st.last + cfg.idle;
        let next_up = up.queue.front().map(|(t, _)| *t);
        let next_down = down.queue.front().map(|(t, _)| *t);
        let (cr, mut cw) = client.split();
        let (ur, mut uw) = upstream.split();
        let step = tokio::select! {
            _ = shutdown.changed() => Some(Ending::Shutdown),
            r = read_chunk(&cr), if !st.eof[UP] && up.queued < QUEUE_LIMIT => {
                st.on_read(UP, r, &mut up)
            }
            r = read_chunk(&ur), if !st.eof[DOWN] && down.queued < QUEUE_LIMIT => {
                st.on_read(DOWN, r, &mut down)
            }
            () = sleep_until(next_up), if next_up.is_some() => {
                deliver(&mut up, &mut uw, Ending::UpstreamRst).await
            }
            () = sleep_until(next_down), if next_down.is_some() => {
                deliver(&mut down, &mut cw, Ending::ClientRst).await
            }
            () = tokio::time::sleep_until(deadline), if !st.expired => st.on_idle(&up, &down),
        };
        if let Some(e) = step {
            break e;
        }
    };
    (ending, st.fate, st.last)
}

/// End both connections as `ending` says and complete the fate.
#[allow(clippy::too_many_arguments)]
async fn finish(
    mut client: TcpStream,
    mut upstream: TcpStream,
    cfg: &Config,
    ending: Ending,
    mut fate: Fate,
    last: Instant,
    start: Instant,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Fate {
    fate.ending = ending;
    if !matches!(
        ending,
        Ending::RstOnNext | Ending::IdleFin | Ending::IdleRst | Ending::IdleSilent
    ) {
        fate.idle = (Instant::now() - last).as_secs_f64();
    }
    match ending {
        Ending::IdleFin | Ending::Shutdown | Ending::ClientFin | Ending::UpstreamFin => {
            let _ = client.shutdown().await;
            let _ = upstream.shutdown().await;
        }
        Ending::IdleRst | Ending::RstOnNext | Ending::ClientRst | Ending::UpstreamRst => {
            reset(client);
            reset(upstream);
            fate.lifetime = start.elapsed().as_secs_f64();
            return fate;
        }
        Ending::IdleSilent => {
            fate.lifetime = start.elapsed().as_secs_f64();
            if let Some(silencer) = &cfg.silencer {
                let flows: Vec<Flow> = [&client, &upstream]
                    .iter()
                    .filter_map(|s| Some((s.local_addr().ok()?, s.peer_addr().ok()?)))
                    .collect();
                let silencer = silencer.clone();
                let done = tokio::task::spawn_blocking(move || (silencer.0)(&flows)).await;
                match done {
                    Ok(Ok(())) => {
                        // The network drops whatever these sockets would still send (their
                        // RST included): let them go.
                        reset(client);
                        reset(upstream);
                        return fate;
                    }
                    Ok(Err(e)) => fate.error = Some(e),
                    Err(e) => fate.error = Some(e.to_string()),
                }
            }
            go_silent(client, upstream, shutdown).await;
            return fate;
        }
        Ending::UpstreamUnreachable => {}
    }
    fate.lifetime = start.elapsed().as_secs_f64();
    fate
}

fn deliver_at(lane: &Lane, cfg: &Config, jitter: &mut Jitter) -> Instant {
    let at = Instant::now() + cfg.latency + jitter.next(cfg.jitter);
    // Never before what is already queued: the byte stream keeps its order.
    lane.queue.back().map_or(at, |(t, _)| at.max(*t))
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// The next chunk a side sent (empty at its FIN). The buffer is taken only once the socket
/// is readable, so an idle connection holds no buffer at all.
async fn read_chunk(r: &tokio::net::tcp::ReadHalf<'_>) -> std::io::Result<Vec<u8>> {
    loop {
        r.as_ref().readable().await?;
        let mut chunk = Vec::with_capacity(BUF);
        match r.as_ref().try_read_buf(&mut chunk) {
            Ok(_) => return Ok(chunk),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

/// Relay nothing more: read and drop whatever either end sends (the kernel still ACKs it)
/// until both ends have closed or the middlebox stops.
async fn go_silent(
    mut client: TcpStream,
    mut upstream: TcpStream,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let (mut c_open, mut u_open) = (true, true);
    while (c_open || u_open) && !*shutdown.borrow() {
        let (cr, _) = client.split();
        let (ur, _) = upstream.split();
        tokio::select! {
            r = read_chunk(&cr), if c_open => {
                if !matches!(r, Ok(c) if !c.is_empty()) { c_open = false; }
            }
            r = read_chunk(&ur), if u_open => {
                if !matches!(r, Ok(c) if !c.is_empty()) { u_open = false; }
            }
            _ = shutdown.changed() => break,
        }
    }
    // Both ends have given up (or the middlebox stops): close without a word.
    reset(client);
    reset(upstream);
}
