//! Differential test against nginx: the same corpus of valid and malformed requests, whole and
//! cut into pieces, is sent to nginx and to `kaprobe serve`. For each request the class of
//! every status and whether the connection stays open must agree, except for the deliberate
//! differences listed in docs/serve.md ("Where kaprobe and nginx differ"), which are listed
//! here too: a difference that is not in the list fails, and so does a listed one that went
//! away (the list must stay true).
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use kaprobe_tests::http1::{self, exchange, Case, Seen, Send};
use kaprobe_tests::{free_port, nginx, require_tool, serve_json};

/// Per request: status classes in order (`2`, `4`, ...) and whether the connection closed.
fn verdict(seen: &Seen) -> (Vec<u16>, bool) {
    (
        seen.statuses().iter().map(|s| s / 100).collect(),
        seen.closed,
    )
}

fn ask(addr: SocketAddr, case: &Case, pieces: Vec<&[u8]>) -> (Vec<u16>, bool) {
    let (seen, _) = exchange(
        addr,
        &Send {
            pieces,
            gap: Duration::from_millis(if case.bytes.len() > 1000 { 0 } else { 2 }),
            reuse: false,
            head: case.head,
        },
    );
    verdict(&seen)
}

/// The deliberate differences: request name -> why (docs/serve.md says the same).
const DELIBERATE: &[(&str, &str)] = &[(
    "bare_lf",
    "RFC 9112 section 2.2 lets a recipient accept a bare LF as a line end (nginx does); \
         kaprobe rejects it with 400, because a proxy and a server that split lines differently \
         is how requests are smuggled",
)];

#[test]
fn kaprobe_and_nginx_agree_on_status_class_and_connection_fate() {
    require_tool!("nginx");
    let port = free_port();
    let ngx = nginx(
        &format!(
            "  server {{\n    listen 127.0.0.1:{port};\n    keepalive_timeout 60s;\n    \
             keepalive_requests 10000;\n    client_max_body_size 10m;\n    \
             large_client_header_buffers 4 64k;\n    \
             location = /status/203 {{ return 203 \"sentinel\\n\"; }}\n    \
             location / {{ return 200 \"ok\\n\"; }}\n  }}"
        ),
        port,
        None,
    );
    let ngx_addr: SocketAddr = ngx.addr().parse().unwrap();
    let kap = serve_json(&[
        "--keepalive-timeout",
        "60s",
        "--max-requests",
        "0",
        "--max-header-bytes",
        "65536",
    ]);
    let kap_addr = kap.socket_addr();

    let mut cases = http1::valid();
    cases.extend(http1::malformed());
    cases.push(Case {
        name: "post_1m",
        bytes: http1::post_length(1_000_000),
        head: false,
    });
    cases.push(Case {
        name: "chunked_300k",
        bytes: http1::post_chunked(300_000, 8192),
        head: false,
    });
    let mut differ: BTreeMap<&str, String> = BTreeMap::new();
    let mut compared = 0;
    for case in &cases {
        let b = &case.bytes;
        let mut cuts: Vec<Vec<&[u8]>> = vec![vec![b]];
        for at in [1, b.len() / 3, b.len() / 2, b.len() - 1] {
            if at > 0 && at < b.len() {
                let (x, y) = b.split_at(at);
                cuts.push(vec![x, y]);
            }
        }
        for pieces in cuts {
            let n = ask(ngx_addr, case, pieces.clone());
            let k = ask(kap_addr, case, pieces.clone());
            compared += 1;
            if n != k {
                differ.insert(
                    case.name,
                    format!("nginx {n:?}, kaprobe {k:?} in {} pieces", pieces.len()),
                );
            }
        }
    }
    eprintln!("{compared} exchanges compared; differences: {differ:#?}");
    let listed: Vec<&str> = DELIBERATE.iter().map(|(n, _)| *n).collect();
    let found: Vec<&str> = differ.keys().copied().collect();
    assert_eq!(
        found, listed,
        "differences from nginx other than the documented ones: {differ:#?}"
    );
    // The valid requests all succeed at both, with the same connection fate.
    for case in http1::valid() {
        let k = ask(kap_addr, &case, vec![&case.bytes]);
        assert!(k.0.iter().all(|c| *c == 2), "{}: {k:?}", case.name);
    }
}
