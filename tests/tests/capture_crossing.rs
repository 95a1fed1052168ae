//! Keep-alive probes that cross in flight, captured for real: both ends of a connection run
//! kernel keep-alive with the same timers over `lo` inside a private network namespace.
//! Both last heard from each other at the same moment, so both timers expire in the same
//! timer run and each end sends its probe before the other's is delivered (loopback delivery
//! waits for the network softirq): the probes cross. Captured on `lo` and on `any`, written as pcap and
//! converted to pcapng, each file is read by `kaprobe read --json` and every packet checked
//! against tshark: the probes of both ends are probes, both real ACKs are ACKs, and the only
//! disagreement is the documented `crossing_probes` case.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use kaprobe_tests::{
    in_netns, json_lines, keepalive, line_reader, require_root, require_tool, run, stderr,
    tshark_keepalive_flags, wait_for, wait_line, KillOnDrop, Netns, TempDir,
};

/// The namespace's TcpExt counter of keep-alive probes sent.
fn probes_sent(ns: &Netns) -> u64 {
    let text = ns.exec("cat /proc/net/netstat");
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next().unwrap(), lines.next().unwrap());
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "TCPKeepAlive")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap()
}

#[test]
fn probes_crossing_in_flight_are_both_probes_and_both_acks_are_found() {
    require_root!();
    require_tool!("tcpdump");
    require_tool!("tshark");
    require_tool!("editcap");
    let ns = Netns::new("cross");
    let dir = TempDir::new("crossing");
    let mut dumps = Vec::new();
    for iface in ["lo", "any"] {
        let file = dir.path().join(format!("{iface}.pcap"));
        let mut cmd = ns.command(&kaprobe_tests::which("tcpdump"));
        cmd.args(["-i", iface, "-U", "-n", "-w"])
            .arg(&file)
            .args(["tcp", "port", "47001"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = KillOnDrop::spawn(&mut cmd);
        let err = line_reader(child.0.stderr.take().unwrap());
        wait_line(&err, Duration::from_secs(20), |l| {
            l.contains("listening on")
        })
        .unwrap_or_else(|seen| panic!("tcpdump -i {iface} did not start: {seen:?}"));
        dumps.push((iface, file, child));
    }

    let before = probes_sent(&ns);
    // Both ends in the namespace; one byte each way at the same moment, so both last hear
    // from the other at the same time and their 1 s timers fire together.
    let conns = in_netns(&ns.name, || {
        let l = TcpListener::bind("127.0.0.1:47001").unwrap();
        let mut c = TcpStream::connect("127.0.0.1:47001").unwrap();
        let (mut s, _) = l.accept().unwrap();
        keepalive(&c, 1, 1, 9);
        keepalive(&s, 1, 1, 9);
        c.write_all(b"c").unwrap();
        s.write_all(b"s").unwrap();
        let mut b = [0u8; 1];
        c.read_exact(&mut b).unwrap();
        s.read_exact(&mut b).unwrap();
        (c, s)
    });
    // Three rounds of probes from each end, counted by the kernel.
    wait_for("6 keep-alive probes", Duration::from_secs(20), || {
        (probes_sent(&ns) >= before + 6).then_some(())
    });
    // tcpdump writes each packet as it comes (-U): wait for the last round's ACKs.
    wait_for(
        "the ACKs of the last probes",
        Duration::from_secs(5),
        || {
            let n = kaprobe_tests::sh(&format!(
                "tcpdump -r {} 2>/dev/null | wc -l",
                dumps[0].1.display()
            ));
            (n.trim().parse::<u32>().unwrap_or(0) >= 7 + 12).then_some(())
        },
    );
    drop(conns);
    let mut files = Vec::new();
    for (iface, file, mut child) in dumps {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.0.id().cast_signed(), libc::SIGINT) };
        let _ = child.0.wait();
        let ng = dir.path().join(format!("{iface}.pcapng"));
        let o = Command::new("editcap")
            .args(["-F", "pcapng"])
            .arg(&file)
            .arg(&ng)
            .output()
            .unwrap();
        assert!(o.status.success(), "editcap: {}", stderr(&o));
        files.push(file);
        files.push(ng);
    }

    for file in &files {
        let ours = kaprobe_tests::read_kinds(file);
        let ws = tshark_keepalive_flags(file);
        let probes = ours.values().filter(|k| *k == "keepalive").count();
        let acks = ours.values().filter(|k| *k == "keepalive_ack").count();
        assert!(
            probes >= 6,
            "{}: {probes} probes in {ours:?}",
            file.display()
        );
        assert_eq!(
            acks,
            probes,
            "{}: every probe answered: {ours:?}",
            file.display()
        );
        // Every probe tshark flags is a probe here, and so is every probe here (tshark
        // finds both ends' probes by their sequence numbers).
        let ws_probes: Vec<u64> = ws
            .iter()
            .filter(|(_, k)| *k == "keepalive")
            .map(|(f, _)| *f)
            .collect();
        let our_probes: Vec<u64> = ours
            .iter()
            .filter(|(_, k)| *k == "keepalive")
            .map(|(f, _)| *f)
            .collect();
        assert_eq!(our_probes, ws_probes, "{}", file.display());
        // The probes did cross: some probe is followed at once by the other end's.
        assert!(
            our_probes.windows(2).any(|w| w[1] == w[0] + 1),
            "{}: no crossing probes in {ours:?}",
            file.display()
        );
        // tshark finds at least one ACK per round; the ones it misses are the documented
        // crossing_probes case: an ACK right after its sender's own probe.
        for (frame, kind) in &ws {
            assert_eq!(
                ours.get(frame),
                Some(kind),
                "{} frame {frame}",
                file.display()
            );
        }
        let missed = acks - ws.values().filter(|k| *k == "keepalive_ack").count();
        assert!(
            missed <= probes / 2,
            "{}: tshark missed {missed}",
            file.display()
        );
        // The flow: both ends probe, all answered; alive, or closed if the capture saw the
        // two FINs of the end (never dead or reset).
        let o = run(&["read", file.to_str().unwrap(), "--json"]);
        let flow = json_lines(&o)
            .into_iter()
            .find(|v| v["type"] == "flow")
            .unwrap_or_else(|| panic!("no flow line: {}", kaprobe_tests::stdout(&o)));
        assert_eq!(flow["prober_role"], "both", "{flow}");
        assert!(
            flow["outcome"] == "alive" || flow["outcome"] == "closed",
            "{flow}"
        );
        assert_eq!(flow["unanswered"], 0, "{flow}");
        assert_eq!(flow["answered"], flow["keepalives"], "{flow}");
    }
}
