//! One multiplexed connection to a peer.

use crate::codec::FrameCodec;
use bytes::BytesMut;
use counter_proto::{BatchItem, Frame, Msg, MAX_BATCH};
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::{Encoder, FramedRead};

/// How long a batch of writes may take before the connection is declared dead.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Requests queued for the writer before callers wait.
const QUEUE: usize = 4096;

/// Why a call got no reply. The distinction is what makes errors honest: `NotSent` means the
/// request certainly never left this process; `Lost` means it may have reached the peer.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CallError {
    #[error("not sent: {0}")]
    NotSent(String),
    #[error("no reply: {0}")]
    Lost(String),
}

impl CallError {
    pub fn was_sent(&self) -> bool {
        matches!(self, CallError::Lost(_))
    }
}

type Inflight = Arc<Mutex<HashMap<u64, oneshot::Sender<Msg>>>>;

/// A connection on which many requests are in flight at once.
pub struct Conn {
    peer: String,
    tx: mpsc::Sender<Frame>,
    inflight: Inflight,
    next_id: AtomicU64,
    closed: Arc<AtomicBool>,
}

impl Conn {
    /// Connects to `addr` within `timeout`.
    pub async fn connect(addr: &str, timeout: Duration) -> Result<Conn, CallError> {
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(CallError::NotSent(format!("connect to {addr}: {e}"))),
            Err(_) => {
                return Err(CallError::NotSent(format!(
                    "connect to {addr}: timed out after {timeout:?}"
                )))
            }
        };
        let _ = stream.set_nodelay(true);
        let (read, write) = stream.into_split();
        let (tx, rx) = mpsc::channel(QUEUE);
        let inflight: Inflight = Arc::default();
        let closed = Arc::new(AtomicBool::new(false));
        let calls = inflight.clone();
        let busy = move || more_than_one_call(&calls);
        tokio::spawn(write_loop(write, rx, closed.clone(), busy));
        tokio::spawn(read_loop(
            addr.to_string(),
            FramedRead::new(read, FrameCodec::default()),
            inflight.clone(),
            closed.clone(),
        ));
        Ok(Conn {
            peer: addr.to_string(),
            tx,
            inflight,
            next_id: AtomicU64::new(1),
            closed,
        })
    }

    /// Whether the connection has failed (a new one is needed).
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire) || self.tx.is_closed()
    }

    /// Sends `msg` and waits at most `timeout` for its reply.
    pub async fn call(&self, msg: Msg, timeout: Duration) -> Result<Msg, CallError> {
        if self.is_closed() {
            return Err(CallError::NotSent(format!(
                "connection to {} is closed",
                self.peer
            )));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply_tx, reply_rx) = oneshot::channel();
        self.inflight
            .lock()
            .expect("inflight lock")
            .insert(id, reply_tx);
        let guard = Forget {
            inflight: &self.inflight,
            id,
        };
        match tokio::time::timeout(timeout, self.tx.send(Frame { id, msg })).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                return Err(CallError::NotSent(format!(
                    "connection to {} is closed",
                    self.peer
                )))
            }
            Err(_) => {
                return Err(CallError::NotSent(format!(
                    "send queue to {} full for {timeout:?}",
                    self.peer
                )))
            }
        }
        let result = match tokio::time::timeout(timeout, reply_rx).await {
            // The peer read this request after its drain began and ran nothing of it: as good
            // as never sent. Its connection takes nothing more; the next call reconnects.
            Ok(Ok(Msg::Error(e))) if is_draining(&e) => {
                self.closed.store(true, Ordering::Release);
                Err(CallError::NotSent(format!("{}: {}", self.peer, e.message)))
            }
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(CallError::Lost(format!(
                "connection to {} closed before the reply",
                self.peer
            ))),
            Err(_) => Err(CallError::Lost(format!(
                "no reply from {} within {timeout:?}",
                self.peer
            ))),
        };
        drop(guard);
        result
    }
}

/// Removes a request's reply slot however the call ends (reply, timeout, or cancellation).
struct Forget<'a> {
    inflight: &'a Inflight,
    id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        if let Ok(mut map) = self.inflight.lock() {
            map.remove(&self.id);
        }
    }
}

/// A server's answer that it read the request after its drain began, or after it began to
/// close the connection, and ran nothing of it: exactly `<server name> <DRAINING>` or
/// `<server name> <CLOSING>` (`server.rs`), never a handler's message that merely quotes one.
fn is_draining(e: &counter_proto::ClientError) -> bool {
    e.kind == counter_proto::ErrorKind::Unavailable
        && [counter_proto::DRAINING, counter_proto::CLOSING]
            .iter()
            .filter_map(|why| e.message.strip_suffix(why))
            .filter_map(|name| name.strip_suffix(' '))
            .any(|name| !name.is_empty() && !name.contains(' '))
}

/// A client connection's `busy` for [`write_loop`]: more than one call awaits its reply.
fn more_than_one_call(calls: &Inflight) -> bool {
    calls.lock().is_ok_and(|calls| calls.len() > 1)
}

/// Writes queued frames, as many per write as are waiting (at most [`MAX_BATCH`]); the
/// acceptor messages among them go as one [`Msg::Batch`] frame, so that the peer reads, wakes
/// and commits once for all of them (a server's writer carries replies only: never any).
/// `busy`: whether more than one request is in flight on the connection.
pub(crate) async fn write_loop<W: tokio::io::AsyncWrite + Unpin>(
    mut write: W,
    mut rx: mpsc::Receiver<Frame>,
    closed: Arc<AtomicBool>,
    busy: impl Fn() -> bool,
) {
    let mut codec = FrameCodec::default();
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut frames = Vec::with_capacity(MAX_BATCH);
    loop {
        if rx.recv_many(&mut frames, MAX_BATCH).await == 0 {
            break;
        }
        // With other requests in flight on this connection, let the tasks that are ready to
        // run now queue their frames too, so that they share this write (one system call, one
        // segment, one wake-up of the peer) instead of each taking the next one. Not with one
        // request alone: nothing would join it, and the yield would cost a wake-up of its own
        // (an idle worker is called to take the yielded task).
        if busy() {
            tokio::task::yield_now().await;
            while frames.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(frame) => frames.push(frame),
                    Err(_) => break,
                }
            }
        }
        let mut batch = Vec::new();
        for Frame { id, msg } in frames.drain(..) {
            match msg {
                Msg::Acceptor(msg) => batch.push(BatchItem { id, msg }),
                msg => encode_or_log(&mut codec, &Frame { id, msg }, &mut buf),
            }
        }
        encode_batch(&mut codec, batch, &mut buf);
        match tokio::time::timeout(WRITE_TIMEOUT, write.write_all(&buf)).await {
            Ok(Ok(())) => buf.clear(),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "write failed; closing connection");
                break;
            }
            Err(_) => {
                tracing::warn!("write stalled for {WRITE_TIMEOUT:?}; closing connection");
                break;
            }
        }
    }
    closed.store(true, Ordering::Release);
    let _ = write.shutdown().await;
}

fn encode_or_log(codec: &mut FrameCodec, frame: &Frame, buf: &mut BytesMut) {
    if let Err(e) = codec.encode(frame, buf) {
        tracing::error!(error = %e, "dropping a frame that cannot be encoded");
    }
}

/// Encodes `items` as one [`Msg::Batch`] frame (one alone as itself); a batch that outgrows
/// a frame is split in halves until each part fits.
fn encode_batch(codec: &mut FrameCodec, mut items: Vec<BatchItem>, buf: &mut BytesMut) {
    match items.len() {
        0 => {}
        1 => {
            let BatchItem { id, msg } = items.remove(0);
            let msg = Msg::Acceptor(msg);
            encode_or_log(codec, &Frame { id, msg }, buf);
        }
        n => {
            let batch = Frame {
                id: 0,
                msg: Msg::Batch(items),
            };
            if codec.encode(&batch, buf).is_ok() {
                return;
            }
            let Msg::Batch(all) = batch.msg else {
                unreachable!("built above")
            };
            items = all;
            let second = items.split_off(n / 2);
            encode_batch(codec, items, buf);
            encode_batch(codec, second, buf);
        }
    }
}

async fn read_loop(
    peer: String,
    mut frames: FramedRead<tokio::net::tcp::OwnedReadHalf, FrameCodec>,
    inflight: Inflight,
    closed: Arc<AtomicBool>,
) {
    while let Some(next) = frames.next().await {
        match next {
            Ok(Frame { id, msg }) => {
                let slot = inflight.lock().expect("inflight lock").remove(&id);
                match slot {
                    Some(reply) => {
                        let _ = reply.send(msg);
                    }
                    // The peer began to drain: it takes nothing more on this connection.
                    None if id == 0 && matches!(&msg, Msg::Error(e) if is_draining(e)) => {
                        tracing::debug!(%peer, "peer is draining; closing the connection");
                        closed.store(true, Ordering::Release);
                    }
                    None if id == 0 => {
                        tracing::warn!(%peer, ?msg, "peer reported a connection error")
                    }
                    None => {} // the caller gave up (timeout) before the reply came
                }
            }
            Err(e) => {
                tracing::warn!(%peer, error = %e, "closing connection after a bad frame");
                break;
            }
        }
    }
    closed.store(true, Ordering::Release);
    // Dropping the reply slots wakes every waiting caller with `Lost`.
    inflight.lock().expect("inflight lock").clear();
}

#[cfg(test)]
mod tests {
    use super::*;
    use counter_proto::{AcceptorMsg, ClientError, CLOSING, DRAINING, MAX_FRAME_LEN};
    use tokio::io::AsyncReadExt;
    use tokio_util::codec::Decoder;

    fn read(key: String) -> AcceptorMsg {
        AcceptorMsg::Read {
            shard: 0,
            key,
            config: 1,
        }
    }

    /// Every frame in `buf`.
    fn decode_all(buf: &mut BytesMut) -> Vec<Frame> {
        let mut codec = FrameCodec::default();
        std::iter::from_fn(|| codec.decode(buf).unwrap()).collect()
    }

    /// Acceptor messages that wait together leave as one `Batch` frame, others alone; each
    /// call still gets its own reply.
    #[tokio::test]
    async fn acceptor_messages_written_together_travel_as_one_batch() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        // A peer that records the frames it reads and answers each message by its id.
        let peer = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = BytesMut::new();
            let mut seen = Vec::new();
            let mut answered = 0;
            while answered < 21 {
                let mut chunk = [0u8; 65536];
                let n = stream.read(&mut chunk).await.unwrap();
                assert!(n > 0);
                buf.extend_from_slice(&chunk[..n]);
                let mut out = BytesMut::new();
                let mut codec = FrameCodec::default();
                for frame in decode_all(&mut buf) {
                    let inner: Vec<(u64, Msg)> = match frame.msg.clone() {
                        Msg::Batch(items) => items
                            .into_iter()
                            .map(|i| (i.id, Msg::Acceptor(i.msg)))
                            .collect(),
                        msg => vec![(frame.id, msg)],
                    };
                    seen.push(frame);
                    for (id, msg) in inner {
                        let reply = match msg {
                            Msg::Acceptor(AcceptorMsg::Read { key, .. }) => Msg::ReadReply {
                                accepted: Some((Default::default(), key[1..].parse().unwrap())),
                            },
                            other => other,
                        };
                        codec.encode(&Frame { id, msg: reply }, &mut out).unwrap();
                        answered += 1;
                    }
                }
                stream.write_all(&out).await.unwrap();
            }
            seen
        });
        let conn = Conn::connect(&addr, Duration::from_secs(1)).await.unwrap();
        let timeout = Duration::from_secs(5);
        // Polled together in one task: every frame is queued before the writer runs.
        let reads = futures::future::join_all(
            (0..20).map(|i| conn.call(Msg::Acceptor(read(format!("k{i}"))), timeout)),
        );
        let (replies, alone) = tokio::join!(reads, conn.call(Msg::Value(7), timeout));
        for (i, reply) in replies.into_iter().enumerate() {
            let want = Msg::ReadReply {
                accepted: Some((Default::default(), i as i64)),
            };
            assert_eq!(reply, Ok(want));
        }
        assert_eq!(alone, Ok(Msg::Value(7)));
        let seen = peer.await.unwrap();
        let batches: Vec<usize> = seen
            .iter()
            .filter_map(|f| match &f.msg {
                Msg::Batch(inner) => Some(inner.len()),
                _ => None,
            })
            .collect();
        assert_eq!(batches, [20], "{seen:?}");
        assert_eq!(
            seen.len(),
            2,
            "the batch and the message that may not ride in one"
        );
    }

    /// A sink that records the size of every write it is given.
    struct Writes(Arc<Mutex<Vec<usize>>>);

    impl tokio::io::AsyncWrite for Writes {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            self.0.lock().unwrap().push(buf.len());
            std::task::Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    /// How many writes the writer makes of 10 frames: the first queued alone, the other 9 by
    /// a task that runs while the writer has the first in hand (one thread: deterministic).
    async fn writes_of_ten_frames(busy: bool) -> usize {
        let writes = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel(QUEUE);
        let closed = Arc::new(AtomicBool::new(false));
        let writer = tokio::spawn(write_loop(Writes(writes.clone()), rx, closed, move || busy));
        tx.send(Frame {
            id: 1,
            msg: Msg::Value(1),
        })
        .await
        .unwrap();
        // The writer takes frame 1 now; then this task queues the rest.
        tokio::task::yield_now().await;
        for id in 2..=10 {
            tx.send(Frame {
                id,
                msg: Msg::Value(id as i64),
            })
            .await
            .unwrap();
        }
        drop(tx);
        writer.await.unwrap();
        let writes = writes.lock().unwrap().clone();
        assert!(writes.iter().all(|&n| n > 0), "{writes:?}");
        writes.len()
    }

    /// With other requests in flight, the writer yields before writing, so that frames queued
    /// by tasks ready to run share its write (one system call, one segment for the peer);
    /// with one request alone it writes at once.
    #[tokio::test(flavor = "current_thread")]
    async fn frames_of_requests_in_flight_together_share_one_write() {
        assert_eq!(writes_of_ten_frames(true).await, 1);
        assert_eq!(writes_of_ten_frames(false).await, 2);
    }

    /// The client's writer yields only with a second call awaiting its reply.
    #[test]
    fn a_client_connection_is_busy_with_two_calls_in_flight() {
        let calls: Inflight = Arc::default();
        let call = |id| calls.lock().unwrap().insert(id, oneshot::channel().0);
        assert!(!more_than_one_call(&calls));
        call(1);
        assert!(!more_than_one_call(&calls), "one call alone");
        call(2);
        assert!(more_than_one_call(&calls));
        calls.lock().unwrap().remove(&1);
        assert!(!more_than_one_call(&calls));
    }

    /// A batch too large for one frame is split until every part fits; nothing is dropped.
    #[test]
    fn a_batch_that_outgrows_a_frame_is_split() {
        let key = |i: usize| format!("{i:0>1000}");
        let items: Vec<BatchItem> = (0..150)
            .map(|i| BatchItem {
                id: i as u64 + 1,
                msg: read(key(i)),
            })
            .collect();
        let mut codec = FrameCodec::default();
        let mut buf = BytesMut::new();
        encode_batch(&mut codec, items, &mut buf);
        assert!(buf.len() > MAX_FRAME_LEN);
        let decoded = decode_all(&mut buf);
        assert!(decoded.len() >= 3, "{} frames", decoded.len());
        let ids: Vec<u64> = decoded
            .into_iter()
            .flat_map(|f| match f.msg {
                Msg::Batch(items) => items.into_iter().map(|i| i.id).collect::<Vec<_>>(),
                other => panic!("not a batch: {other:?}"),
            })
            .collect();
        assert_eq!(ids, (1..=150).collect::<Vec<u64>>());
    }

    /// Only the server's own "not run" answer makes a call "not sent": a handler's error that
    /// quotes one (a router relaying a node's answer after work of its own) must not, or a
    /// request that ran could be sent again elsewhere.
    #[test]
    fn only_the_servers_own_not_run_answer_counts_as_not_sent() {
        assert!(is_draining(&ClientError::unavailable(format!(
            "node {DRAINING}"
        ))));
        assert!(is_draining(&ClientError::unavailable(format!(
            "router {CLOSING}"
        ))));
        for quoted in [
            format!("no replica of shard 3 could be reached: node 1: node {DRAINING}"),
            DRAINING.to_string(),
            format!(" {DRAINING}"),
        ] {
            assert!(
                !is_draining(&ClientError::unavailable(quoted.clone())),
                "{quoted}"
            );
        }
        assert!(!is_draining(&ClientError::unknown(format!(
            "node {DRAINING}"
        ))));
    }
}
