//! Request heads as the clients send them.

/// The `User-Agent` every kaprobe client sends.
pub const USER_AGENT: &str = concat!("kaprobe/", env!("CARGO_PKG_VERSION"));

/// Write a request: the request line, `Host`, then `fields` in order. With a body, a
/// `Content-Length` field follows the others, then the empty line and the body.
pub fn write_request(
    method: &str,
    target: &str,
    version: &str,
    host: &str,
    fields: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Vec<u8> {
    write(method, target, version, Some(host), fields, body)
}

/// Write a request whose fields, `Host` included, are all in `fields`, in order (the
/// user-shaped requests of `-H`); with a body, `Content-Length` follows them.
pub fn write_request_fields(
    method: &str,
    target: &str,
    version: &str,
    fields: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Vec<u8> {
    write(method, target, version, None, fields, body)
}

fn write(
    method: &str,
    target: &str,
    version: &str,
    host: Option<&str>,
    fields: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + body.map_or(0, <[u8]>::len));
    for part in [method, " ", target, " ", version, "\r\n"] {
        out.extend_from_slice(part.as_bytes());
    }
    let host = host.map(|h| ("Host", h));
    for (name, value) in host.iter().chain(fields) {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(body) = body {
        out.extend_from_slice(b"Content-Length: ");
        out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
        out.extend_from_slice(b"\r\n\r\n");
        out.extend_from_slice(body);
    } else {
        out.extend_from_slice(b"\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_without_body_ends_with_the_empty_line() {
        let r = write_request(
            "GET",
            "/a?b=1",
            "HTTP/1.1",
            "h:8080",
            &[("User-Agent", USER_AGENT), ("Accept", "*/*")],
            None,
        );
        let want = format!(
            "GET /a?b=1 HTTP/1.1\r\nHost: h:8080\r\nUser-Agent: {USER_AGENT}\r\nAccept: */*\r\n\r\n"
        );
        assert_eq!(r, want.as_bytes());
    }

    #[test]
    fn request_with_body_has_its_length_last() {
        let r = write_request(
            "POST",
            "/publish",
            "HTTP/1.0",
            "h",
            &[("Content-Type", "text/plain")],
            Some(b"hi\n"),
        );
        assert_eq!(
            r,
            b"POST /publish HTTP/1.0\r\nHost: h\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nhi\n"
        );
    }

    #[test]
    fn user_shaped_request_keeps_its_fields_in_order_host_included() {
        let r = write_request_fields(
            "GET",
            "/",
            "HTTP/1.1",
            &[("X-A", "1"), ("Host", "svc.internal"), ("X-B", "2")],
            Some(b""),
        );
        assert_eq!(
            r,
            b"GET / HTTP/1.1\r\nX-A: 1\r\nHost: svc.internal\r\nX-B: 2\r\nContent-Length: 0\r\n\r\n"
        );
    }
}
