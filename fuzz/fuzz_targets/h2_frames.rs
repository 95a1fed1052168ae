//! Fuzz the HTTP/2 frame scanner that watches `serve --http2` and `probe h2c://` connections:
//! no input panics, and the frames found do not depend on how the bytes were cut.
#![no_main]

use kaprobe_http::h2wire::Scanner;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    for start in [Scanner::client_to_server, Scanner::server_to_client] {
        let mut whole = start();
        let mut a = Vec::new();
        whole.feed(data, &mut a);
        let mut cut = start();
        let mut b = Vec::new();
        cut.feed(&data[..split], &mut b);
        cut.feed(&data[split..], &mut b);
        assert_eq!(a, b);
        assert_eq!(whole.lost(), cut.lost());
    }
});
