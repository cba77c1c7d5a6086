//! A bound on the client connections a node holds open at once.
//!
//! Each accepted connection holds a slot until it closes; past the bound ([`CONNECTIONS_MAX`] by
//! default, `--max-connections`) a new connection is closed as soon as it is accepted (counted
//! in `capkv_connections_refused_total`), before it costs a TLS handshake or an HTTP/2 session.
//! Together with the bound on requests in flight ([`super::gate`]) and HTTP/2's stream limit
//! per connection, this keeps a flood of clients from growing a node without bound. The peer
//! port is not bounded: members need few connections, and must always get them.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::Connected;

/// Client connections a node holds open at once, by default.
pub const CONNECTIONS_MAX: usize = 1024;

/// A connection that frees its slot when it closes.
pub struct Counted<IO> {
    io: IO,
    _slot: OwnedSemaphorePermit,
}

/// Keeps at most `max` of the connections `incoming` yields open at once; closes the others.
pub fn bounded<IO, E>(
    incoming: impl Stream<Item = Result<IO, E>> + Send + 'static,
    max: usize,
) -> impl Stream<Item = Result<Counted<IO>, E>> + Send + 'static
where
    IO: Send + 'static,
    E: Send + 'static,
{
    let slots = Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS)));
    incoming.filter_map(move |accepted| {
        let slots = slots.clone();
        async move {
            match accepted {
                Err(e) => Some(Err(e)),
                Ok(io) => match slots.try_acquire_owned() {
                    Ok(slot) => Some(Ok(Counted { io, _slot: slot })),
                    Err(_) => {
                        metrics::counter!("capkv_connections_refused_total").increment(1);
                        tracing::warn!(
                            max,
                            "a client connection was closed: the node holds its limit of connections"
                        );
                        None
                    }
                },
            }
        }
    })
}

impl<IO: Connected> Connected for Counted<IO> {
    type ConnectInfo = IO::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Counted<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Counted<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, DuplexStream};

    use super::*;

    #[tokio::test]
    async fn past_the_bound_a_connection_is_closed_and_a_closed_one_frees_its_slot() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Result<DuplexStream, std::io::Error>>();
        let mut accepted = Box::pin(bounded(tokio_stream::wrappers::UnboundedReceiverStream::new(rx), 2));
        let mut clients = Vec::new();
        for _ in 0..3 {
            let (client, server) = tokio::io::duplex(64);
            clients.push(client);
            tx.send(Ok(server)).unwrap();
        }
        let first = accepted.next().await.unwrap().unwrap();
        let _second = accepted.next().await.unwrap().unwrap();
        // Polling on takes the third and closes it (then waits for a fourth).
        let waited = tokio::time::timeout(std::time::Duration::from_millis(100), accepted.next()).await;
        assert!(waited.is_err(), "the third connection is not handed on");
        let mut byte = [0u8; 1];
        assert_eq!(
            clients[2].read(&mut byte).await.unwrap(),
            0,
            "the third connection is closed"
        );
        drop(first);
        let (_client, server) = tokio::io::duplex(64);
        tx.send(Ok(server)).unwrap();
        assert!(
            accepted.next().await.unwrap().is_ok(),
            "a closed connection freed its slot"
        );
    }
}
