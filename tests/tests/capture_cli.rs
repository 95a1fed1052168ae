//! `kaprobe read` and `kaprobe watch` as a user meets them: output shapes, errors and exit
//! codes.

use std::path::{Path, PathBuf};
use std::process::Command;

use kaprobe_capture::scenario::{all, frame_for, Scenario};
use kaprobe_capture::{LinkType, PcapWriter};
use kaprobe_tests::{json_lines, kaprobe_bin, require_root, require_tool, run, stderr, stdout};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kaprobe-cli-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

fn scenario(name: &str) -> Scenario {
    all().into_iter().find(|s| s.name == name).unwrap()
}

fn write(path: &Path, sc: &Scenario) {
    let f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut w = PcapWriter::new(f, LinkType::Ethernet, 65_535).unwrap();
    for fr in &sc.frames {
        let d = frame_for(LinkType::Ethernet, &fr.ip, false);
        w.write(fr.ts, &d, d.len() as u32).unwrap();
    }
    w.flush().unwrap();
}

#[test]
fn read_json_reports_a_dead_peer_with_the_documented_fields() {
    let path = tmp("dead.pcap");
    write(&path, &scenario("dead_peer"));
    let o = run(&["read", path.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines = json_lines(&o);
    let packets: Vec<_> = lines.iter().filter(|v| v["type"] == "packet").collect();
    assert_eq!(packets.len(), 3);
    for (i, p) in packets.iter().enumerate() {
        assert_eq!(p["kind"], "keepalive");
        assert_eq!(p["unanswered_before"], i as u64);
        assert_eq!(p["probe_number"], i as u64 + 1);
        assert!(p["time"].as_str().unwrap().ends_with('Z'), "{p}");
        for k in [
            "frame",
            "src",
            "dst",
            "seq",
            "ack",
            "len",
            "idle",
            "since_prev_probe",
        ] {
            assert!(p.get(k).is_some(), "packet lacks {k}: {p}");
        }
    }
    assert!((packets[0]["idle"].as_f64().unwrap() - 2.0).abs() < 0.01);
    let flow = lines.iter().find(|v| v["type"] == "flow").unwrap();
    assert_eq!(flow["outcome"], "peer_dead");
    assert_eq!(flow["unanswered_at_end"], 3);
    assert_eq!(flow["prober_role"], "client");
    assert_eq!(flow["roles_known"], true);
    assert_eq!(flow["inferred_count"], 3);
    assert!((flow["inferred_interval"].as_f64().unwrap() - 1.0).abs() < 0.01);
    assert_eq!(
        flow["config"],
        "idle 2s, interval 1s, 3 probes: custom (set per socket or by sysctl)"
    );
    let last = lines.last().unwrap();
    assert_eq!(last["type"], "stats");
    assert_eq!(last["keepalives"], 3);
    assert_eq!(last["frames"], sc_len("dead_peer"));
}

fn sc_len(name: &str) -> u64 {
    scenario(name).frames.len() as u64
}

#[test]
fn read_human_output_has_the_flow_table_and_totals() {
    let path = tmp("human.pcap");
    write(&path, &scenario("linux_keepalive_answered"));
    let o = run(&["read", path.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    for want in [
        "keepalive_ack",
        "127.0.0.1:40001 -> 127.0.0.1:8080",
        "client",
        "idle 10s: custom",
        "3 keep-alives, 3 keep-alive ACKs",
        "alive",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
}

#[test]
fn read_filters_by_port_and_host() {
    let path = tmp("filter.pcap");
    write(&path, &scenario("linux_keepalive_answered"));
    let p = path.to_str().unwrap();
    let none = json_lines(&run(&["read", p, "--json", "--port", "9"]));
    assert_eq!(none.last().unwrap()["keepalives"], 0);
    assert_eq!(
        none.last().unwrap()["filtered_out"],
        sc_len("linux_keepalive_answered")
    );
    let some = json_lines(&run(&[
        "read",
        p,
        "--json",
        "--host",
        "127.0.0.1",
        "--port",
        "8080",
    ]));
    assert_eq!(some.last().unwrap()["keepalives"], 3);
    // In words: the TCP packets are there, the filter left them out (not "0 TCP").
    let n = sc_len("linux_keepalive_answered");
    let text = stdout(&run(&["read", p, "--port", "9"]));
    assert!(
        text.contains(&format!(
            "{n} frames ({n} TCP, of which {n} left out by the filter)"
        )),
        "{text}"
    );
    assert!(!text.contains("(0 TCP)"), "{text}");
}

#[test]
fn read_pcapng_written_by_wireshark_tools_gives_the_same_answer() {
    require_tool!("editcap");
    let path = tmp("ng.pcap");
    write(&path, &scenario("server_side_keepalive_ipv6"));
    let ng = tmp("ng.pcapng");
    let st = Command::new("editcap")
        .args(["-F", "pcapng"])
        .arg(&path)
        .arg(&ng)
        .status()
        .unwrap();
    assert!(st.success());
    let a = json_lines(&run(&["read", path.to_str().unwrap(), "--json"]));
    let b = json_lines(&run(&["read", ng.to_str().unwrap(), "--json"]));
    let packets = |v: &[serde_json::Value]| -> Vec<serde_json::Value> {
        v.iter()
            .filter(|x| x["type"] == "packet")
            .cloned()
            .collect()
    };
    assert_eq!(packets(&a).len(), 4);
    assert_eq!(packets(&a), packets(&b), "pcap and pcapng differ");
}

#[test]
fn read_truncated_file_reports_what_it_could_read() {
    let path = tmp("cut.pcap");
    write(&path, &scenario("dead_peer"));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.truncate(bytes.len() - 7);
    std::fs::write(&path, &bytes).unwrap();
    let o = run(&["read", path.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let last = json_lines(&o).pop().unwrap();
    assert_eq!(last["dropped"], 1, "{last}");
    assert_eq!(last["frames"], sc_len("dead_peer") - 1);
}

#[test]
fn read_errors_name_the_file_and_exit_7() {
    let missing = tmp("does-not-exist.pcap");
    let o = run(&["read", missing.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(7));
    assert!(stderr(&o).contains("does-not-exist.pcap"), "{}", stderr(&o));

    let text = tmp("notes.txt");
    std::fs::write(&text, "hello").unwrap();
    let o = run(&["read", text.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(7));
    assert!(
        stderr(&o).contains("not a pcap or pcapng file (it starts with 68656c6c)"),
        "{}",
        stderr(&o)
    );

    let empty = tmp("empty.pcap");
    std::fs::write(&empty, "").unwrap();
    let o = run(&["read", empty.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(7));
    assert!(stderr(&o).contains("empty"), "{}", stderr(&o));

    // A pcap of an unsupported link type (LINKTYPE 147, user-defined).
    let odd = tmp("odd.pcap");
    let mut h = Vec::new();
    for w in [0xa1b2_c3d4_u32, 0x0004_0002, 0, 0, 65_535, 147] {
        h.extend_from_slice(&w.to_le_bytes());
    }
    std::fs::write(&odd, &h).unwrap();
    let o = run(&["read", odd.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(7));
    assert!(stderr(&o).contains("link type 147"), "{}", stderr(&o));
}

#[test]
fn bad_flags_exit_2_naming_the_value() {
    let o = run(&["read", "x.pcap", "--port", "0"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("'0'"), "{}", stderr(&o));
    let o = run(&["watch", "lo", "--duration", "0s"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("greater than 0"), "{}", stderr(&o));
    let o = run(&["watch", "lo", "--host", "not-an-ip"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn watch_unknown_interface_exits_2_listing_interfaces() {
    require_root!();
    let o = run(&["watch", "kp-nosuch0", "--duration", "1s"]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(e.contains("'kp-nosuch0'") && e.contains("lo"), "{e}");
}

#[test]
fn watch_without_cap_net_raw_exits_6_with_advice() {
    require_root!();
    require_tool!("setpriv");
    // Root without CAP_NET_RAW in its bounding set, as an unprivileged user would be.
    let o = Command::new("setpriv")
        .args(["--bounding-set", "-net_raw", "--inh-caps", "-net_raw"])
        .arg(kaprobe_bin())
        .args(["watch", "lo", "--duration", "1s"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(6), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("run as root") && e.contains("setcap cap_net_raw"),
        "{e}"
    );
}
