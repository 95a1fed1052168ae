//! A connection wrapper that reports the HTTP/2 frames crossing it, each with the time it was
//! read or written. It sits between the socket (or the TLS stream) and the `h2` crate, so what
//! it reports is what was really on the wire, in order.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc::UnboundedSender;

use super::{Frame, Scanner};

/// Which way a frame went, seen from the side that owns the [`Tap`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// Read from the peer.
    In,
    /// Written to the peer.
    Out,
}

/// One frame seen by a [`Tap`].
#[derive(Clone, Debug)]
pub struct TapEvent {
    pub dir: Dir,
    pub at: Instant,
    pub frame: Frame,
}

/// Wraps `io` and sends a [`TapEvent`] for each complete frame read or written. A closed
/// receiver is not an error: the connection goes on unwatched.
pub struct Tap<T> {
    io: T,
    read: Scanner,
    write: Scanner,
    events: UnboundedSender<TapEvent>,
    scratch: Vec<Frame>,
}

impl<T> Tap<T> {
    /// For a server: what it reads starts with the client preface.
    pub fn server(io: T, events: UnboundedSender<TapEvent>) -> Tap<T> {
        Tap {
            io,
            read: Scanner::client_to_server(),
            write: Scanner::server_to_client(),
            events,
            scratch: Vec::new(),
        }
    }

    /// For a client: what it writes starts with the client preface.
    pub fn client(io: T, events: UnboundedSender<TapEvent>) -> Tap<T> {
        Tap {
            io,
            read: Scanner::server_to_client(),
            write: Scanner::client_to_server(),
            events,
            scratch: Vec::new(),
        }
    }

    /// The wrapped connection.
    pub fn get_ref(&self) -> &T {
        &self.io
    }

    /// Bytes read and written so far.
    pub fn bytes(&self) -> (u64, u64) {
        (self.read.bytes, self.write.bytes)
    }

    fn report(&mut self, dir: Dir, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let scanner = match dir {
            Dir::In => &mut self.read,
            Dir::Out => &mut self.write,
        };
        scanner.feed(bytes, &mut self.scratch);
        if self.scratch.is_empty() {
            return;
        }
        let at = Instant::now();
        for frame in self.scratch.drain(..) {
            // a receiver that went away just stops listening
            let _ = self.events.send(TapEvent { dir, at, frame });
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tap<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let filled = buf.filled();
            let new = filled.get(before..).unwrap_or_default().to_vec();
            this.report(Dir::In, &new);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tap<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            this.report(Dir::Out, buf.get(..n).unwrap_or_default());
        }
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(mut n)) = polled {
            let mut written = Vec::with_capacity(n);
            for b in bufs {
                let take = n.min(b.len());
                written.extend_from_slice(&b[..take]);
                n -= take;
                if n == 0 {
                    break;
                }
            }
            this.report(Dir::Out, &written);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::h2wire::{goaway, ping, PREFACE};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn reports_frames_both_ways_in_order() {
        let (a, mut b) = tokio::io::duplex(64);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut tap = Tap::server(a, tx);
        let peer = tokio::spawn(async move {
            let mut bytes = PREFACE.to_vec();
            bytes.extend(ping(false, *b"abcdefgh"));
            b.write_all(&bytes).await?;
            let mut back = vec![0u8; 17 + 9 + 8];
            b.read_exact(&mut back).await?;
            Ok::<_, io::Error>(back)
        });
        let mut got = vec![0u8; 24 + 17];
        tap.read_exact(&mut got).await.expect("read");
        let mut reply = ping(true, *b"abcdefgh");
        reply.extend(goaway(1, 0, b""));
        tap.write_all(&reply).await.expect("write");
        let back = peer.await.expect("join").expect("peer");
        assert_eq!(back, reply);
        let mut seen = Vec::new();
        while let Ok(e) = rx.try_recv() {
            seen.push((e.dir, e.frame));
        }
        assert_eq!(
            seen,
            vec![
                (
                    Dir::In,
                    Frame::Ping {
                        ack: false,
                        opaque: *b"abcdefgh"
                    }
                ),
                (
                    Dir::Out,
                    Frame::Ping {
                        ack: true,
                        opaque: *b"abcdefgh"
                    }
                ),
                (
                    Dir::Out,
                    Frame::GoAway {
                        last_stream: 1,
                        code: 0,
                        debug: vec![]
                    }
                ),
            ]
        );
    }
}
