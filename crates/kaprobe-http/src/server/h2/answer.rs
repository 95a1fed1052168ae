//! One HTTP/2 stream, answered with the endpoints the HTTP/1.1 server answers (routed by the
//! same code): the request body is read (and its flow-control window given back) before the
//! answer, and a large answer is sent as the client's window allows, so the stream is open
//! exactly until its last byte is handed over.

use std::rc::Rc;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::RecvStream;
use http::{header, HeaderValue, Request, Response};

use crate::server::parse::{route, Route};
use crate::server::proto::{reason_phrase_line, BODY, JSON, OCTETS, PROM, TEXT};
use crate::server::shared::Shared;
use crate::server::stats::Stats;

/// Bodies up to this size are handed to `h2` in one piece (within the initial window).
const ONE_PIECE: usize = 16 * 1024;

/// Answer one stream. Returns true when the request asked the connection to close (`/close`).
pub(crate) async fn answer(
    req: Request<RecvStream>,
    mut tx: SendResponse<Bytes>,
    sh: Rc<Shared>,
) -> bool {
    let (parts, mut body) = req.into_parts();
    let target = parts
        .uri
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str);
    let headers: Vec<httparse::Header<'_>> = parts
        .headers
        .iter()
        .map(|(n, v)| httparse::Header {
            name: n.as_str(),
            value: v.as_bytes(),
        })
        .collect();
    let method = parts.method.as_str();
    let mut r = route(method, 1, target, target, &headers);
    drop(headers);
    // The body, read to its end (or past --max-body-bytes).
    let mut got: u64 = 0;
    while let Some(chunk) = body.data().await {
        let Ok(chunk) = chunk else {
            return false;
        };
        got += chunk.len() as u64;
        let _ = body.flow_control().release_capacity(chunk.len());
        if got > sh.cfg().max_body_bytes {
            r = Route::Invalid(413, "request body larger than --max-body-bytes");
            break;
        }
    }
    if let Route::Delay(d) = r {
        tokio::time::sleep(d).await;
    }
    let close = r == Route::Close;
    let stats = &sh.stats;
    let (status, ctype, data): (u16, &'static [u8], Bytes) = match r {
        Route::Root | Route::Close | Route::Delay(_) => (200, TEXT, Bytes::from_static(BODY)),
        Route::Status(c) => (c, TEXT, Bytes::from_static(reason_phrase_line(c))),
        Route::Bytes(n) => (
            200,
            OCTETS,
            Bytes::from(vec![b'x'; usize::try_from(n).unwrap_or(0)]),
        ),
        Route::Headers(s) => (200, JSON, Bytes::from(s)),
        Route::Stats => (200, JSON, Bytes::from(stats.json(sh.shutting_down.get()))),
        Route::Metrics => (200, PROM, Bytes::from(stats.prometheus())),
        Route::Push(_) => {
            Stats::add(&stats.bad_requests, 1);
            (
                501,
                TEXT,
                Bytes::from_static(b"push channels are served over HTTP/1.1\n"),
            )
        }
        Route::NotFound => {
            Stats::add(&stats.bad_requests, 1);
            (404, TEXT, Bytes::from_static(b"not found\n"))
        }
        Route::Invalid(c, msg) => {
            Stats::add(&stats.bad_requests, 1);
            (c, TEXT, Bytes::from(format!("{msg}\n")))
        }
    };
    let bodyless = status == 204 || status == 304;
    let mut resp = Response::new(());
    *resp.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
    let h = resp.headers_mut();
    h.insert(header::SERVER, HeaderValue::from_static("kaprobe"));
    if let Ok(d) = crate::server::date::with_date(HeaderValue::from_bytes) {
        h.insert(header::DATE, d);
    }
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(text(ctype)));
    if !bodyless {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(data.len()));
    }
    let send_body = !bodyless && parts.method != http::Method::HEAD && !data.is_empty();
    let Ok(mut out) = tx.send_response(resp, !send_body) else {
        return close;
    };
    if send_body {
        send(&mut out, data).await;
    }
    close
}

fn text(ctype: &'static [u8]) -> &'static str {
    match ctype {
        JSON => "application/json",
        OCTETS => "application/octet-stream",
        PROM => "text/plain; version=0.0.4",
        _ => "text/plain",
    }
}

/// Send `data` and end the stream, as fast as the client's flow-control window allows.
async fn send(out: &mut h2::SendStream<Bytes>, mut data: Bytes) {
    if data.len() <= ONE_PIECE {
        let _ = out.send_data(data, true);
        return;
    }
    while !data.is_empty() {
        out.reserve_capacity(data.len().min(1 << 20));
        let n = match std::future::poll_fn(|cx| out.poll_capacity(cx)).await {
            Some(Ok(n)) if n > 0 => n.min(data.len()),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return,
        };
        let piece = data.split_to(n);
        if out.send_data(piece, data.is_empty()).is_err() {
            return;
        }
    }
}
