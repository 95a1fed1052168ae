//! kaprobe in people's shells: completion scripts that complete, man pages that render,
//! `--color` and its environment variables, output that fits 80 columns in a pipe, and
//! `kaprobe read -` at the end of a `tcpdump -w -` pipeline.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use kaprobe_capture::scenario::{all, frame_for, Scenario};
use kaprobe_capture::{LinkType, PcapWriter};
use kaprobe_tests::{
    have_tool, json_lines, kaprobe, kaprobe_bin, require_root, require_tool, stderr, stdout,
    wait_for, wait_line, KillOnDrop,
};

/// A fresh path in this test process's directory (tests run in parallel: never shared).
fn tmp(name: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let d = std::env::temp_dir().join(format!("kaprobe-shell-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(format!("{n}-{name}"))
}

fn scenario(name: &str) -> Scenario {
    all().into_iter().find(|s| s.name == name).unwrap()
}

/// A scenario as a classic pcap file, written by the capture crate's own writer.
fn pcap_fixture(name: &str) -> PathBuf {
    let path = tmp(&format!("{name}.pcap"));
    let f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    let mut w = PcapWriter::new(f, LinkType::Ethernet, 65_535).unwrap();
    for fr in &scenario(name).frames {
        let d = frame_for(LinkType::Ethernet, &fr.ip, false);
        w.write(fr.ts, &d, d.len() as u32).unwrap();
    }
    w.flush().unwrap();
    path
}

/// The same scenario as pcapng: one section, one Ethernet interface (microsecond
/// timestamps), one enhanced packet block per frame, all little-endian.
fn pcapng_fixture(name: &str) -> PathBuf {
    fn block(out: &mut Vec<u8>, kind: u32, body: &[u8]) {
        let padded = body.len().div_ceil(4) * 4;
        let total = u32::try_from(12 + padded).unwrap();
        out.extend_from_slice(&kind.to_le_bytes());
        out.extend_from_slice(&total.to_le_bytes());
        out.extend_from_slice(body);
        out.resize(out.len() + padded - body.len(), 0);
        out.extend_from_slice(&total.to_le_bytes());
    }
    let mut out = Vec::new();
    let mut shb = Vec::new();
    shb.extend_from_slice(&0x1A2B_3C4D_u32.to_le_bytes());
    shb.extend_from_slice(&1u16.to_le_bytes());
    shb.extend_from_slice(&0u16.to_le_bytes());
    shb.extend_from_slice(&(-1i64).to_le_bytes());
    block(&mut out, 0x0A0D_0D0A, &shb);
    let mut idb = Vec::new();
    idb.extend_from_slice(&1u16.to_le_bytes()); // LINKTYPE_ETHERNET
    idb.extend_from_slice(&0u16.to_le_bytes());
    idb.extend_from_slice(&65_535u32.to_le_bytes());
    block(&mut out, 1, &idb);
    for fr in &scenario(name).frames {
        let d = frame_for(LinkType::Ethernet, &fr.ip, false);
        let us = u64::try_from(fr.ts.as_micros()).unwrap();
        let mut epb = Vec::new();
        epb.extend_from_slice(&0u32.to_le_bytes());
        epb.extend_from_slice(&u32::try_from(us >> 32).unwrap().to_le_bytes());
        epb.extend_from_slice(&(us as u32).to_le_bytes());
        let len = u32::try_from(d.len()).unwrap();
        epb.extend_from_slice(&len.to_le_bytes());
        epb.extend_from_slice(&len.to_le_bytes());
        epb.extend_from_slice(&d);
        block(&mut out, 6, &epb);
    }
    let path = tmp(&format!("{name}.pcapng"));
    std::fs::write(&path, out).unwrap();
    path
}

/// Run kaprobe piped (stdout and stderr not terminals) with a clean colour environment.
fn piped(args: &[&str]) -> Output {
    plain_env(&mut kaprobe()).args(args).output().unwrap()
}

fn plain_env(c: &mut Command) -> &mut Command {
    c.env_remove("COLUMNS")
        .env_remove("NO_COLOR")
        .env_remove("CLICOLOR_FORCE")
        .env_remove("CLICOLOR")
        .stdin(Stdio::null())
}

/// No line over 80 columns and no escape byte: what a pipe, a log file or a narrow
/// terminal gets.
fn assert_fits_a_pipe(what: &str, text: &str) {
    assert!(
        !text.contains('\x1b'),
        "{what}: ANSI escape in piped output:\n{text}"
    );
    for l in text.lines() {
        assert!(
            l.chars().count() <= 80,
            "{what}: line of {} columns:\n{l}\n--- whole output:\n{text}",
            l.chars().count()
        );
    }
}

fn bash(script: &str) -> Output {
    Command::new("bash")
        .args(["-c", script])
        .env("KAPROBE", kaprobe_bin())
        .output()
        .unwrap()
}

/// What bash would offer for `words` with the cursor at the end of the last one.
fn bash_complete(words: &[&str]) -> Vec<String> {
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let line = words.join(" ");
    let cword = words.len() - 1;
    let cur = words[cword];
    let prev = if cword > 0 { words[cword - 1] } else { "" };
    let o = bash(&format!(
        "source <(\"$KAPROBE\" completions bash) || exit 9
         COMP_WORDS=({}); COMP_CWORD={cword}; COMP_LINE='{line}'; COMP_POINT=${{#COMP_LINE}}
         _kaprobe kaprobe '{cur}' '{prev}'
         printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        quoted.join(" ")
    ));
    assert!(o.status.success(), "bash completion failed: {}", stderr(&o));
    stdout(&o)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

#[test]
fn bash_completion_registers_and_completes_commands_flags_and_values() {
    require_tool!("bash");
    let o = bash("source <(\"$KAPROBE\" completions bash) && complete -p kaprobe");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("_kaprobe kaprobe"), "{}", stdout(&o));

    assert_eq!(bash_complete(&["kaprobe", "w"]), ["watch"]);
    assert_eq!(bash_complete(&["kaprobe", "com"]), ["completions"]);
    let flags = bash_complete(&["kaprobe", "read", "--m"]);
    assert_eq!(flags, ["--max-flows"]);
    let colors = bash_complete(&["kaprobe", "--color", "a"]);
    assert_eq!(colors, ["auto", "always"]);
    let shells = bash_complete(&["kaprobe", "completions", "f"]);
    assert_eq!(shells, ["fish"]);
}

#[test]
fn zsh_fish_elvish_and_powershell_scripts_have_their_shape() {
    let script = |shell: &str| {
        let o = piped(&["completions", shell]);
        assert!(o.status.success(), "{shell}: {}", stderr(&o));
        stdout(&o)
    };
    let zsh = script("zsh");
    assert!(zsh.starts_with("#compdef kaprobe"), "{zsh}");
    for want in ["_kaprobe", "watch", "--keepalive-timeout", "--color"] {
        assert!(zsh.contains(want), "zsh script lacks {want}");
    }
    let fish = script("fish");
    assert!(fish.contains("complete -c kaprobe"), "{fish}");
    assert!(fish.contains("-l max-wait"), "fish script lacks --max-wait");
    assert!(
        fish.contains("__fish_kaprobe"),
        "fish script lacks its helper"
    );
    assert!(script("elvish").contains("edit:completion:arg-completer[kaprobe]"));
    assert!(script("powershell").contains("Register-ArgumentCompleter"));
    // Where the shells are installed, the scripts must at least parse.
    for (shell, text, check) in [("zsh", &zsh, "-n"), ("fish", &fish, "--no-execute")] {
        if have_tool(shell) {
            let path = tmp(&format!("completion.{shell}"));
            std::fs::write(&path, text).unwrap();
            let o = Command::new(shell).arg(check).arg(&path).output().unwrap();
            assert!(
                o.status.success(),
                "{shell} rejects its script: {}",
                stderr(&o)
            );
        }
    }
    let o = piped(&["completions", "tcsh"]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains("'tcsh'") && e.contains("bash") && e.contains("zsh"),
        "{e}"
    );
}

/// Render roff as text the way `man` would, at 80 columns.
fn groff(roff: &[u8]) -> String {
    let mut child = Command::new("groff")
        .args(["-man", "-Tascii", "-rLL=80n", "-P-cbou"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(roff).unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "groff failed: {}", stderr(&o));
    stdout(&o)
}

#[test]
fn man_page_renders_with_every_command_and_its_options() {
    require_tool!("groff");
    let o = piped(&["man"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).starts_with(".ie") || stdout(&o).contains(".TH kaprobe 1"));
    let text = groff(&o.stdout);
    for want in [
        "NAME",
        "SYNOPSIS",
        "See and test how idle connections live and die",
        "KAPROBE WATCH",
        "KAPROBE READ",
        "KAPROBE SERVE",
        "KAPROBE PROBE",
        "KAPROBE RACE",
        "KAPROBE HOLD",
        "KAPROBE SOCKETS",
        "KAPROBE DEFAULTS",
        "KAPROBE DEMO",
        "KAPROBE COMPLETIONS",
        "--keepalive-timeout",
        "--max-flows",
        "--max-wait",
        "--color",
    ] {
        assert!(text.contains(want), "man page lacks {want:?}:\n{text}");
    }
}

#[test]
fn man_out_writes_one_page_per_command() {
    require_tool!("groff");
    let dir = tmp("man1");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let o = piped(&["man", "--out", dir.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    for cmd in [
        "kaprobe",
        "kaprobe-watch",
        "kaprobe-read",
        "kaprobe-serve",
        "kaprobe-probe",
        "kaprobe-race",
        "kaprobe-hold",
        "kaprobe-sockets",
        "kaprobe-defaults",
        "kaprobe-demo",
        "kaprobe-completions",
        "kaprobe-man",
    ] {
        let page = dir.join(format!("{cmd}.1"));
        assert!(page.exists(), "{} not written", page.display());
    }
    assert!(!dir.join("kaprobe-help.1").exists());
    let read = groff(&std::fs::read(dir.join("kaprobe-read.1")).unwrap());
    assert!(
        read.contains("--max-flows") && read.contains("FILE"),
        "{read}"
    );

    let o = piped(&["man", "--out", "/nonexistent/kaprobe-man"]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
    assert!(stderr(&o).contains("--out /nonexistent/kaprobe-man"));
}

#[test]
fn color_follows_the_flag_then_no_color_and_clicolor_force() {
    let fixture = pcap_fixture("dead_peer");
    let f = fixture.to_str().unwrap();
    let esc = |o: &Output| o.stdout.contains(&0x1b);
    // Piped: plain by default.
    let o = piped(&["read", f]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!esc(&o), "{}", stdout(&o));
    // --color always: the dead peer is painted, even into a pipe, even with NO_COLOR.
    let o = piped(&["read", f, "--color", "always"]);
    assert!(esc(&o), "{}", stdout(&o));
    let o = plain_env(&mut kaprobe())
        .env("NO_COLOR", "1")
        .args(["--color=always", "read", f])
        .output()
        .unwrap();
    assert!(esc(&o), "--color always must win over NO_COLOR");
    // CLICOLOR_FORCE turns colour on under auto; NO_COLOR beats it.
    let o = plain_env(&mut kaprobe())
        .env("CLICOLOR_FORCE", "1")
        .args(["read", f])
        .output()
        .unwrap();
    assert!(esc(&o), "CLICOLOR_FORCE=1 must colour a pipe");
    let o = plain_env(&mut kaprobe())
        .env("CLICOLOR_FORCE", "1")
        .env("NO_COLOR", "1")
        .args(["read", f])
        .output()
        .unwrap();
    assert!(!esc(&o), "NO_COLOR must win over CLICOLOR_FORCE");
    let o = piped(&["read", f, "--color", "never"]);
    assert!(!esc(&o));
    // clap's help follows --color too.
    let o = piped(&["--color", "always", "read", "--help"]);
    assert!(esc(&o), "help ignores --color always");
    let o = piped(&["read", "--help"]);
    assert!(!esc(&o), "help is coloured in a pipe");
    // Errors: the label is coloured under --color always, plain otherwise.
    let o = piped(&["--color", "always", "read", "/nonexistent/x.pcap"]);
    assert!(o.stderr.contains(&0x1b), "{}", stderr(&o));
    let o = piped(&["read", "/nonexistent/x.pcap"]);
    assert!(!o.stderr.contains(&0x1b), "{}", stderr(&o));
    // A bad value is a usage error naming the valid ones.
    let o = piped(&["--color", "sometimes", "defaults"]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(e.contains("'sometimes'") && e.contains("always"), "{e}");
}

#[test]
fn tables_follow_columns_when_it_is_set() {
    let fixture = pcap_fixture("server_side_keepalive_ipv6");
    let wide = plain_env(&mut kaprobe())
        .env("COLUMNS", "250")
        .args(["read", fixture.to_str().unwrap()])
        .output()
        .unwrap();
    let widest = stdout(&wide)
        .lines()
        .map(|l| l.chars().count())
        .max()
        .unwrap();
    assert!(widest > 80, "COLUMNS=250 should allow the wide table");
    assert!(widest <= 250);
    assert!(
        stdout(&wide).contains("likely settings"),
        "{}",
        stdout(&wide)
    );
}

/// Every command that runs quickly without root, piped: nothing over 80 columns, no ESC.
#[test]
fn piped_output_fits_80_columns_without_escapes() {
    for sc in [
        "dead_peer",
        "linux_keepalive_answered",
        "server_side_keepalive_ipv6",
    ] {
        let p = pcap_fixture(sc);
        let p = p.to_str().unwrap();
        for args in [vec!["read", p], vec!["read", p, "--packets"]] {
            let o = piped(&args);
            assert!(o.status.success(), "{}", stderr(&o));
            assert_fits_a_pipe(&args.join(" "), &stdout(&o));
        }
    }
    let o = piped(&["defaults"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_fits_a_pipe("defaults", &stdout(&o));
    for &cmd in kaprobe_tests::COMMANDS {
        let mut args: Vec<&str> = cmd.split_whitespace().collect();
        args.push("--help");
        let o = piped(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        assert_fits_a_pipe(&format!("{cmd} --help"), &stdout(&o));
    }

    // sockets, limited to a listener and a connection of our own.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port().to_string();
    let _c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let o = piped(&["sockets", "--port", &port]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains(&port), "{}", stdout(&o));
    assert_fits_a_pipe("sockets", &stdout(&o));

    // hold against that listener, for one second.
    let addr = l.local_addr().unwrap().to_string();
    let o = piped(&["hold", &addr, "--idle", "1", "--duration", "1s"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_fits_a_pipe("hold", &stdout(&o));

    // serve's close log, probe and race against it.
    let mut serve = KillOnDrop::spawn(plain_env(&mut kaprobe()).args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--keepalive-timeout",
        "1s",
    ]));
    let err = serve.0.stderr.take().unwrap();
    let url = BufReader::new(err)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| l.split_once("listening on ").map(|(_, u)| format!("{u}/")))
        .expect("serve prints its address");
    let log = kaprobe_tests::line_reader(serve.0.stdout.take().unwrap());
    let o = piped(&["probe", &url, "--connections", "4", "--max-wait", "5s"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("verdict"), "{}", stdout(&o));
    assert_fits_a_pipe("probe", &stdout(&o));
    let o = piped(&[
        "race",
        &url,
        "--idle",
        "200ms",
        "--requests",
        "4",
        "--parallel",
        "4",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_fits_a_pipe("race", &stdout(&o));
    let o = piped(&["bench", "push", "--messages", "5", "--rate", "50"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("WebSocket"), "{}", stdout(&o));
    assert_fits_a_pipe("bench push", &stdout(&o));
    let first = wait_line(&log, Duration::from_secs(5), |l| l.starts_with("close"))
        .unwrap_or_else(|seen| panic!("no close line from serve; saw {seen:?}"));
    let mut lines = vec![first];
    while let Ok(l) = log.recv_timeout(Duration::from_millis(200)) {
        lines.push(l);
    }
    assert_fits_a_pipe("serve close log", &lines.join("\n"));
}

/// A connection to `l` whose client probes after 1 s idle, then every 1 s; the kernel on
/// the other side answers each probe.
fn keepalive_pair(l: &TcpListener) -> (TcpStream, TcpStream) {
    let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (server, _) = l.accept().unwrap();
    let ka = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(1))
        .with_interval(Duration::from_secs(1));
    let sock = socket2::SockRef::from(&client);
    sock.set_tcp_keepalive(&ka).unwrap();
    sock.set_keepalive(true).unwrap();
    (client, server)
}

#[test]
fn watch_piped_fits_80_columns() {
    require_root!();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port().to_string();
    let mut watch = KillOnDrop::spawn(plain_env(&mut kaprobe()).args([
        "watch",
        "lo",
        "--duration",
        "3s",
        "--port",
        &port,
    ]));
    let lines = kaprobe_tests::line_reader(watch.0.stdout.take().unwrap());
    let first = wait_line(&lines, Duration::from_secs(10), |l| {
        l.starts_with("watching lo")
    })
    .unwrap_or_else(|seen| panic!("watch did not start: {seen:?}"));
    let _pair = keepalive_pair(&l);
    // watch ends by itself after --duration; the reader closes with its stdout.
    let mut all = vec![first];
    while let Ok(line) = lines.recv_timeout(Duration::from_secs(15)) {
        all.push(line);
    }
    let text = all.join("\n");
    assert!(text.contains(" keepalive "), "no probe seen:\n{text}");
    assert!(text.contains("frames ("), "no totals:\n{text}");
    assert_fits_a_pipe("watch", &text);
}

/// `cat FILE | kaprobe read -` gives exactly what `kaprobe read FILE` gives.
#[test]
fn read_from_stdin_matches_reading_the_file_for_pcap_and_pcapng() {
    let strip = |mut v: Vec<serde_json::Value>| {
        for x in &mut v {
            if let Some(o) = x.as_object_mut() {
                o.remove("elapsed");
            }
        }
        v
    };
    for path in [pcap_fixture("dead_peer"), pcapng_fixture("dead_peer")] {
        let from_file = kaprobe()
            .args(["read", "--json"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(from_file.status.success(), "{}", stderr(&from_file));
        let from_stdin = kaprobe()
            .args(["read", "-", "--json"])
            .stdin(std::fs::File::open(&path).unwrap())
            .output()
            .unwrap();
        assert!(from_stdin.status.success(), "{}", stderr(&from_stdin));
        let a = strip(json_lines(&from_file));
        let b = strip(json_lines(&from_stdin));
        assert_eq!(a.last().unwrap()["keepalives"], 3, "{}", path.display());
        assert_eq!(a, b, "{}: stdin and file differ", path.display());
        // Through a real pipe (no seeking possible), with the human table.
        let o = Command::new("sh")
            .args(["-c", "cat \"$1\" | \"$2\" read -", "sh"])
            .arg(&path)
            .arg(kaprobe_bin())
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(stdout(&o).contains("peer dead"), "{}", stdout(&o));
    }
}

#[test]
fn read_from_stdin_rejects_garbage_and_empty_input_in_one_line() {
    let feed = |input: &[u8]| {
        let mut child = kaprobe()
            .args(["read", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        // The reader may give up before taking it all: a broken pipe here is fine.
        let _ = stdin.write_all(input);
        drop(stdin);
        child.wait_with_output().unwrap()
    };
    for (input, want) in [
        (
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            "standard input is not a pcap or pcapng file (it starts with 47455420)",
        ),
        (
            &b""[..],
            "standard input is not a pcap or pcapng file (it starts with nothing: it is empty)",
        ),
        (
            &b"\xd4\xc3\xb2\xa1\x02\x00"[..],
            "standard input: corrupt capture",
        ),
    ] {
        let o = feed(input);
        assert_eq!(o.status.code(), Some(7), "{}", stderr(&o));
        let e = stderr(&o);
        assert_eq!(e.lines().count(), 1, "{e}");
        assert!(e.contains(want), "want {want:?}, got {e}");
        assert!(!e.contains("panicked"), "{e}");
    }
}

/// `tcpdump -w - | kaprobe read -` on live keep-alive traffic on loopback.
#[test]
fn tcpdump_pipeline_into_read_stdin_finds_live_keepalives() {
    require_root!();
    require_tool!("tcpdump");
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let mut tcpdump = KillOnDrop(
        Command::new("tcpdump")
            .args(["-i", "lo", "--immediate-mode", "-U", "-n", "-w", "-"])
            .arg(format!("tcp port {port}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let pcap = tcpdump.0.stdout.take().unwrap();
    let read = kaprobe()
        .args(["read", "-", "--json"])
        .stdin(Stdio::from(pcap))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut read = KillOnDrop(read);
    // tcpdump says "listening on lo" once its capture is in place.
    let err = kaprobe_tests::line_reader(tcpdump.0.stderr.take().unwrap());
    wait_line(&err, Duration::from_secs(10), |l| {
        l.contains("listening on")
    })
    .unwrap_or_else(|seen| panic!("tcpdump did not start: {seen:?}"));
    let _pair = keepalive_pair(&l);
    // The probes come from the kernel's timer and are answered by the kernel, so nothing
    // outside the capture can await them: give the timer time for two (at ~1 s and ~2 s).
    std::thread::sleep(Duration::from_millis(2800));
    // Stop tcpdump (SIGTERM: it flushes and exits), which ends kaprobe's input.
    drop(tcpdump);
    let status = wait_for("kaprobe read - to finish", Duration::from_secs(10), || {
        read.0.try_wait().unwrap()
    });
    let mut out = String::new();
    read.0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let mut err = String::new();
    read.0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "{err}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let stats = lines.last().unwrap();
    assert_eq!(stats["type"], "stats", "{out}");
    assert!(stats["keepalives"].as_u64().unwrap() >= 2, "{out}");
    assert!(stats["keepalive_acks"].as_u64().unwrap() >= 2, "{out}");
    let flow = lines.iter().find(|v| v["type"] == "flow").expect("a flow");
    assert_eq!(flow["prober_role"], "client", "{flow}");
    assert_eq!(flow["outcome"], "alive", "{flow}");
    let interval = flow["probe_interval"].as_f64().unwrap();
    assert!((interval - 1.0).abs() < 0.3, "{flow}");
}

/// Run kaprobe on a pseudo-terminal (util-linux `script`), as a user at a terminal would.
fn on_a_terminal(args: &str, env: &[(&str, &str)]) -> Output {
    let mut c = Command::new("script");
    c.args([
        "-qec",
        &format!("'{}' {args}", kaprobe_bin().display()),
        "/dev/null",
    ])
    .env("TERM", "xterm");
    plain_env(&mut c);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

#[test]
fn on_a_terminal_colour_is_on_and_read_dash_wants_a_pipe() {
    require_tool!("script");
    let fixture = pcap_fixture("dead_peer");
    let f = fixture.to_str().unwrap();
    let o = on_a_terminal(&format!("read '{f}'"), &[]);
    assert!(o.status.success(), "{}", stdout(&o));
    assert!(
        o.stdout.contains(&0x1b),
        "no colour on a terminal: {}",
        stdout(&o)
    );
    assert!(stdout(&o).contains("peer dead"), "{}", stdout(&o));
    let o = on_a_terminal(&format!("read '{f}'"), &[("NO_COLOR", "1")]);
    assert!(
        !o.stdout.contains(&0x1b),
        "NO_COLOR ignored: {}",
        stdout(&o)
    );
    let o = on_a_terminal(&format!("--color never read '{f}'"), &[]);
    assert!(!o.stdout.contains(&0x1b), "--color never ignored");
    // `read -` with the terminal as standard input would wait forever: it says so instead.
    let o = on_a_terminal("read - --color never", &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    let out = stdout(&o);
    assert!(
        out.contains("FILE '-' reads a capture from standard input, but it is a terminal"),
        "{out}"
    );
    assert_eq!(out.trim().lines().count(), 1, "{out}");
}

#[test]
fn zsh_completion_registers_with_compinit() {
    require_tool!("zsh");
    let o = Command::new("zsh")
        .args([
            "-fc",
            "autoload -U compinit && compinit -u -D && source <(\"$KAPROBE\" completions zsh) \
             && print -r -- ${_comps[kaprobe]}",
        ])
        .env("KAPROBE", kaprobe_bin())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "_kaprobe", "{}", stderr(&o));
}
