//! The accept loop and per-connection request handling.

use crate::client::write_loop;
use crate::codec::{FrameCodec, NetError};
use counter_proto::{ClientError, Frame, Msg};
use futures::StreamExt;
use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::codec::FramedRead;

/// Limits of a server.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Connections served at once; further connections wait in the accept queue.
    pub max_connections: usize,
    /// Requests of one connection being handled at once; the reader pauses beyond it.
    pub max_inflight_per_conn: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_connections: 1024,
            max_inflight_per_conn: 4096,
        }
    }
}

/// Serves `listener` forever: every request frame is handed to `handler` concurrently and its
/// reply is sent back with the request's id. A bad frame (garbage, oversized, unknown version)
/// gets one error frame (id 0, kind `invalid`) and closes that connection; others are unaffected.
pub async fn serve<H, F>(listener: TcpListener, config: ServerConfig, handler: H)
where
    H: Fn(Msg) -> F + Send + Sync + Clone + 'static,
    F: Future<Output = Msg> + Send + 'static,
{
    let limit = Arc::new(Semaphore::new(config.max_connections));
    let mut backoff = Duration::from_millis(10);
    loop {
        let permit = limit.clone().acquire_owned().await.expect("never closed");
        let (stream, peer) = match listener.accept().await {
            Ok(s) => {
                backoff = Duration::from_millis(10);
                s
            }
            Err(e) => {
                // Typically out of file descriptors: wait for some to free up.
                tracing::warn!(error = %e, "accept failed; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let config = config.clone();
        tokio::spawn(async move {
            serve_conn(stream, peer.to_string(), config, handler).await;
            drop(permit);
        });
    }
}

async fn serve_conn<H, F>(
    stream: tokio::net::TcpStream,
    peer: String,
    config: ServerConfig,
    handler: H,
) where
    H: Fn(Msg) -> F + Send + Sync + Clone + 'static,
    F: Future<Output = Msg> + Send + 'static,
{
    let (read, write) = stream.into_split();
    let (tx, rx) = mpsc::channel::<Frame>(config.max_inflight_per_conn);
    let writer = tokio::spawn(write_loop(write, rx, Arc::new(AtomicBool::new(false))));
    let inflight = Arc::new(Semaphore::new(config.max_inflight_per_conn));
    let mut frames = FramedRead::new(read, FrameCodec::default());
    while let Some(next) = frames.next().await {
        match next {
            Ok(Frame { id, msg }) => {
                let permit = inflight
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("never closed");
                let handler = handler.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let reply = handler(msg).await;
                    let _ = tx.send(Frame { id, msg: reply }).await;
                    drop(permit);
                });
            }
            Err(NetError::Io(e)) => {
                tracing::debug!(%peer, error = %e, "connection read failed");
                break;
            }
            Err(e) => {
                tracing::warn!(%peer, error = %e, "closing connection after a bad frame");
                let _ = tx
                    .send(Frame {
                        id: 0,
                        msg: Msg::Error(ClientError::invalid(e.to_string())),
                    })
                    .await;
                break;
            }
        }
    }
    // Let in-flight requests finish and their replies go out, then close.
    drop(tx);
    let _ = writer.await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Conn;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn echo_server() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(serve(listener, ServerConfig::default(), |msg| async move {
            match msg {
                Msg::Value(v) => {
                    // Later requests answer sooner: replies must still find their callers.
                    tokio::time::sleep(Duration::from_millis((100 - v.clamp(0, 100)) as u64)).await;
                    Msg::Value(v * 2)
                }
                other => other,
            }
        }));
        addr
    }

    #[tokio::test]
    async fn many_requests_share_one_connection() {
        let addr = echo_server().await;
        let conn = Arc::new(Conn::connect(&addr, Duration::from_secs(1)).await.unwrap());
        let mut calls = Vec::new();
        for v in 0..100 {
            let conn = conn.clone();
            calls.push(tokio::spawn(async move {
                conn.call(Msg::Value(v), Duration::from_secs(5)).await
            }));
        }
        for (v, call) in calls.into_iter().enumerate() {
            assert_eq!(call.await.unwrap(), Ok(Msg::Value(v as i64 * 2)));
        }
    }

    #[tokio::test]
    async fn garbage_closes_only_its_own_connection() {
        let addr = echo_server().await;
        let good = Conn::connect(&addr, Duration::from_secs(1)).await.unwrap();
        for garbage in [
            &b"\xff\xff\xff\xffhello"[..],
            &[0, 0, 0, 4, 0xde, 0xad, 0xbe, 0xef][..],
            &[0, 0, 0, 2, 9, 0][..], // unknown protocol version 9
        ] {
            let mut bad = tokio::net::TcpStream::connect(&addr).await.unwrap();
            bad.write_all(garbage).await.unwrap();
            let mut reply = Vec::new();
            tokio::time::timeout(Duration::from_secs(5), bad.read_to_end(&mut reply))
                .await
                .expect("server closes the bad connection")
                .unwrap();
            let mut codec = FrameCodec::default();
            let mut buf = bytes::BytesMut::from(&reply[..]);
            let frame = tokio_util::codec::Decoder::decode(&mut codec, &mut buf)
                .unwrap()
                .expect("an error frame before closing");
            assert!(matches!(
                frame.msg,
                Msg::Error(ClientError {
                    kind: counter_proto::ErrorKind::Invalid,
                    ..
                })
            ));
        }
        assert_eq!(
            good.call(Msg::Value(1), Duration::from_secs(5)).await,
            Ok(Msg::Value(2))
        );
    }

    #[tokio::test]
    async fn a_call_to_nowhere_is_not_sent_and_a_silent_peer_is_lost() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        let err = Conn::connect(&addr, Duration::from_secs(1))
            .await
            .err()
            .unwrap();
        assert!(!err.was_sent());

        // A peer that accepts and never answers.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let _hold = tokio::spawn(async move {
            let (_s, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(10)).await;
        });
        let conn = Conn::connect(&addr, Duration::from_secs(1)).await.unwrap();
        let err = conn
            .call(Msg::Value(1), Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(err.was_sent(), "{err}");
    }
}
