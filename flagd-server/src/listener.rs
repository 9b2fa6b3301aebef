//! Accepting connections under a cap, without letting sockets that never complete a request
//! starve the server.
//!
//! At most `max_connections` are open. When the cap is reached, a new connection evicts the
//! oldest one that has not yet sent a complete request head: first one that has sent nothing at
//! all (an idle socket, or one its peer already closed), else one still trickling its headers (a
//! slowloris). Those cost an attacker nothing to keep, so they must not be able to lock out
//! `/healthz` or real clients. A connection whose request is being read or served, or that has
//! been answered (keep-alive clients, stream sessions), is never evicted; when every connection
//! is such one, accepting waits. The header timeout closes silent and slow sockets in any case.

use std::collections::BTreeMap;
use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
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
    metrics: Arc<crate::metrics::Metrics>,
}

#[derive(Debug, Default)]
struct Slots {
    next_id: u64,
    live: BTreeMap<u64, Slot>,
}

#[derive(Debug)]
struct Slot {
    /// `SILENT`, `SPEAKING` or `REQUESTED`; only ever increases.
    progress: Arc<AtomicU8>,
    evict: CancellationToken,
}

/// Nothing received yet.
const SILENT: u8 = 0;
/// Bytes received, but no complete request head yet.
const SPEAKING: u8 = 1;
/// A request head was parsed: the connection is a real client from now on.
const REQUESTED: u8 = 2;

impl Connections {
    /// At most `cap` open connections; evictions are counted in `metrics`.
    pub fn new(cap: usize, metrics: Arc<crate::metrics::Metrics>) -> Arc<Connections> {
        Arc::new(Connections {
            cap: cap.max(1),
            slots: Mutex::new(Slots::default()),
            metrics,
        })
    }

    fn slots(&self) -> MutexGuard<'_, Slots> {
        // Inserts and removes only: the map stays consistent whatever panicked.
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A place for a new connection, evicting the oldest silent one, else the oldest one still
    /// sending its request head, when full; `None` when every open connection has sent a request
    /// (the caller waits and tries again). Without `evict`, `None` whenever full.
    fn admit(self: &Arc<Self>, evict: bool) -> Option<Admission> {
        let mut slots = self.slots();
        if slots.live.len() >= self.cap {
            if !evict {
                return None;
            }
            let oldest_at = |level: u8| {
                slots
                    .live
                    .iter()
                    .find(|(_, slot)| slot.progress.load(Ordering::Relaxed) == level)
                    .map(|(id, _)| *id)
            };
            let victim = oldest_at(SILENT).or_else(|| oldest_at(SPEAKING))?;
            if let Some(slot) = slots.live.remove(&victim) {
                slot.evict.cancel();
                self.metrics.connection_closed("evicted");
            }
        }
        let id = slots.next_id;
        slots.next_id += 1;
        let progress = Arc::new(AtomicU8::new(SILENT));
        let evict = CancellationToken::new();
        slots.live.insert(
            id,
            Slot {
                progress: progress.clone(),
                evict: evict.clone(),
            },
        );
        Some(Admission {
            connections: self.clone(),
            id,
            progress,
            evicted: Box::pin(evict.cancelled_owned()),
        })
    }
}

/// A connection's place; released when the connection is dropped.
struct Admission {
    connections: Arc<Connections>,
    id: u64,
    progress: Arc<AtomicU8>,
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
                    if let Some(admission) = connections.admit(false) {
                        break admission;
                    }
                    // Full. A moment first for sockets whose peers already left to free their
                    // slots and for requests already sent to be parsed, so that the eviction
                    // falls on a socket that is really idle or slow.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    match connections.admit(true) {
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
    /// Waits up to `within` for the peer's first byte (hyper's header timer only starts at the
    /// first byte, so a socket that never sends one is bounded here): `Ok(true)` when one
    /// arrived, `Ok(false)` when the peer closed or failed or the connection was evicted, `Err`
    /// when it stayed silent.
    pub async fn first_byte(
        &mut self,
        within: Duration,
    ) -> Result<bool, tokio::time::error::Elapsed> {
        let Connection { stream, admission } = self;
        let mut byte = [0u8; 1];
        let arrived = tokio::time::timeout(within, async {
            tokio::select! {
                peeked = stream.peek(&mut byte) => matches!(peeked, Ok(n) if n > 0),
                () = admission.evicted.as_mut() => false,
            }
        })
        .await?;
        if arrived {
            let _ = admission.progress.compare_exchange(
                SILENT,
                SPEAKING,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
        Ok(arrived)
    }

    /// Marks that a complete request head arrived: the connection can no longer be evicted.
    /// Returned as a handle for the service, which sees each parsed request.
    pub fn request_marker(&self) -> RequestMarker {
        RequestMarker(self.admission.progress.clone())
    }

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
        Pin::new(&mut this.stream).poll_write(cx, buf)
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
        Pin::new(&mut this.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// See [`Connection::request_marker`].
#[derive(Debug, Clone)]
pub struct RequestMarker(Arc<AtomicU8>);

impl RequestMarker {
    /// A request head was parsed on this connection.
    pub fn requested(&self) {
        self.0.store(REQUESTED, Ordering::Relaxed);
    }
}
