//! Wireshark (tshark) as the judge: on fixtures generated from labelled conversations, and
//! on a real loopback capture, kaprobe must agree with tshark's tcp.analysis.keep_alive /
//! keep_alive_ack on every packet, except at the documented cases where Wireshark is wrong
//! (each named in `kaprobe_capture::scenario::WiresharkWrong`), and must match the labels.

use std::path::{Path, PathBuf};

use kaprobe_capture::scenario::{all, frame_for, Scenario, WiresharkWrong};
use kaprobe_capture::{LinkType, PcapWriter};
use kaprobe_tests::require_tool;

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kaprobe-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write_fixture(dir: &Path, sc: &Scenario, link: LinkType, qinq: bool) -> PathBuf {
    let path = dir.join(format!("{}-{link:?}-{qinq}.pcap", sc.name));
    let f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    let mut w = PcapWriter::new(f, link, 65_535).unwrap();
    for fr in &sc.frames {
        let data = frame_for(link, &fr.ip, qinq);
        w.write(fr.ts, &data, data.len() as u32).unwrap();
    }
    w.flush().unwrap();
    path
}

/// Compare one fixture; returns the violations found.
fn check(sc: &Scenario, path: &Path) -> Vec<String> {
    let ws = kaprobe_tests::tshark_keepalive_flags(path);
    let ours = kaprobe_tests::read_kinds(path);
    let mut bad = Vec::new();
    for (i, fr) in sc.frames.iter().enumerate() {
        let n = i as u64 + 1;
        let want = fr.expect.map(|k| k.as_str().to_string());
        let got = ours.get(&n).cloned();
        if got != want {
            bad.push(format!(
                "{} frame {n}: kaprobe says {got:?}, label says {want:?}",
                sc.name
            ));
        }
        let ours_ka = got.filter(|k| k == "keepalive" || k == "keepalive_ack");
        let theirs = ws.get(&n).cloned();
        match (ours_ka == theirs, fr.wireshark_wrong) {
            (true, None) => {}
            (false, Some(_)) => {}
            (true, Some(case)) => bad.push(format!(
                "{} frame {n}: documented as Wireshark case {} but tshark agrees ({theirs:?})",
                sc.name,
                case.as_str()
            )),
            (false, None) => bad.push(format!(
                "{} frame {n}: tshark says {theirs:?}, kaprobe {ours_ka:?}, not a documented case",
                sc.name
            )),
        }
    }
    bad
}

#[test]
fn tshark_agrees_except_documented_cases() {
    require_tool!("tshark");
    let dir = tmpdir("tshark");
    let scenarios = all();
    let cases: Vec<WiresharkWrong> = scenarios
        .iter()
        .flat_map(|s| s.frames.iter().filter_map(|f| f.wireshark_wrong))
        .collect();
    for c in [
        WiresharkWrong::MidIdleStart,
        WiresharkWrong::WindowScaleFirstAck,
        WiresharkWrong::LinuxZeroWindowProbe,
        WiresharkWrong::OneByteRetransmission,
    ] {
        assert!(cases.contains(&c), "no fixture covers {}", c.as_str());
    }
    let mut bad = Vec::new();
    for sc in &scenarios {
        let path = write_fixture(&dir, sc, LinkType::Ethernet, false);
        bad.extend(check(sc, &path));
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(bad.is_empty(), "disagreements:\n{}", bad.join("\n"));
}

#[test]
fn tshark_agrees_on_every_link_type() {
    require_tool!("tshark");
    let dir = tmpdir("tshark-links");
    let scenarios = all();
    let mut bad = Vec::new();
    // Two scenarios per link type keep tshark runs few; together they cover probes, ACKs,
    // zero-window probes, IPv4 and IPv6.
    let picks = [
        "linux_keepalive_answered",
        "server_side_keepalive_ipv6",
        "linux_zero_window_probe",
    ];
    for (link, qinq) in [
        (LinkType::Ethernet, true),
        (LinkType::LinuxSll, false),
        (LinkType::LinuxSll2, false),
        (LinkType::RawIp, false),
        (LinkType::Null, false),
    ] {
        for sc in scenarios.iter().filter(|s| picks.contains(&s.name)) {
            let path = write_fixture(&dir, sc, link, qinq);
            bad.extend(
                check(sc, &path)
                    .into_iter()
                    .map(|b| format!("{link:?}: {b}")),
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(bad.is_empty(), "disagreements:\n{}", bad.join("\n"));
}
