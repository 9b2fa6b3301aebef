//! Accepting connections under a cap, without letting sockets that never complete a request
//! starve the server.
//!
//! At most `max_connections` are open. When the cap is reached, a new connection evicts the
//! oldest one that has not yet been answered anything (an idle socket, a slowloris trickling a
//! header): those cost the attacker nothing to keep, so they must not be able to lock out
//! `/healthz` or real clients. Connections that have been answered (keep-alive clients, stream
//! sessions) are never evicted; when every connection is such one, accepting waits. hyper's
//! header-read timeout closes idle and slow sockets after a while in any case.

use std::collections::BTreeMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// The open connections, oldest first.
#[derive(Debug)]
pub struct Connections {
    cap: usize,
    slots: Mutex<Slots>,
}

#[derive(Debug, Default)]
struct Slots {
    next_id: u64,
    live: BTreeMap<u64, Slot>,
}

#[derive(Debug)]
struct Slot {
    /// Set once the connection has written anything: it has been answered.
    answered: Arc<AtomicBool>,
    evict: CancellationToken,
}

impl Connections {
    /// At most `cap` open connections.
    pub fn new(cap: usize) -> Arc<Connections> {
        Arc::new(Connections {
            cap: cap.max(1),
            slots: Mutex::new(Slots::default()),
        })
    }

    fn slots(&self) -> MutexGuard<'_, Slots> {
        // Inserts and removes only: the map stays consistent whatever panicked.
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A place for a new connection, evicting the oldest unanswered one when full; `None` when
    /// every open connection has been answered (the caller waits and tries again).
    fn admit(self: &Arc<Self>) -> Option<Admission> {
        let mut slots = self.slots();
        if slots.live.len() >= self.cap {
            let victim = slots
                .live
                .iter()
                .find(|(_, slot)| !slot.answered.load(Ordering::Relaxed))
                .map(|(id, _)| *id)?;
            if let Some(slot) = slots.live.remove(&victim) {
                slot.evict.cancel();
                crate::metrics::connection_closed("evicted");
            }
        }
        let id = slots.next_id;
        slots.next_id += 1;
        let answered = Arc::new(AtomicBool::new(false));
        let evict = CancellationToken::new();
        slots.live.insert(
            id,
            Slot {
                answered: answered.clone(),
                evict: evict.clone(),
            },
        );
        Some(Admission {
            connections: self.clone(),
            id,
            answered,
            evicted: Box::pin(evict.cancelled_owned()),
        })
    }

    /// How many connections are open.
    pub fn open(&self) -> usize {
        self.slots().live.len()
    }
}

/// A connection's place; released when the connection is dropped.
struct Admission {
    connections: Arc<Connections>,
    id: u64,
    answered: Arc<AtomicBool>,
    evicted: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.connections.slots().live.remove(&self.id);
    }
}

/// Accepts the next connection under the cap. The socket is accepted first and then admitted,
/// so an eviction only ever makes room for a connection that is actually waiting.
pub async fn accept(listener: &TcpListener, connections: &Arc<Connections>) -> Connection {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                // Small JSON responses: do not wait for Nagle.
                let _ = stream.set_nodelay(true);
                let admission = loop {
                    match connections.admit() {
                        Some(admission) => break admission,
                        // Every open connection is a real client: wait for one to close.
                        None => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                };
                return Connection { stream, admission };
            }
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// An accepted connection holding its place; it fails with `ConnectionAborted` once evicted.
pub struct Connection {
    stream: TcpStream,
    admission: Admission,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.admission.id)
            .finish()
    }
}

impl Connection {
    fn check_evicted(&mut self, cx: &mut Context<'_>) -> Result<(), io::Error> {
        match self.admission.evicted.as_mut().poll(cx) {
            Poll::Ready(()) => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "evicted: the server is at its connection limit and this connection sent no complete request",
            )),
            Poll::Pending => Ok(()),
        }
    }
}

use std::future::Future as _;

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Err(error) = this.check_evicted(cx) {
            return Poll::Ready(Err(error));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Err(error) = this.check_evicted(cx) {
            return Poll::Ready(Err(error));
        }
        let written = Pin::new(&mut this.stream).poll_write(cx, buf);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            this.admission.answered.store(true, Ordering::Relaxed);
        }
        written
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Err(error) = this.check_evicted(cx) {
            return Poll::Ready(Err(error));
        }
        let written = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            this.admission.answered.store(true, Ordering::Relaxed);
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
