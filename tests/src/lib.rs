//! Shared helpers for the end-to-end tests: the built binary, root/tool checks, network
//! namespaces that clean up after themselves, child processes that die with the test, a
//! `kaprobe serve` on an ephemeral port, and nginx from a private temp dir.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Path to a freshly built `kaprobe` binary (built once per test process with the same
/// cargo and profile that runs the tests, so it is never stale).
pub fn kaprobe_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let root = workspace_root();
        let status = Command::new(cargo)
            .args(["build", "--quiet", "-p", "kaprobe", "--bin", "kaprobe"])
            .current_dir(&root)
            .status()
            .expect("run cargo build for the kaprobe binary");
        assert!(status.success(), "cargo build -p kaprobe failed");
        let target =
            std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
        let bin = target.join("debug").join("kaprobe");
        assert!(bin.exists(), "built binary not found at {}", bin.display());
        bin
    })
}

/// The workspace root (parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A `Command` for the kaprobe binary.
pub fn kaprobe() -> Command {
    Command::new(kaprobe_bin())
}

/// Run kaprobe with arguments and collect its output.
pub fn run(args: &[&str]) -> Output {
    kaprobe().args(args).output().expect("run kaprobe")
}

/// stdout as a string.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// stderr as a string.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Parse each non-empty stdout line as JSON.
pub fn json_lines(o: &Output) -> Vec<serde_json::Value> {
    stdout(o)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// Run kaprobe with `args` and check that it fails as a user should see it: exit `code`, one
/// line on stderr that contains `words`, and no panic.
pub fn fails(args: &[&str], code: i32, words: &str) {
    let o = run(args);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(code), "{args:?}: {err}");
    assert!(
        err.contains(words),
        "{args:?}: expected '{words}' in: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one-line error: {err}");
}

/// The number at JSON pointer `path` (`/idle/timeout_s`) in `v`; panics naming the path.
pub fn f64_at(v: &serde_json::Value, path: &str) -> f64 {
    v.pointer(path)
        .and_then(serde_json::Value::as_f64)
        .unwrap_or_else(|| panic!("{path} missing in {v}"))
}

/// The string at JSON pointer `path` in `v` (panics naming the path when absent).
pub fn str_at<'a>(v: &'a serde_json::Value, path: &str) -> &'a str {
    v.pointer(path)
        .and_then(serde_json::Value::as_str)
        .unwrap_or_else(|| panic!("{path} missing in {v}"))
}

/// Run `kaprobe probe ARGS --json`, which must succeed with one JSON object: the report and
/// the wall time.
pub fn probe_json(args: &[&str]) -> (serde_json::Value, std::time::Duration) {
    let mut cmd = kaprobe();
    let t = std::time::Instant::now();
    let o = cmd.arg("probe").args(args).arg("--json").output().unwrap();
    let wall = t.elapsed();
    assert!(o.status.success(), "probe {args:?} failed: {}", stderr(&o));
    let mut lines = json_lines(&o);
    assert_eq!(lines.len(), 1, "one JSON object expected");
    (lines.remove(0), wall)
}

/// True when running as root (uid 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// True when `tool` is on PATH.
pub fn have_tool(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool} >/dev/null 2>&1")])
        .status()
        .is_ok_and(|s| s.success())
}

/// True in CI (`CI=true`), where skipping for want of root or a tool is a failure.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// Skip the calling test (loudly) unless running as root; in CI, fail instead.
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::is_root() {
            assert!(!$crate::in_ci(), "CI must run this test as root");
            eprintln!("skipped: needs root");
            return;
        }
    };
}

/// Skip the calling test (loudly) unless `tool` is installed; in CI, fail instead.
#[macro_export]
macro_rules! require_tool {
    ($tool:expr) => {
        if !$crate::have_tool($tool) {
            assert!(!$crate::in_ci(), "CI must have {} installed", $tool);
            eprintln!("skipped: needs {}", $tool);
            return;
        }
    };
}

/// A child process that is killed (and reaped) when dropped.
pub struct KillOnDrop(pub Child);

impl KillOnDrop {
    /// Spawn `cmd` with piped stdout/stderr.
    pub fn spawn(cmd: &mut Command) -> Self {
        Self(
            cmd.stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn child"),
        )
    }
}

impl Drop for KillOnDrop {
    /// SIGTERM first, so servers like nginx take their worker processes down with them
    /// (SIGKILL on an nginx master leaves its workers running), then SIGKILL after 3 s.
    fn drop(&mut self) {
        if let Ok(pid) = libc::pid_t::try_from(self.0.id()) {
            // SAFETY: kill(2) on our own child's pid; it has not been reaped yet.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if matches!(self.0.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Run a shell command line, panic with its output if it fails.
pub fn sh(cmdline: &str) -> String {
    let o = Command::new("sh").args(["-c", cmdline]).output().unwrap();
    assert!(
        o.status.success(),
        "`{cmdline}` failed: {}{}",
        stdout(&o),
        stderr(&o)
    );
    stdout(&o)
}

/// A network namespace made for one test, deleted (with its veths) on drop.
pub struct Netns {
    pub name: String,
}

static NS_COUNTER: AtomicU32 = AtomicU32::new(0);

impl Netns {
    /// Create a uniquely named namespace with `lo` up. `tag` is a short test label.
    pub fn new(tag: &str) -> Self {
        let n = NS_COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("kp-{tag}-{}-{n}", std::process::id());
        sh(&format!("ip netns add {name}"));
        let ns = Self { name };
        ns.exec("ip link set lo up");
        ns
    }

    /// Run a shell command line inside the namespace; panic on failure.
    pub fn exec(&self, cmdline: &str) -> String {
        sh(&format!("ip netns exec {} sh -c '{}'", self.name, cmdline))
    }

    /// The name of the first interface in the namespace that is not `lo` (its veth end).
    pub fn veth(&self) -> String {
        self.exec("ls /sys/class/net")
            .split_whitespace()
            .find(|n| *n != "lo")
            .unwrap()
            .to_string()
    }

    /// A `Command` that runs `program` inside the namespace.
    pub fn command(&self, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
            .map(|o| {
                for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            });
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Run `f` in a thread that joined network namespace `ns`: sockets it makes live there.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    use std::os::fd::AsRawFd;
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        // SAFETY: setns on a valid namespace fd changes only this thread's network namespace.
        let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .unwrap()
}

/// Turn on TCP keep-alive on `s`: the first probe after `idle` s of silence, then one every
/// `intvl` s, `count` unanswered probes before the kernel gives up.
pub fn keepalive(s: &TcpStream, idle: u64, intvl: u64, count: u32) {
    let ka = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(idle))
        .with_interval(Duration::from_secs(intvl))
        .with_retries(count);
    socket2::SockRef::from(s).set_tcp_keepalive(&ka).unwrap();
}

/// Join `a` and `b` with a veth pair: interface `va` in `a`, `vb` in `b`.
fn link(a: &Netns, va: &str, b: &Netns, vb: &str) {
    sh(&format!(
        "ip link add {va} netns {} type veth peer name {vb} netns {}",
        a.name, b.name
    ));
}

/// Two namespaces joined by a veth pair: `a` is 10.200.`subnet`.1/24 and `b` is
/// 10.200.`subnet`.2/24. Both are removed on drop.
pub struct NsPair {
    pub a: Netns,
    pub b: Netns,
    pub a_addr: String,
    pub b_addr: String,
}

static SUBNET: AtomicU32 = AtomicU32::new(0);

impl NsPair {
    /// Create the pair. Each test process uses its own /24 so parallel tests never clash.
    pub fn new(tag: &str) -> Self {
        let a = Netns::new(&format!("{tag}a"));
        let b = Netns::new(&format!("{tag}b"));
        let subnet = (std::process::id() % 200 + SUBNET.fetch_add(1, Ordering::SeqCst)) % 250 + 1;
        let a_addr = format!("10.200.{subnet}.1");
        let b_addr = format!("10.200.{subnet}.2");
        let n = NS_COUNTER.fetch_add(1, Ordering::SeqCst);
        let va = format!("kpa{}x{n}", std::process::id() % 100_000);
        let vb = format!("kpb{}x{n}", std::process::id() % 100_000);
        link(&a, &va, &b, &vb);
        a.exec(&format!(
            "ip addr add {a_addr}/24 dev {va} && ip link set {va} up"
        ));
        b.exec(&format!(
            "ip addr add {b_addr}/24 dev {vb} && ip link set {vb} up"
        ));
        Self {
            a,
            b,
            a_addr,
            b_addr,
        }
    }

    /// A listener on an ephemeral port of `b`'s address, inside `b`.
    pub fn listen_b(&self) -> TcpListener {
        let b_addr = self.b_addr.clone();
        in_netns(&self.b.name, move || {
            TcpListener::bind(format!("{b_addr}:0")).unwrap()
        })
    }

    /// `kaprobe watch` on `a`'s veth, run inside `a`, for connections to `port`, with `args`
    /// after the interface name.
    pub fn watch_in_a(&self, port: u16, args: &[&str]) -> Command {
        let mut cmd = self.a.command(kaprobe_bin());
        cmd.args(["watch", &self.a.veth()])
            .args(args)
            .args(["--port", &port.to_string()]);
        cmd
    }

    /// A peer that dies silently: connect from `a` to `listener` (made by [`Self::listen_b`])
    /// with keep-alive after 1 s, every 1 s, 3 probes; send 5 bytes across; then drop
    /// everything that arrives in `b` and wait (up to 15 s) until the client's read fails
    /// with ETIMEDOUT. Returns the client and the accepted server socket, to be kept open
    /// until the test ends.
    pub fn lose_peer(&self, listener: &TcpListener) -> (TcpStream, TcpStream) {
        use std::io::{Read, Write};
        let server_addr = listener.local_addr().unwrap();
        let mut client = in_netns(&self.a.name, move || {
            TcpStream::connect(server_addr).unwrap()
        });
        keepalive(&client, 1, 1, 3);
        let (mut server, _) = listener.accept().unwrap();
        client.write_all(b"hello").unwrap();
        let mut buf = [0u8; 5];
        server.read_exact(&mut buf).unwrap();
        // The peer goes silent: every probe is dropped on arrival.
        self.b.exec("iptables -A INPUT -j DROP");
        client
            .set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        let err = client.read(&mut buf).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ETIMEDOUT), "{err}");
        (client, server)
    }
}

/// Poll `f` every 10 ms until it returns `Some`, or panic after `timeout` naming `what`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Read lines from a child's stdout on a thread; returns a receiver of lines.
pub fn line_reader(out: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Wait until a line matching `pred` arrives on `rx`, returning it and the lines before.
pub fn wait_line(
    rx: &std::sync::mpsc::Receiver<String>,
    timeout: Duration,
    mut pred: impl FnMut(&str) -> bool,
) -> Result<String, Vec<String>> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if pred(&l) => return Ok(l),
            Ok(l) => seen.push(l),
            Err(_) => return Err(seen),
        }
    }
}

/// What `kaprobe serve` prints on stderr before each address it listens on.
const LISTENING: &str = "kaprobe serve: listening on http://";

/// A running `kaprobe serve --listen 127.0.0.1:0 ARGS`: the process, the address it reported
/// on stderr, and its stdout lines. The rest of stderr is drained on a thread so the server
/// never blocks on (or fails writing to) a full or closed pipe.
pub struct Serve {
    pub child: KillOnDrop,
    pub addr: String,
    pub out: Receiver<String>,
}

impl Serve {
    /// Start the server and wait up to `wait` for its listening line.
    pub fn start(args: &[&str], wait: Duration) -> Self {
        let mut child = KillOnDrop::spawn(
            kaprobe()
                .args(["serve", "--listen", "127.0.0.1:0"])
                .args(args)
                .stdin(Stdio::null()),
        );
        let err = line_reader(child.0.stderr.take().unwrap());
        let out = line_reader(child.0.stdout.take().unwrap());
        let line = wait_line(&err, wait, |l| l.starts_with(LISTENING))
            .unwrap_or_else(|seen| panic!("serve {args:?} never said it was listening: {seen:?}"));
        std::thread::spawn(move || while err.recv().is_ok() {});
        let addr = line
            .trim()
            .trim_start_matches(LISTENING)
            .trim_end_matches('/')
            .to_string();
        Self { child, addr, out }
    }

    /// The address as a socket address.
    pub fn socket_addr(&self) -> SocketAddr {
        self.addr
            .parse()
            .unwrap_or_else(|e| panic!("bad address {:?}: {e}", self.addr))
    }

    /// Send `sig` to the server.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill on our own child's pid.
        unsafe {
            libc::kill(self.child.0.id().cast_signed(), sig);
        }
    }

    /// SIGTERM, then wait up to 10 s for the server to exit; panic if it does not.
    pub fn stop(&mut self) {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.child.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("kaprobe serve did not stop on SIGTERM");
    }

    /// The next stdout line containing `pat`, as JSON (earlier lines are skipped); panics
    /// naming `what` after `timeout`.
    pub fn json_line(&self, pat: &str, timeout: Duration, what: &str) -> serde_json::Value {
        let l = wait_line(&self.out, timeout, |l| l.contains(pat))
            .unwrap_or_else(|seen| panic!("no {what}: {seen:?}"));
        serde_json::from_str(&l).unwrap()
    }
}

/// What `kaprobe middlebox` prints on stderr before the address it listens on.
const MIDDLEBOX_LISTENING: &str = "kaprobe middlebox: listening on ";

/// A running `kaprobe middlebox --listen 127.0.0.1:0 --log json ARGS`: the process, its
/// address, and its close log (JSON lines on stdout).
pub struct Middlebox {
    pub child: KillOnDrop,
    pub addr: SocketAddr,
    pub out: Receiver<String>,
}

impl Middlebox {
    /// Start it and wait up to 10 s for its listening line.
    pub fn start(args: &[&str]) -> Self {
        let mut child = KillOnDrop::spawn(
            kaprobe()
                .args(["middlebox", "--listen", "127.0.0.1:0", "--log", "json"])
                .args(args)
                .stdin(Stdio::null()),
        );
        let err = line_reader(child.0.stderr.take().unwrap());
        let out = line_reader(child.0.stdout.take().unwrap());
        let line = wait_line(&err, Duration::from_secs(10), |l| {
            l.starts_with(MIDDLEBOX_LISTENING)
        })
        .unwrap_or_else(|seen| panic!("middlebox {args:?} never listened: {seen:?}"));
        std::thread::spawn(move || while err.recv().is_ok() {});
        let addr = line
            .trim_start_matches(MIDDLEBOX_LISTENING)
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .parse()
            .unwrap_or_else(|e| panic!("bad middlebox address in {line:?}: {e}"));
        Self { child, addr, out }
    }

    /// The next close line (JSON), within `timeout`.
    pub fn close_line(&self, timeout: Duration) -> serde_json::Value {
        let l = wait_line(&self.out, timeout, |l| l.contains("\"type\":\"close\""))
            .unwrap_or_else(|seen| panic!("no close line from the middlebox: {seen:?}"));
        serde_json::from_str(&l).unwrap()
    }
}

/// `kaprobe serve --log json ARGS` (close events as JSON lines on stdout), waiting up to 60 s
/// for it to listen.
pub fn serve_json(args: &[&str]) -> Serve {
    Serve::start(
        &[&["--log", "json"], args].concat(),
        Duration::from_secs(60),
    )
}

/// `kaprobe serve ARGS` with its default log, waiting up to 10 s for it to listen; the
/// server and its address.
pub fn serve_quiet(args: &[&str]) -> (Serve, SocketAddr) {
    let s = Serve::start(args, Duration::from_secs(10));
    let addr = s.socket_addr();
    (s, addr)
}

/// Three namespaces in a line, `client` -- `router` -- `server`, the router forwarding and
/// masquerading between 10.200.1.0/24 (client side: client 10.200.1.2, router 10.200.1.1)
/// and 10.200.2.0/24 (server side: router 10.200.2.1, server 10.200.2.2). Built by
/// [`RouterTriple::new`]; all three are removed on drop.
pub struct RouterTriple {
    pub client: Netns,
    pub router: Netns,
    pub server: Netns,
    pub client_addr: String,
    pub server_addr: String,
}

impl RouterTriple {
    /// Create the line with plain forwarding and MASQUERADE on the server side.
    pub fn new(tag: &str) -> Self {
        let client = Netns::new(&format!("{tag}c"));
        let router = Netns::new(&format!("{tag}r"));
        let server = Netns::new(&format!("{tag}s"));
        let n = NS_COUNTER.fetch_add(1, Ordering::SeqCst);
        let id = std::process::id() % 10_000;
        let (c0, r0, r1, s1) = (
            format!("kc{id}x{n}"),
            format!("kr{id}x{n}"),
            format!("kq{id}x{n}"),
            format!("ks{id}x{n}"),
        );
        link(&client, &c0, &router, &r0);
        link(&router, &r1, &server, &s1);
        client.exec(&format!(
            "ip addr add 10.200.1.2/24 dev {c0} && ip link set {c0} up && ip route add default via 10.200.1.1"
        ));
        router.exec(&format!(
            "ip addr add 10.200.1.1/24 dev {r0} && ip link set {r0} up && ip addr add 10.200.2.1/24 dev {r1} && ip link set {r1} up && sysctl -qw net.ipv4.ip_forward=1 && iptables -t nat -A POSTROUTING -o {r1} -j MASQUERADE"
        ));
        server.exec(&format!(
            "ip addr add 10.200.2.2/24 dev {s1} && ip link set {s1} up && ip route add default via 10.200.2.1"
        ));
        Self {
            client,
            router,
            server,
            client_addr: "10.200.1.2".into(),
            server_addr: "10.200.2.2".into(),
        }
    }

    /// Make the router forget idle flows silently after `established_secs`, like a NAT or a
    /// cloud load balancer: conntrack's established timeout is shortened, mid-stream pickup
    /// is off (`nf_conntrack_tcp_loose=0`), and packets of forgotten flows (INVALID) are
    /// dropped without an answer.
    pub fn forget_idle_flows_after(&self, established_secs: u32) {
        self.router
            .exec("iptables -A FORWARD -m conntrack --ctstate INVALID -j DROP");
        self.router.exec(&format!(
            "sysctl -qw net.netfilter.nf_conntrack_tcp_loose=0 && sysctl -qw net.netfilter.nf_conntrack_tcp_timeout_established={established_secs}"
        ));
    }
}

// Peers (nginx here; haproxy and Apache in tests/probe_peers.rs) run from a private temp
// dir with a config the test writes, killed and cleaned up on drop.

static DIRS: AtomicU32 = AtomicU32::new(0);

/// A temp dir readable by nginx/Apache workers (which drop privileges), removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let n = DIRS.fetch_add(1, Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("kaprobe-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(p.join("tmp")).unwrap();
        Command::new("chmod")
            .args(["-R", "755"])
            .arg(&p)
            .status()
            .unwrap();
        Self(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        self.write_bytes(name, text.as_bytes())
    }

    pub fn write_bytes(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, bytes).unwrap();
        Command::new("chmod").arg("644").arg(&p).status().unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A port that was free on 127.0.0.1 a moment ago (for peers that cannot report the port
/// they bound).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Wait until something accepts connections on `addr` (loopback).
pub fn wait_listening(addr: SocketAddr, child: &mut KillOnDrop, log: &Path) {
    wait_for(
        &format!("a listener on {addr}"),
        Duration::from_secs(10),
        || {
            if let Ok(Some(status)) = child.0.try_wait() {
                panic!(
                    "peer exited early ({status}): {}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
            TcpStream::connect_timeout(&addr, Duration::from_millis(200))
                .ok()
                .map(|_| ())
        },
    );
}

/// Wait until something listens on TCP `port` inside `ns`.
pub fn wait_listening_in(ns: &Netns, port: u16) {
    wait_for(
        &format!("a listener on port {port} in {}", ns.name),
        Duration::from_secs(10),
        || {
            let o = Command::new("ip")
                .args(["netns", "exec", &ns.name, "ss", "-Hltn"])
                .output()
                .ok()?;
            String::from_utf8_lossy(&o.stdout)
                .contains(&format!(":{port} "))
                .then_some(())
        },
    );
}

/// A running peer: the process, its directory, and where it listens.
pub struct Peer {
    pub child: KillOnDrop,
    pub dir: TempDir,
    pub port: u16,
}

impl Peer {
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// nginx with one worker and the given `http { ... }` body (server blocks etc.). `port` is
/// what the body listens on; `ns` runs it inside a namespace (then `port` is waited for there).
pub fn nginx(http_body: &str, port: u16, ns: Option<&Netns>) -> Peer {
    let dir = TempDir::new("nginx");
    let d = dir.path().display().to_string();
    let conf = format!(
        "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
         events {{ worker_connections 2048; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/tmp;\n  proxy_temp_path {d}/tmp;\n  \
         fastcgi_temp_path {d}/tmp;\n  uwsgi_temp_path {d}/tmp;\n  scgi_temp_path {d}/tmp;\n{http_body}\n}}\n"
    );
    let conf_path = dir.write("nginx.conf", &conf);
    let nginx = which("nginx");
    let mut cmd = match ns {
        Some(ns) => ns.command(&nginx),
        None => Command::new(&nginx),
    };
    cmd.arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(&conf_path)
        .args(["-g", "daemon off;"]);
    let mut child = KillOnDrop::spawn(&mut cmd);
    match ns {
        Some(ns) => wait_listening_in(ns, port),
        None => wait_listening(
            SocketAddr::from(([127, 0, 0, 1], port)),
            &mut child,
            &dir.path().join("error.log"),
        ),
    }
    Peer { child, dir, port }
}

/// Full path of a tool (also finds the ones in /usr/sbin when PATH lacks it).
pub fn which(tool: &str) -> PathBuf {
    for dir in std::env::var("PATH").unwrap_or_default().split(':').chain([
        "/usr/sbin",
        "/sbin",
        "/usr/local/sbin",
    ]) {
        let p = Path::new(dir).join(tool);
        if p.is_file() {
            return p;
        }
    }
    PathBuf::from(tool)
}

/// The packets tshark flags in the capture at `path`, frame number -> `"keepalive"` or
/// `"keepalive_ack"` (`tcp.analysis.keep_alive` / `tcp.analysis.keep_alive_ack`).
pub fn tshark_keepalive_flags(path: &Path) -> std::collections::BTreeMap<u64, String> {
    let o = Command::new("tshark")
        .args(["-n", "-r"])
        .arg(path)
        .args([
            "-Y",
            "tcp.analysis.keep_alive or tcp.analysis.keep_alive_ack",
            "-T",
            "fields",
            "-e",
            "frame.number",
            "-e",
            "tcp.analysis.keep_alive",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "tshark failed: {}", stderr(&o));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| {
            let mut c = l.split('\t');
            let frame = c.next()?.trim().parse().ok()?;
            let ka = c.next().is_some_and(|x| !x.trim().is_empty());
            Some((
                frame,
                if ka { "keepalive" } else { "keepalive_ack" }.to_string(),
            ))
        })
        .collect()
}

/// Run `kaprobe race ARGS --json` (it must succeed): its attempt lines, its bin lines and its
/// summary line.
pub fn race_json(
    args: &[&str],
) -> (
    Vec<serde_json::Value>,
    Vec<serde_json::Value>,
    serde_json::Value,
) {
    let o = kaprobe()
        .arg("race")
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    assert!(o.status.success(), "race {args:?}: {}", stderr(&o));
    let lines = json_lines(&o);
    let of = |t: &str| -> Vec<serde_json::Value> {
        lines.iter().filter(|l| l["type"] == t).cloned().collect()
    };
    let summary = of("summary").pop().expect("a summary line");
    (of("attempt"), of("bin"), summary)
}

/// Every command line that has its own `--help` ("" is the top level), for the tests that
/// check each help text.
pub const COMMANDS: &[&str] = &[
    "",
    "demo",
    "defaults",
    "hold",
    "sockets",
    "watch",
    "read",
    "serve",
    "probe",
    "race",
    "middlebox",
    "exporter",
    "bench",
    "bench push",
    "completions",
    "man",
];

/// A raw HTTP/1.1 client that controls segmentation, and a request corpus.
/// Frame number -> kind (`keepalive`, `keepalive_ack`, ...), as `kaprobe read --json`
/// reports the packets of the capture at `path`.
pub fn read_kinds(path: &Path) -> std::collections::BTreeMap<u64, String> {
    let o = run(&["read", path.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "kaprobe read failed: {}", stderr(&o));
    json_lines(&o)
        .into_iter()
        .filter(|v| v["type"] == "packet")
        .map(|v| {
            (
                v["frame"].as_u64().unwrap(),
                v["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

pub mod http1;
pub mod peers;

/// Check Prometheus text with `promtool check metrics` (skipped without promtool; CI has it).
pub fn promtool_lint(text: &str) {
    use std::io::Write as _;
    if !have_tool("promtool") {
        eprintln!("skipped: needs promtool");
        return;
    }
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A CA and a server certificate for `localhost` and 127.0.0.1, as PEM files in `dir`:
/// (ca, cert, key) paths.
///
/// # Panics
/// When the certificates cannot be made or written.
#[must_use]
pub fn make_certs(dir: &TempDir) -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // OpenSSL (curl, Python) takes a leaf whose issuer name is its own name as self-signed.
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "kaprobe test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    let p = |p: PathBuf| p.display().to_string();
    (
        p(dir.write("ca.pem", &ca.pem())),
        p(dir.write("server.pem", &cert.pem())),
        p(dir.write("server.key", &key.serialize_pem())),
    )
}

/// Start `kaprobe watch` (already configured in `cmd`) and wait for its start line.
pub fn start_watch(cmd: &mut Command) -> (KillOnDrop, Receiver<String>) {
    let mut child = KillOnDrop::spawn(cmd);
    let rx = line_reader(child.0.stdout.take().unwrap());
    let started = wait_line(&rx, Duration::from_secs(20), |l| l.contains("\"start\""));
    if started.is_err() {
        let mut err = String::new();
        let _ = std::io::Read::read_to_string(&mut child.0.stderr.take().unwrap(), &mut err);
        panic!("watch did not start: {started:?} {err}");
    }
    (child, rx)
}

/// Every JSON line until the watcher (from [`start_watch`]) exits successfully.
pub fn watch_rest(child: &mut KillOnDrop, rx: &Receiver<String>) -> Vec<serde_json::Value> {
    let status = child.0.wait().unwrap();
    assert!(status.success(), "watch exited with {status}");
    rx.iter()
        .map(|l| serde_json::from_str(&l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}
