//! `serve --tls-cert/--tls-key`: TLS on every listener (rustls), ALPN offering `h2` (with
//! --http2) and `http/1.1`, and the connection handed to HTTP/2 or to HTTP/1.1 by what was
//! agreed. HTTP/1.1 over TLS runs the same protocol state machine ([`super::session`]) over
//! the TLS stream; push channels stay on plain HTTP/1.1.

use std::rc::Rc;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{sleep, sleep_until, Instant};
use tokio_rustls::TlsAcceptor;

use super::close::{io_reason, Ending, Reason};
use super::config::TlsFiles;
use super::proto::{error_response, Ctx, Outcome};
use super::session::Session;
use super::shared::{Ctl, Shared, Signal};
use super::stats::Stats;
use crate::Error;

/// Build the acceptor from the PEM files: the certificate chain (leaf first) and the key
/// (PKCS#8, PKCS#1 or SEC1). ALPN offers `h2` first when `http2`, then `http/1.1`.
///
/// # Errors
/// [`Error::Tls`] naming the flag and file when a file cannot be read or used.
pub fn acceptor(files: &TlsFiles, http2: bool) -> Result<TlsAcceptor, Error> {
    let err = |flag: &str, path: &std::path::Path, reason: String| Error::Tls {
        what: format!("{flag} {}", path.display()),
        reason,
    };
    let cert_bytes =
        std::fs::read(&files.cert).map_err(|e| err("--tls-cert", &files.cert, e.to_string()))?;
    let chain = CertificateDer::pem_slice_iter(&cert_bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err("--tls-cert", &files.cert, format!("not a PEM file ({e})")))?;
    if chain.is_empty() {
        return Err(err(
            "--tls-cert",
            &files.cert,
            "the file holds no PEM certificate".into(),
        ));
    }
    let key_bytes =
        std::fs::read(&files.key).map_err(|e| err("--tls-key", &files.key, e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| {
        err(
            "--tls-key",
            &files.key,
            format!("no PEM private key found ({e})"),
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls {
            what: "setting up protocol versions".into(),
            reason: e.to_string(),
        })?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| {
            err(
                "--tls-key",
                &files.key,
                format!("does not fit the certificate ({e})"),
            )
        })?;
    config.alpn_protocols = if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Run one accepted TLS connection: the handshake (within --header-timeout), then HTTP/2 or
/// HTTP/1.1 by ALPN.
pub(crate) async fn serve(
    std: std::net::TcpStream,
    ctl: Rc<Ctl>,
    sh: Rc<Shared>,
    acceptor: TlsAcceptor,
) {
    let _ = std.set_nodelay(true);
    let Ok(tcp) = tokio::net::TcpStream::from_std(std) else {
        sh.report(&ctl, Reason::IoError, "register", Ending::PeerGone);
        sh.unregister(&ctl);
        return;
    };
    let tls = match tokio::time::timeout(sh.cfg().header_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(_)) => {
            sh.report(
                &ctl,
                Reason::TlsHandshake,
                "handshake failed",
                Ending::PeerGone,
            );
            sh.unregister(&ctl);
            return;
        }
        Err(_) => {
            sh.report(
                &ctl,
                Reason::TlsHandshake,
                "handshake not done in time",
                Ending::Fin,
            );
            sh.unregister(&ctl);
            return;
        }
    };
    Stats::add(&sh.stats.tls_connections, 1);
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    if h2 && sh.cfg().http2 {
        super::h2::serve(tls, ctl, sh).await;
    } else {
        serve_h1(tls, ctl, sh).await;
    }
}

/// Wait for a kill signal from the server (shutdown, eviction).
fn killed(ctl: &Ctl) -> impl std::future::Future<Output = Reason> + '_ {
    std::future::poll_fn(move |cx| match ctl.signal() {
        Some(Signal::Kill(r)) => std::task::Poll::Ready(r),
        _ => {
            ctl.register(cx.waker());
            std::task::Poll::Pending
        }
    })
}

/// HTTP/1.1 over any stream (here: TLS), with the keep-alive timeout, the header timeout and
/// the request limit of the plain server. Push requests get 501.
pub(crate) async fn serve_h1<T>(mut io: T, ctl: Rc<Ctl>, sh: Rc<Shared>)
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let cfg = sh.cfg();
    let mut session = Session::default();
    let mut buf = vec![0u8; 16 * 1024];
    let mut out = Vec::new();
    let mut idle_since = Instant::now();
    let mut partial_since: Option<Instant> = None;
    let (reason, detail, ending) = 'conn: loop {
        let deadline = if session.is_idle() {
            partial_since = None;
            idle_since + cfg.keepalive_timeout
        } else {
            *partial_since.get_or_insert_with(Instant::now) + cfg.header_timeout
        };
        let n = tokio::select! {
            biased;
            r = io.read(&mut buf) => match r {
                Ok(0) if session.is_idle() => break (Reason::ClientFin, "", Ending::PeerGone),
                Ok(0) => break (Reason::ClientFin, "mid-request", Ending::PeerGone),
                Ok(n) => n,
                Err(e) => break (io_reason(&e), "", Ending::PeerGone),
            },
            r = killed(&ctl), if session.is_idle() => break (r, "", Ending::Fin),
            () = sleep_until(deadline) => {
                if session.is_idle() {
                    break (Reason::IdleTimeout, "", Ending::Fin);
                }
                out.clear();
                Stats::add(&sh.stats.bad_requests, 1);
                error_response(&mut out, 408, "request head not completed in time");
                let _ = io.write_all(&out).await;
                break (Reason::HeaderTimeout, "request head not completed in time", Ending::Fin);
            }
        };
        let mut input = &buf[..n];
        loop {
            out.clear();
            let ctx = Ctx {
                cfg: &cfg,
                stats: &sh.stats,
                shutting_down: sh.shutting_down.get(),
            };
            let outcome = session.feed(input, &mut out, &ctx);
            input = &[];
            ctl.served.set(session.served());
            let written = tokio::time::timeout(cfg.header_timeout, io.write_all(&out)).await;
            match written {
                Ok(Ok(())) => {}
                Ok(Err(e)) => break 'conn (io_reason(&e), "", Ending::PeerGone),
                Err(_) => {
                    break 'conn (Reason::SendTimeout, "client not reading", Ending::PeerGone)
                }
            }
            if !out.is_empty() {
                idle_since = Instant::now();
            }
            match outcome {
                Outcome::NeedMore => break,
                Outcome::Close(r, d) => break 'conn (r, d, Ending::Fin),
                Outcome::Push => {
                    out.clear();
                    Stats::add(&sh.stats.bad_requests, 1);
                    error_response(
                        &mut out,
                        501,
                        "push channels are served over plain HTTP/1.1",
                    );
                    let _ = io.write_all(&out).await;
                    break 'conn (Reason::BadRequest, "push channel over TLS", Ending::Fin);
                }
                Outcome::Delay(d) => {
                    sleep(d).await;
                    out.clear();
                    let ctx = Ctx {
                        cfg: &cfg,
                        stats: &sh.stats,
                        shutting_down: sh.shutting_down.get(),
                    };
                    let close = session.proto.finish_delayed(&mut out, &ctx);
                    ctl.served.set(session.served());
                    if let Err(e) = io.write_all(&out).await {
                        break 'conn (io_reason(&e), "", Ending::PeerGone);
                    }
                    idle_since = Instant::now();
                    if let Some(r) = close {
                        break 'conn (r, "", Ending::Fin);
                    }
                    if !session.has_pending() {
                        break;
                    }
                }
            }
        }
    };
    if ending == Ending::Fin {
        let _ = tokio::time::timeout(cfg.header_timeout, io.shutdown()).await;
        sh.report(&ctl, reason, detail, ending);
        super::h2::linger(&mut io, &sh).await;
    } else {
        sh.report(&ctl, reason, detail, ending);
    }
    drop(io);
    sh.unregister(&ctl);
}
