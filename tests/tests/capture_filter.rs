//! Filter expressions (`kaprobe read FILE EXPR`, `kaprobe watch IFACE EXPR`) against tcpdump,
//! the anchor: real captures of varied TCP traffic (IPv4 and IPv6, SYN/FIN/RST, small and
//! large segments, two link types), and for each expression the packets tcpdump keeps must
//! be exactly the packets kaprobe keeps. Live, the kernel filter must keep what tcpdump keeps
//! from the same traffic. Bad expressions are one-line errors naming the word and column.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use kaprobe_capture::craft::Rng;
use kaprobe_capture::filter::Expression;
use kaprobe_capture::io::source::{FileSource, Next, PacketSource};
use kaprobe_capture::wire::packet::{ip_start, parse_frame};
use kaprobe_tests::{
    fails, json_lines, line_reader, require_root, require_tool, run, stderr, wait_line, TempDir,
};

/// Listeners on three loopback addresses (two IPv4, one IPv6).
struct Peers {
    v4: TcpListener,
    v4b: TcpListener,
    v6: TcpListener,
}

impl Peers {
    fn new() -> Peers {
        Peers {
            v4: TcpListener::bind("127.0.0.1:0").unwrap(),
            v4b: TcpListener::bind("127.0.0.2:0").unwrap(),
            v6: TcpListener::bind("[::1]:0").unwrap(),
        }
    }

    fn ports(&self) -> [u16; 3] {
        [&self.v4, &self.v4b, &self.v6].map(|l| l.local_addr().unwrap().port())
    }

    /// Varied traffic: per listener, a small exchange closed with FIN, a large one, and one
    /// reset (SO_LINGER 0).
    fn traffic(&self) {
        for l in [&self.v4, &self.v4b, &self.v6] {
            let addr: SocketAddr = l.local_addr().unwrap();
            for (size, reset) in [(10usize, false), (3000, false), (1, true)] {
                let mut c = TcpStream::connect(addr).unwrap();
                let (mut s, _) = l.accept().unwrap();
                c.write_all(&vec![b'x'; size]).unwrap();
                let mut got = vec![0u8; size];
                s.read_exact(&mut got).unwrap();
                s.write_all(b"ok").unwrap();
                let mut two = [0u8; 2];
                c.read_exact(&mut two).unwrap();
                if reset {
                    socket2::SockRef::from(&c)
                        .set_linger(Some(Duration::ZERO))
                        .unwrap();
                }
                drop(c);
                let mut rest = Vec::new();
                let _ = s.read_to_end(&mut rest);
            }
        }
    }
}

/// tcpdump writing what `filter` keeps on `iface` to `pcap` while `work` runs; tried again
/// (up to three times) when tcpdump says the kernel dropped packets for it, which a loaded
/// machine can cause and which would make the comparison unfair.
fn capture(iface: &str, pcap: &Path, filter: &str, work: impl Fn()) {
    for attempt in 1..=3 {
        if capture_once(iface, pcap, filter, &work) {
            return;
        }
        eprintln!("tcpdump on {iface} lost packets (attempt {attempt}); capturing again");
    }
    panic!("tcpdump on {iface} lost packets three times");
}

fn capture_once(iface: &str, pcap: &Path, filter: &str, work: &dyn Fn()) -> bool {
    let mut td = Command::new("tcpdump")
        // headers only (as watch keeps them) and a large buffer: with whole 64 KiB frames
        // on `any`, this machine's kernel drops most packets for tcpdump
        .args([
            "-i",
            iface,
            "--immediate-mode",
            "-s",
            "256",
            "-B",
            "8192",
            "-U",
            "-n",
            "-w",
        ])
        .arg(pcap)
        .arg(filter)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = line_reader(td.stderr.take().unwrap());
    wait_line(&err, Duration::from_secs(10), |l| {
        l.contains("listening on")
    })
    .unwrap();
    work();
    // let the last packets reach the file
    std::thread::sleep(Duration::from_millis(200));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(td.id().cast_signed(), libc::SIGINT) };
    td.wait().unwrap();
    let said: Vec<String> = err.try_iter().collect();
    said.iter()
        .any(|l| l.starts_with("0 packets dropped by kernel"))
}

/// Timestamps (seconds.micros) of the packets tcpdump prints for `tcp and (expr)`, counted.
fn tcpdump_keeps(pcap: &Path, expr: &str) -> BTreeMap<String, usize> {
    tcpdump_keeps_with(pcap, expr, &[])
}

/// As [`tcpdump_keeps`], with more tcpdump flags (`-O`: libpcap's optimizer off).
fn tcpdump_keeps_with(pcap: &Path, expr: &str, flags: &[&str]) -> BTreeMap<String, usize> {
    let full = if expr.is_empty() {
        "tcp".to_string()
    } else {
        format!("tcp and ({expr})")
    };
    let o = Command::new("tcpdump")
        .args(["-r"])
        .arg(pcap)
        .args(["-tt", "-n"])
        .args(flags)
        .arg(&full)
        .output()
        .unwrap();
    // libpcap refuses a filter it can prove matches nothing (`tcp and udp`)
    if String::from_utf8_lossy(&o.stderr).contains("rejects all packets") {
        return BTreeMap::new();
    }
    assert!(
        o.status.success(),
        "tcpdump {full}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let mut out = BTreeMap::new();
    for l in String::from_utf8_lossy(&o.stdout).lines() {
        if let Some(ts) = l.split_whitespace().next() {
            *out.entry(ts.to_string()).or_insert(0) += 1;
        }
    }
    out
}

/// Every packet of `pcap` as tcpdump prints it, without its time, sorted.
fn packets_without_time(pcap: &Path) -> Vec<String> {
    let o = Command::new("tcpdump")
        .arg("-r")
        .arg(pcap)
        .args(["-n", "-t"])
        .output()
        .unwrap();
    let mut v: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    v.sort();
    v
}

/// The same for kaprobe's compiled expression over the file's frames.
fn kaprobe_keeps(pcap: &Path, expr: &Expression) -> BTreeMap<String, usize> {
    let mut src = FileSource::open(pcap).unwrap();
    let mut out = BTreeMap::new();
    loop {
        match src.next_frame().unwrap() {
            Next::Frame(f) => {
                let Some(link) = f.link else { continue };
                if parse_frame(link, f.data).is_err() {
                    continue;
                }
                let ip = ip_start(link, f.data).and_then(|at| f.data.get(at..));
                if ip.is_some_and(|ip| expr.matches_ip(ip, f.orig_len)) {
                    let ts = format!("{}.{:06}", f.ts.as_secs(), f.ts.subsec_micros());
                    *out.entry(ts).or_insert(0) += 1;
                }
            }
            Next::Idle => {}
            Next::End => break,
        }
    }
    out
}

/// Expressions over the three ports `p`, in pcap-filter(7)'s language.
fn expressions(p: [u16; 3]) -> Vec<String> {
    let [a, b, c] = p;
    let (lo, hi) = (a.min(b), a.max(b));
    [
        String::new(),
        format!("port {a}"),
        format!("tcp port {b}"),
        format!("src port {a}"),
        format!("dst port {c}"),
        format!("port {a} or {c}"),
        format!("portrange {lo}-{hi}"),
        format!("tcp dst portrange {lo}-{hi}"),
        "host 127.0.0.1".into(),
        "src host 127.0.0.2".into(),
        "dst 127.0.0.2".into(),
        "host ::1".into(),
        "ip".into(),
        "ip6".into(),
        "not ip6".into(),
        "net 127.0.0.0/8".into(),
        "net 127".into(),
        "src net 127.0.0.0 mask 255.255.255.254".into(),
        "net ::/64".into(),
        "ip6 net ::1/128 and dst port 0".into(),
        "src or dst host 127.0.0.2".into(),
        "src and dst host 127.0.0.1".into(),
        "udp or icmp".into(),
        format!("port {a} or port {b} and ip6"),
        format!("port {a} or (port {b} and ip6)"),
        format!("not port {a} and not port {b}"),
        format!("! port {a} && ! port {c}"),
        "tcp[tcpflags] & tcp-syn != 0".into(),
        "tcp[tcpflags] & (tcp-syn|tcp-fin) != 0".into(),
        "tcp[13] & 4 != 0".into(),
        "tcp[tcpflags] == tcp-ack".into(),
        "tcp[tcpflags] & tcp-push != 0 and tcp[tcpflags] & tcp-ack != 0".into(),
        "greater 200".into(),
        "less 80".into(),
        "len > 1000".into(),
        "len - 66 >= 10".into(),
        "((tcp[12] & 0xf0) >> 2) > 32".into(),
        "tcp[12] / 16 * 4 == 40".into(),
        "ip[8] == 64".into(),
        "ip6[7] == 64".into(),
        "ip[2:2] > 100 or ip6[4:2] > 100".into(),
        "tcp[4:4] % 2 == 1".into(),
        "tcp[0:2] == tcp[2:2]".into(),
        format!("tcp[2:2] = {c}"),
        "tcp[tcp[12] / 16 * 4 - 1] >= 0".into(),
        "ip[0] & 0xf != 5".into(),
        "len < 100 and tcp[tcpflags] & tcp-rst != 0".into(),
        "not (tcp[13] & 2 != 0) and (len > 100 or tcp[tcpflags] & tcp-fin != 0)".into(),
        format!("(tcp[0:2] + 1 > {a}) or (ip6 and port {c})"),
    ]
    .to_vec()
}

fn differential(iface: &str, tag: &str) {
    let peers = Peers::new();
    let p = peers.ports();
    let dir = TempDir::new(tag);
    let pcap = dir.path().join("mix.pcap");
    let all = format!("tcp and (port {} or port {} or port {})", p[0], p[1], p[2]);
    capture(iface, &pcap, &all, || peers.traffic());
    let everything = tcpdump_keeps(&pcap, "");
    assert!(
        everything.values().sum::<usize>() >= 60,
        "too little traffic captured: {}",
        everything.len()
    );
    let mut some = 0;
    for text in expressions(p) {
        let expr = Expression::parse(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
        let want = tcpdump_keeps(&pcap, &text);
        let got = kaprobe_keeps(&pcap, &expr);
        assert_eq!(
            got, want,
            "{iface}: '{text}' keeps other packets than tcpdump"
        );
        if !want.is_empty() && want.len() < everything.len() {
            some += 1;
        }
        // and the same through the command line
        let mut args = vec!["read", pcap.to_str().unwrap(), "--json"];
        args.extend(text.split_whitespace());
        let o = run(&args);
        assert!(o.status.success(), "read {text}: {}", stderr(&o));
        let stats = json_lines(&o)
            .into_iter()
            .find(|v| v["type"] == "stats")
            .unwrap();
        assert_eq!(
            stats["tcp_packets"].as_u64(),
            Some(want.values().sum::<usize>() as u64),
            "read '{text}': {stats}"
        );
    }
    assert!(some >= 20, "too few expressions told packets apart: {some}");
}

#[test]
fn expressions_keep_what_tcpdump_keeps_on_ethernet_framing() {
    require_root!();
    require_tool!("tcpdump");
    differential("lo", "filter-lo");
}

#[test]
fn expressions_keep_what_tcpdump_keeps_on_linux_cooked_framing() {
    require_root!();
    require_tool!("tcpdump");
    differential("any", "filter-any");
}

#[test]
fn watch_compiles_the_expression_into_the_kernel_filter() {
    require_root!();
    require_tool!("tcpdump");
    let peers = Peers::new();
    let p = peers.ports();
    // both IPv4: as in libpcap, tcp[...] indexes IPv4 packets only
    let expr = format!(
        "tcp[tcpflags] & tcp-syn != 0 and (port {} or port {})",
        p[0], p[1]
    );
    let dir = TempDir::new("filter-watch");
    let written = dir.path().join("watch.pcap");
    let mut w = kaprobe_tests::KillOnDrop::spawn(
        kaprobe_tests::kaprobe()
            .args(["watch", "lo", "--json", "--duration", "30s", "--write"])
            .arg(&written)
            .args(expr.split_whitespace())
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    );
    let out = line_reader(w.0.stdout.take().unwrap());
    wait_line(&out, Duration::from_secs(20), |l| l.contains("\"start\"")).unwrap();
    let reference = dir.path().join("ref.pcap");
    capture("lo", &reference, &format!("tcp and ({expr})"), || {
        peers.traffic()
    });
    // SAFETY: signalling our own child.
    unsafe { libc::kill(w.0.id().cast_signed(), libc::SIGINT) };
    let _ = w.0.wait();
    // What watch wrote (everything the kernel passed it) is what tcpdump kept: SYN and
    // SYN-ACK of the 6 connections on those two ports, and nothing else. The two captures
    // time the same packet a few microseconds apart: compare them without their times.
    let want = packets_without_time(&reference);
    assert_eq!(want.len(), 12, "{want:#?}");
    assert_eq!(packets_without_time(&written), want);
}

#[test]
fn bad_expressions_point_at_the_word() {
    for (expr, says) in [
        ("tcp port 80 adn host 10.0.0.1", "'adn' at column 13"),
        ("hots 10.0.0.1", "'hots' at column 1 is not a primitive"),
        ("port 70000", "'70000' at column 6 is not a port"),
        ("host example.com", "host names are not looked up"),
        ("net 10.0.0.0/33", "is not a network"),
        ("tcp[13] & 2 !=", "ends early"),
        ("(port 80", "expected ')'"),
        ("port 80 and", "ends early"),
        ("tcp[1:3] > 0", "1, 2 or 4"),
        ("tcp[0] / 0 > 1", "divides by zero"),
        ("port 80 $", "'$' at column 9"),
        ("80", "needs a qualifier"),
    ] {
        let mut args = vec!["read", "/nonexistent.pcap"];
        args.extend(expr.split_whitespace());
        fails(&args, 2, says);
        let e = Expression::parse(expr).expect_err(expr).to_string();
        assert!(e.contains(says), "{expr}: {e}");
    }
}

#[test]
fn filter_text_never_panics() {
    // every prefix of valid expressions, and byte soup
    let samples = [
        "tcp[tcpflags] & (tcp-syn|tcp-fin) != 0 and not src net 10.0.0.0/8",
        "ip6 and (port 80 or 443) || greater 100 && tcp[4:4] % 7 == 3",
        "dst portrange 1-65535 and src or dst host ::ffff:10.0.0.1",
    ];
    for s in samples {
        for cut in 0..=s.len() {
            if s.is_char_boundary(cut) {
                let _ = Expression::parse(&s[..cut]);
            }
        }
    }
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let alphabet = b"tcpiphostnetport[]():&|!<>=-+*/% 0123456789.abcdefx";
    for _ in 0..5000 {
        let len = (x % 40) as usize;
        let text: String = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                alphabet[(x % alphabet.len() as u64) as usize] as char
            })
            .collect();
        if let Ok(e) = Expression::parse(&text) {
            // a program that compiled runs on any bytes
            let _ = e.matches_ip(&[0x45; 60], 60);
            let _ = e.matches_ip(&[0x60; 80], 80);
            let _ = e.matches_ip(&[], 0);
        }
    }
}

/// The client ports of the flows in `pcap` (as tcpdump prints them), and its packet count.
fn flows_in(pcap: &Path) -> (std::collections::BTreeSet<String>, usize) {
    let lines = packets_without_time(pcap);
    let mut ends = std::collections::BTreeSet::new();
    for l in &lines {
        // "IP 127.0.0.1.42512 > 127.0.0.1.32817: Flags ..."
        let mut w = l.split_whitespace();
        let (_, a, _, b) = (w.next(), w.next(), w.next(), w.next());
        if let (Some(a), Some(b)) = (a, b) {
            let mut pair = [a.to_string(), b.trim_end_matches(':').to_string()];
            pair.sort();
            ends.insert(pair.join(" "));
        }
    }
    (ends, lines.len())
}

#[test]
fn read_write_keeps_whole_flows_that_matched() {
    require_root!();
    require_tool!("tcpdump");
    let peers = Peers::new();
    let p = peers.ports();
    let dir = TempDir::new("filter-readwrite");
    let pcap = dir.path().join("all.pcap");
    let all = format!("tcp and (port {} or port {} or port {})", p[0], p[1], p[2]);
    capture("lo", &pcap, &all, || peers.traffic());
    let out = dir.path().join("resets.pcap");
    let o = run(&[
        "read",
        pcap.to_str().unwrap(),
        "--json",
        "--write",
        out.to_str().unwrap(),
        "tcp[tcpflags]",
        "&",
        "tcp-rst",
        "!=",
        "0",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    // The flows with a RST (IPv4: tcp[] indexes IPv4 only), whole: every packet tcpdump
    // finds for those flows in the original, nothing else.
    let rst_lines = packets_without_time(&out)
        .into_iter()
        .filter(|l| l.contains("Flags [R"))
        .count();
    let (flows, frames) = flows_in(&out);
    assert_eq!(flows.len(), 2, "{flows:?}");
    assert_eq!(rst_lines, 2);
    let clients: Vec<String> = flows
        .iter()
        .map(|f| {
            let ends: Vec<&str> = f.split(' ').collect();
            // the end that is not a listener: its port is the flow's client port
            ends.iter()
                .find(|e| !p.iter().any(|lp| e.ends_with(&format!(".{lp}"))))
                .map(|e| e.rsplit('.').next().unwrap().to_string())
                .unwrap()
        })
        .collect();
    let expr = format!("port {} or port {}", clients[0], clients[1]);
    let want = tcpdump_keeps(&pcap, &expr).values().sum::<usize>();
    assert_eq!(frames, want, "frames of the matching flows");
    assert!(
        stderr(&o).contains(&format!("wrote {want} frames of 2 matching flows")),
        "{}",
        stderr(&o)
    );
    // standard input cannot be read twice; the file read cannot be the file written
    let o = run(&["read", "-", "--write", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("not - (standard input)"),
        "{}",
        stderr(&o)
    );
    fails(
        &[
            "read",
            pcap.to_str().unwrap(),
            "--write",
            pcap.to_str().unwrap(),
        ],
        2,
        "is the file being read",
    );
}

#[test]
fn watch_write_rotates_files_as_tcpdump_c_and_w_do() {
    require_root!();
    require_tool!("tcpdump");
    let peers = Peers::new();
    let p = peers.ports();
    let dir = TempDir::new("filter-ring");
    let ring = dir.path().join("ring.pcap");
    let all = dir.path().join("all.pcap");
    let port_expr = format!("port {} or port {} or port {}", p[0], p[1], p[2]);
    for (files, name) in [(Some("3"), &ring), (None, &all)] {
        let mut cmd = kaprobe_tests::kaprobe();
        cmd.args(["watch", "lo", "--json", "--duration", "30s", "--write"])
            .arg(name)
            .args(["--write-size", "2kB"]);
        if let Some(n) = files {
            cmd.args(["--write-files", n]);
        }
        let mut w = kaprobe_tests::KillOnDrop::spawn(
            cmd.args(port_expr.split_whitespace())
                .stdout(Stdio::piped())
                .stderr(Stdio::null()),
        );
        let out = line_reader(w.0.stdout.take().unwrap());
        wait_line(&out, Duration::from_secs(20), |l| l.contains("\"start\"")).unwrap();
        peers.traffic();
        // SAFETY: signalling our own child.
        unsafe { libc::kill(w.0.id().cast_signed(), libc::SIGINT) };
        let stats = wait_line(&out, Duration::from_secs(20), |l| l.contains("\"stats\"")).unwrap();
        let _ = w.0.wait();
        let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
        let frames = stats["frames"].as_u64().unwrap() as usize;
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with(name.file_name().unwrap().to_str().unwrap()))
            .collect();
        names.sort();
        let mut in_files = 0;
        for n in &names {
            let path = dir.path().join(n);
            let len = std::fs::metadata(&path).unwrap().len();
            assert!(len <= 2000, "{n} is {len} bytes");
            in_files += packets_without_time(&path).len();
        }
        match files {
            Some(_) => {
                assert_eq!(names, ["ring.pcap0", "ring.pcap1", "ring.pcap2"], "{stats}");
                assert!(
                    in_files < frames,
                    "a ring keeps the newest only: {in_files} of {frames}"
                );
                assert!(in_files >= 3 * 8, "{in_files}");
            }
            None => {
                assert!(names.len() >= 4, "{names:?}");
                assert_eq!(in_files, frames, "every frame in some file");
            }
        }
    }
    for (args, says) in [
        (
            &["--write", "x.pcap", "--write-size", "10b"][..],
            "not a size",
        ),
        (
            &["--write", "x.pcap", "--write-size", "lots"][..],
            "not a size",
        ),
        (&["--write-size", "1MB"][..], "--write"),
        (
            &["--write", "x.pcap", "--write-files", "3"][..],
            "--write-size",
        ),
        (
            &[
                "--write",
                "x.pcap",
                "--write-size",
                "1MB",
                "--write-files",
                "1",
            ][..],
            "2..=100000",
        ),
    ] {
        let mut all = vec!["watch", "lo"];
        all.extend_from_slice(args);
        let o = run(&all);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert!(stderr(&o).contains(says), "{args:?}: {}", stderr(&o));
    }
}

/// A random primitive of the language `Expression` takes, over the ports `p`.
fn random_primitive(r: &mut Rng, p: [u16; 3]) -> String {
    let port = |r: &mut Rng| {
        if r.below(4) == 0 {
            r.below(65_536).to_string()
        } else {
            p[r.below(3) as usize].to_string()
        }
    };
    let rel = |r: &mut Rng| r.pick(&["=", "==", "!=", "<", "<=", ">", ">="]).to_string();
    let small = |r: &mut Rng| match r.below(4) {
        0 => r.below(2).to_string(),
        1 => r.below(256).to_string(),
        2 => format!("0x{:x}", r.below(65_536)),
        _ => r.below(1 << 32).to_string(),
    };
    let load = |r: &mut Rng| {
        let base = r.pick(&["tcp", "tcp", "ip", "ip6"]);
        let size = r.pick(&["", ":1", ":2", ":4"]);
        match r.below(6) {
            0 if base == "tcp" => "tcp[tcpflags]".to_string(),
            1 => format!("{base}[{}{size}]", r.below(16)),
            _ => format!("{base}[{}{size}]", r.below(72)),
        }
    };
    match r.below(16) {
        0 => format!(
            "{} port {}",
            r.pick(&["", "src", "dst", "tcp", "tcp src"]),
            port(r)
        ),
        1 => {
            let (a, b) = (
                port(r).parse::<u32>().unwrap(),
                port(r).parse::<u32>().unwrap(),
            );
            format!("portrange {}-{}", a.min(b), a.max(b))
        }
        2 => format!(
            "{} host {}",
            r.pick(&["", "src", "dst", "src or dst", "src and dst"]),
            r.pick(&["127.0.0.1", "127.0.0.2", "::1", "127.0.0.3"])
        ),
        3 => format!(
            "{} net {}",
            r.pick(&["", "src", "dst"]),
            r.pick(&[
                "127.0.0.0/8",
                "127.0.0.2/32",
                "127.0.0.0/31",
                "127",
                "127.0.0",
                "::/0",
                "::1/128",
                "127.0.0.0 mask 255.255.255.252",
            ])
        ),
        4 => r.pick(&["ip", "ip6", "tcp", "udp", "icmp"]).to_string(),
        5 => format!("{} {}", r.pick(&["greater", "less"]), r.below(400)),
        6 => format!("len {} {}", rel(r), r.below(400)),
        7 => format!(
            "tcp[tcpflags] & {} != 0",
            r.pick(&[
                "tcp-fin",
                "tcp-syn",
                "tcp-rst",
                "tcp-push",
                "tcp-ack",
                "tcp-urg",
                "(tcp-syn|tcp-ack)",
                "(tcp-fin|tcp-rst)",
            ])
        ),
        8 => {
            let op = r.pick(&["+", "-", "*", "&", "|", "<<", ">>"]);
            let k = if op == "<<" || op == ">>" {
                r.below(32).to_string()
            } else {
                small(r)
            };
            format!("{} {op} {k} {} {}", load(r), rel(r), small(r))
        }
        9 => {
            // libpcap refuses a constant divisor of 0
            let op = r.pick(&["/", "%"]);
            format!(
                "{} {op} {} {} {}",
                load(r),
                1 + r.below(300),
                rel(r),
                small(r)
            )
        }
        10 => format!("{} {} {}", load(r), rel(r), load(r)),
        11 => format!("({} & 0xf0) >> 2 {} {}", load(r), rel(r), r.below(64)),
        _ => format!("{} {} {}", load(r), rel(r), small(r)),
    }
}

/// A random expression: primitives joined by `and`/`or` (also `&&`, `||`), some negated,
/// some grouped, up to `depth` levels.
fn random_expression(r: &mut Rng, p: [u16; 3], depth: u32) -> String {
    let one = if depth == 0 || r.below(3) == 0 {
        random_primitive(r, p)
    } else {
        let a = random_expression(r, p, depth - 1);
        let b = random_expression(r, p, depth - 1);
        let op = r.pick(&["and", "or", "&&", "||"]);
        if r.below(2) == 0 {
            format!("({a}) {op} ({b})")
        } else {
            format!("{a} {op} {b}")
        }
    };
    match r.below(5) {
        0 => format!("not {one}"),
        1 => format!("! ({one})"),
        _ => one,
    }
}

#[test]
fn random_expressions_keep_what_tcpdump_keeps() {
    require_root!();
    require_tool!("tcpdump");
    let peers = Peers::new();
    let p = peers.ports();
    let dir = TempDir::new("filter-random");
    let pcap = dir.path().join("mix.pcap");
    let all = format!("tcp and (port {} or port {} or port {})", p[0], p[1], p[2]);
    capture("lo", &pcap, &all, || peers.traffic());
    let seed = std::env::var("KAPROBE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    let mut r = Rng(seed);
    let (mut compared, mut refused_by_tcpdump, mut told_apart, mut optimizer_differs) =
        (0, 0, 0, 0);
    let everything = tcpdump_keeps(&pcap, "").values().sum::<usize>();
    for _ in 0..400 {
        let text = random_expression(&mut r, p, 3);
        let full = format!("tcp and ({text})");
        let o = Command::new("tcpdump")
            .arg("-r")
            .arg(&pcap)
            .args(["-tt", "-n", "-O", &full])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        let parsed = Expression::parse(&text);
        if !o.status.success() && !err.contains("rejects all packets") {
            // libpcap refuses some arithmetic kaprobe takes; what tcpdump takes, kaprobe must
            refused_by_tcpdump += 1;
            continue;
        }
        let expr = parsed.unwrap_or_else(|e| {
            panic!("KAPROBE_SEED={seed}: tcpdump takes '{text}', kaprobe says: {e}")
        });
        let want = tcpdump_keeps_with(&pcap, &text, &["-O"]);
        let got = kaprobe_keeps(&pcap, &expr);
        assert_eq!(
            got, want,
            "KAPROBE_SEED={seed}: '{text}' keeps other packets than tcpdump -O"
        );
        compared += 1;
        if tcpdump_keeps(&pcap, &text) != want {
            optimizer_differs += 1;
        }
        let n = want.values().sum::<usize>();
        if n > 0 && n < everything {
            told_apart += 1;
        }
    }
    eprintln!(
        "KAPROBE_SEED={seed}: {compared} compared, {refused_by_tcpdump} refused by tcpdump, \
         {told_apart} kept some packets but not all, {optimizer_differs} kept otherwise by \
         tcpdump with libpcap's optimizer"
    );
    assert!(
        compared >= 350,
        "KAPROBE_SEED={seed}: only {compared} compared"
    );
    assert!(
        told_apart >= 80,
        "KAPROBE_SEED={seed}: only {told_apart} told packets apart"
    );
}
