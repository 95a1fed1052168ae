//! `kaprobe demo` runs with no arguments, is bounded in time and shows real probes.

use std::time::{Duration, Instant};

use kaprobe_tests::{kaprobe, stderr, stdout};

#[test]
fn demo_shows_answered_probes_and_explains_them_within_twenty_seconds() {
    kaprobe_tests::kaprobe_bin(); // build first: the time limit is the demo's, not cargo's
    let start = Instant::now();
    let o = kaprobe()
        .arg("demo")
        .env_remove("COLUMNS")
        .env_remove("CLICOLOR_FORCE")
        .output()
        .unwrap();
    let took = start.elapsed();
    let raw = stdout(&o);
    assert!(o.status.success(), "{}{}", raw, stderr(&o));
    assert!(took < Duration::from_secs(20), "demo took {took:?}");
    // Piped, it fits 80 columns and has no colour; prose wraps, so the checks below read it
    // with the line breaks and indentation undone.
    assert!(!raw.contains('\x1b'), "{raw}");
    for l in raw.lines() {
        assert!(l.chars().count() <= 80, "line over 80 columns:\n{l}");
    }
    let out = raw.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        out.contains(
            "idle 1s before the first probe, then one every 1s, give up after 3 unanswered"
        ),
        "{out}"
    );
    let sent = out.matches("sent: an empty ACK").count();
    let answered = out.matches("answered within").count();
    assert!(sent >= 2, "at least two probes in the window: {out}");
    assert_eq!(sent, answered, "every probe on loopback is answered: {out}");
    assert!(out.contains("after 4s of silence"), "{out}");
    assert!(
        out.matches("timer: keepalive fires in").count() >= 3,
        "the keep-alive timer is shown ticking: {out}"
    );
    // the HTTP step: kaprobe serve measured by kaprobe probe
    assert!(out.contains("6. HTTP keep-alive"), "{out}");
    assert!(
        out.contains("verdict: closes idle connections after 2.0")
            && out.contains("s with FIN, advertises 2s"),
        "{out}"
    );
    assert!(out.contains("kaprobe race URL --idle 5s"), "{out}");
    if kaprobe_tests::is_root() {
        assert!(out.contains("4. Now the peer vanishes"), "{out}");
        assert!(
            out.contains("probe #3 sent ... no answer (3 unanswered)"),
            "{out}"
        );
        assert!(out.contains("(ETIMEDOUT)"), "{out}");
        // the capture step saw its own probes on the wire
        assert!(out.contains("5. The same thing on the wire"), "{out}");
        assert_eq!(out.matches(" keepalive #").count(), 3, "{raw}");
        assert!(out.contains("keepalive #3 (seq"), "{out}");
        assert!(out.contains("3 probes by the client, 0 answered"), "{out}");
        assert!(out.contains("outcome: peer_dead"), "{out}");
        assert!(
            out.contains("3 unanswered probes, 4.") || out.contains("3 unanswered probes, 3.9"),
            "{out}"
        );
    } else {
        assert!(out.contains("Run as root"), "{out}");
    }
}
