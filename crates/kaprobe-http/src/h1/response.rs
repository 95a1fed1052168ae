//! Response heads as the clients read them.

/// A complete response head: version, status and fields (names as sent, values trimmed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// None when the status line had none (httparse fills it for every complete head).
    pub status: Option<u16>,
    pub fields: Vec<(String, String)>,
}

/// Parse a response head from the start of `buf`, taking at most `N` fields: the head and its
/// length once it is complete, `None` while more bytes are needed.
///
/// # Errors
/// httparse's error for bytes that are not an HTTP/1 response head.
pub fn parse_response_head<const N: usize>(
    buf: &[u8],
) -> Result<Option<(ResponseHead, usize)>, httparse::Error> {
    let mut headers = [httparse::EMPTY_HEADER; N];
    let mut parsed = httparse::Response::new(&mut headers);
    match parsed.parse(buf)? {
        httparse::Status::Complete(used) => {
            let fields = parsed
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_string(),
                        String::from_utf8_lossy(h.value).trim().to_string(),
                    )
                })
                .collect();
            let head = ResponseHead {
                minor_version: parsed.version.unwrap_or(1),
                status: parsed.code,
                fields,
            };
            Ok(Some((head, used)))
        }
        httparse::Status::Partial => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complete_head_gives_fields_and_length_partial_gives_none() {
        let buf = b"HTTP/1.0 200 OK\r\nX-A:  v \r\nConnection: close\r\n\r\nbody";
        let (h, used) = parse_response_head::<8>(buf).unwrap().unwrap();
        assert_eq!(used, buf.len() - 4);
        assert_eq!(h.minor_version, 0);
        assert_eq!(h.status, Some(200));
        assert_eq!(h.fields[0], ("X-A".to_string(), "v".to_string()));
        for cut in 0..used {
            assert_eq!(
                parse_response_head::<8>(&buf[..cut]).unwrap(),
                None,
                "{cut}"
            );
        }
        assert!(parse_response_head::<8>(b"SSH-2.0-x\r\n\r\n").is_err());
        assert_eq!(
            parse_response_head::<1>(buf).unwrap_err(),
            httparse::Error::TooManyHeaders
        );
    }
}
