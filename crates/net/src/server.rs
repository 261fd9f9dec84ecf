//! The accept loop and per-connection request handling.
//!
//! A server holds at most `max_connections` connections. Bytes that start a frame must complete
//! it within `frame_timeout`, and a connection with nothing in flight is closed after
//! `idle_timeout` without a request: a peer that opens connections and sends half a frame
//! cannot hold memory or slots for long. When every slot is taken, the connection that has been
//! idle longest (nothing in flight) is shed to make room for the new one; only when every
//! connection has a request in flight does the new one wait. Stopping (a drain) ends the accept
//! loop, lets every request already read finish and its reply go out, and answers requests read
//! after it began with "draining, not run" (see [`serve_until`]).

use crate::client::write_loop;
use crate::codec::{FrameCodec, NetError};
use counter_proto::{BatchItem, ClientError, Frame, Msg, MAX_BATCH};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a stopping server keeps a connection open after its last client request, once no
/// client request is in flight (see `serve_conn`).
const DRAIN_LINGER: Duration = Duration::from_millis(200);
/// How long after a drain began a connection may keep sending client requests (each answered
/// "draining") before it is closed anyway.
const DRAIN_GRACE: Duration = Duration::from_secs(1);
/// How often a new connection waiting for a slot looks again for an idle one to shed.
const SHED_RETRY: Duration = Duration::from_millis(100);

/// Limits of a server.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Connections served at once; beyond it the longest-idle connection is shed.
    pub max_connections: usize,
    /// Requests of one connection being handled at once; the reader pauses beyond it.
    pub max_inflight_per_conn: usize,
    /// How long the bytes of one frame may take to arrive once its first byte has.
    pub frame_timeout: Duration,
    /// How long a connection with no request in flight may stay without sending one.
    pub idle_timeout: Duration,
    /// What the server is, for logs and metrics (`node`, `router`).
    pub name: &'static str,
    /// Messages of the server's peers (a node's acceptor protocol) rather than of clients:
    /// during a drain they are still served, so that the rounds of the requests already read,
    /// here and at the peers (which may be draining too), keep their quorums. Connections
    /// close once no client request is in flight anywhere in the server.
    pub is_peer: fn(&Msg) -> bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_connections: 1024,
            max_inflight_per_conn: 4096,
            frame_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            name: "server",
            is_peer: |_| false,
        }
    }
}

/// Why a server closed a connection (the `reason` label of
/// `counter_connections_closed_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Closed {
    /// The peer closed it, or reading failed.
    Peer,
    /// A frame that could not be decoded.
    BadFrame,
    /// A frame started and did not complete within `frame_timeout`.
    PartialFrame,
    /// Nothing in flight and no request for `idle_timeout`.
    Idle,
    /// Shed to make room for a new connection.
    Shed,
    /// The server is stopping.
    Stopping,
}

impl Closed {
    fn label(self) -> &'static str {
        match self {
            Closed::Peer => "peer",
            Closed::BadFrame => "bad_frame",
            Closed::PartialFrame => "partial_frame",
            Closed::Idle => "idle",
            Closed::Shed => "shed",
            Closed::Stopping => "stopping",
        }
    }
}

/// A connection on its way to closing (see `serve_conn`).
struct Closing {
    since: Instant,
    /// `Stopping` (the server drains) or `Idle`.
    why: Closed,
}

/// The timeout checks of a closing connection: every quarter of the linger.
fn closing_ticker() -> tokio::time::Interval {
    tokio::time::interval(DRAIN_LINGER / 4)
}

impl Closing {
    fn new(why: Closed) -> Closing {
        Closing {
            since: Instant::now(),
            why,
        }
    }
}

/// What the accept loop knows of a live connection.
struct Live {
    /// Milliseconds since the server started, at the connection's last request (or accept).
    last_active_ms: AtomicU64,
    /// Requests in flight, as permits taken out of `max_inflight_per_conn`.
    inflight: Arc<Semaphore>,
    /// Cancelled to close the connection (shed, or the server stops).
    close: CancellationToken,
    shed: AtomicBool,
    /// Client requests (not `is_peer`) of this connection being handled. Per connection, so
    /// that the hot path touches no counter shared by every connection; a drain sums them.
    client_requests: AtomicUsize,
}

/// The live connections, for shedding the longest idle.
struct Registry {
    started: Instant,
    max_inflight: usize,
    conns: Mutex<HashMap<u64, Arc<Live>>>,
}

impl Registry {
    fn now_ms(&self) -> u64 {
        self.ms_at(Instant::now())
    }

    fn ms_at(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.started).as_millis() as u64
    }

    /// Client requests being handled over every connection (a drain asks, every few tens of
    /// milliseconds).
    fn client_requests(&self) -> usize {
        let conns = self.conns.lock().expect("registry lock");
        conns
            .values()
            .map(|c| c.client_requests.load(Ordering::Acquire))
            .sum()
    }

    /// Closes the connection with nothing in flight that has been idle longest; false if every
    /// connection has a request in flight.
    fn shed_one(&self) -> bool {
        let conns = self.conns.lock().expect("registry lock");
        let victim = conns
            .values()
            .filter(|c| {
                !c.shed.load(Ordering::Relaxed)
                    && c.inflight.available_permits() == self.max_inflight
            })
            .min_by_key(|c| c.last_active_ms.load(Ordering::Relaxed));
        match victim {
            Some(live) => {
                live.shed.store(true, Ordering::Relaxed);
                live.close.cancel();
                true
            }
            None => false,
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
    serve_until(listener, config, handler, CancellationToken::new()).await
}

/// As [`serve`], until `stop` is cancelled: then it accepts no more connections, answers every
/// request read from then on with an `unavailable` error carrying
/// [`counter_proto::DRAINING`] (nothing of it is run; `counter-net`'s client reports it as not
/// sent, so it is tried elsewhere), and returns once every request read before has been
/// answered and each connection has been quiet for a moment. Bound the wait with a timeout: a
/// handler may take its whole budget, and a peer may keep sending.
pub async fn serve_until<H, F>(
    listener: TcpListener,
    config: ServerConfig,
    handler: H,
    stop: CancellationToken,
) where
    H: Fn(Msg) -> F + Send + Sync + Clone + 'static,
    F: Future<Output = Msg> + Send + 'static,
{
    let name = config.name;
    let limit = Arc::new(Semaphore::new(config.max_connections));
    let registry = Arc::new(Registry {
        started: Instant::now(),
        max_inflight: config.max_inflight_per_conn,
        conns: Mutex::new(HashMap::new()),
    });
    let tracker = TaskTracker::new();
    let open = metrics::gauge!("counter_connections_open", "server" => name);
    let mut next_id = 0u64;
    let mut backoff = Duration::from_millis(10);
    let mut shed_since_warning = 0u64;
    let mut last_warning: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(s) => {
                backoff = Duration::from_millis(10);
                s
            }
            Err(e) => {
                // Typically out of file descriptors: wait for some to free up.
                tracing::warn!(error = %e, "accept failed; retrying in {backoff:?}");
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let mut waited = false;
        let permit = loop {
            if let Ok(permit) = limit.clone().try_acquire_owned() {
                break Some(permit);
            }
            if registry.shed_one() {
                shed_since_warning += 1;
                metrics::counter!("counter_connections_shed_total", "server" => name).increment(1);
                if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                    tracing::warn!(
                        max_connections = config.max_connections,
                        shed = shed_since_warning,
                        "connection limit reached: closed the longest-idle connections to \
                             make room (peers that open connections and send nothing, or too \
                             many clients)"
                    );
                    shed_since_warning = 0;
                    last_warning = Some(Instant::now());
                }
            } else if !waited {
                tracing::debug!("every connection has a request in flight; the new one waits");
            }
            waited = true;
            // The shed connection frees its slot within moments; if every connection was busy,
            // look again shortly (one may have gone idle).
            tokio::select! {
                _ = stop.cancelled() => break None,
                permit = limit.clone().acquire_owned() => break Some(permit.expect("never closed")),
                _ = tokio::time::sleep(SHED_RETRY) => {}
            }
        };
        let Some(permit) = permit else { break };
        let _ = stream.set_nodelay(true);
        next_id += 1;
        let id = next_id;
        let live = Arc::new(Live {
            last_active_ms: AtomicU64::new(registry.now_ms()),
            inflight: Arc::new(Semaphore::new(config.max_inflight_per_conn)),
            close: stop.child_token(),
            shed: AtomicBool::new(false),
            client_requests: AtomicUsize::new(0),
        });
        registry
            .conns
            .lock()
            .expect("registry lock")
            .insert(id, live.clone());
        open.increment(1.0);
        let handler = handler.clone();
        let config = config.clone();
        let registry = registry.clone();
        let open = open.clone();
        tracker.spawn(async move {
            let why =
                serve_conn(stream, peer.to_string(), &config, handler, &live, &registry).await;
            registry.conns.lock().expect("registry lock").remove(&id);
            open.decrement(1.0);
            metrics::counter!("counter_connections_closed_total", "server" => name, "reason" => why.label())
                .increment(1);
            drop(permit);
        });
    }
    // Closed at once: a connection attempted during the drain is refused, not left waiting.
    drop(listener);
    tracker.close();
    let left = tracker.len();
    if left > 0 {
        tracing::info!(
            connections = left,
            "{name}: no longer accepting; answering the requests already read"
        );
    }
    tracker.wait().await;
}

/// A server connection's `busy` for [`write_loop`]: more than one of its requests (permits of
/// `requests`, `most` in all) is in flight, so other replies are coming to share a write.
fn more_than_one_request(requests: &Semaphore, most: usize) -> bool {
    most.saturating_sub(requests.available_permits()) > 1
}

async fn serve_conn<H, F>(
    stream: tokio::net::TcpStream,
    peer: String,
    config: &ServerConfig,
    handler: H,
    live: &Arc<Live>,
    registry: &Registry,
) -> Closed
where
    H: Fn(Msg) -> F + Send + Sync + Clone + 'static,
    F: Future<Output = Msg> + Send + 'static,
{
    let (read, write) = stream.into_split();
    let (tx, rx) = mpsc::channel::<Frame>(config.max_inflight_per_conn);
    let requests = live.inflight.clone();
    let most = config.max_inflight_per_conn;
    let busy = move || more_than_one_request(&requests, most);
    let writer = tokio::spawn(write_loop(
        write,
        rx,
        Arc::new(AtomicBool::new(false)),
        busy,
    ));
    let mut frames = FramedRead::new(read, FrameCodec::default());
    // How often the timeouts are checked: one periodic timer per connection, not one timer
    // per request.
    let tick = (config.frame_timeout.min(config.idle_timeout) / 4).min(Duration::from_secs(1));
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // When the bytes of the frame being read began to arrive (reset at every frame).
    let mut partial_since: Option<Instant> = None;
    let mut last_request = Instant::now();
    // Set when the connection is to close: the server stops (a drain), the connection was
    // idle too long, or it is shed. The peer is told at once (a notice, id 0) and requests
    // read from then on are answered "not run" (`DRAINING` or `CLOSING`): so that a request
    // the peer sent just before it learned of the close gets an answer rather than a closed
    // connection, which would leave its outcome unknown. In a drain, peer messages are still
    // served and the connection closes once no client request is in flight anywhere in the
    // server. It closes once nothing is in flight on it and its peer has sent no request
    // (in a drain: no client request) for `DRAIN_LINGER`, or `DRAIN_GRACE` after it began.
    let mut closing: Option<Closing> = None;
    let mut last_client_request = Instant::now();
    let idle = |live: &Live| live.inflight.available_permits() == config.max_inflight_per_conn;
    let not_run =
        |why: &str| Msg::Error(ClientError::unavailable(format!("{} {why}", config.name)));
    let drained = not_run(counter_proto::DRAINING);
    let closed = not_run(counter_proto::CLOSING);
    let why = loop {
        let now = Instant::now();
        if frames.read_buffer().is_empty() {
            partial_since = None;
        } else {
            partial_since.get_or_insert(now);
        }
        let deadline = match (&closing, partial_since) {
            (Some(_), _) => now,
            (None, Some(since)) => since + config.frame_timeout,
            (None, None) => last_request + config.idle_timeout,
        };
        let next = tokio::select! {
            biased;
            _ = live.close.cancelled(), if closing.is_none() => {
                if live.shed.load(Ordering::Relaxed) {
                    // The slot is wanted now: tell the peer, close without lingering (it is
                    // the connection idle longest, so it is unlikely to be sending).
                    let _ = tx.send(Frame { id: 0, msg: closed.clone() }).await;
                    break Closed::Shed;
                }
                closing = Some(Closing::new(Closed::Stopping));
                ticker = closing_ticker();
                last_client_request = Instant::now();
                let _ = tx.send(Frame { id: 0, msg: drained.clone() }).await;
                continue;
            }
            next = frames.next() => next,
            _ = ticker.tick() => {
                let now = Instant::now();
                if let Some(c) = &closing {
                    let last = if c.why == Closed::Stopping { last_client_request } else { last_request };
                    let quiet = now - last >= DRAIN_LINGER || now - c.since >= DRAIN_GRACE;
                    let others_done =
                        c.why != Closed::Stopping || registry.client_requests() == 0;
                    if quiet && idle(live) && others_done {
                        break c.why;
                    }
                    continue;
                }
                if now < deadline {
                    continue;
                }
                if partial_since.is_some() {
                    tracing::info!(%peer, "closing a connection whose frame did not complete in {:?}", config.frame_timeout);
                    break Closed::PartialFrame;
                }
                if idle(live) {
                    tracing::debug!(%peer, "closing a connection idle for {:?}", config.idle_timeout);
                    closing = Some(Closing::new(Closed::Idle));
                    ticker = closing_ticker();
                    last_request = now;
                    let _ = tx.send(Frame { id: 0, msg: closed.clone() }).await;
                    continue;
                }
                // Requests in flight: not idle.
                last_request = now;
                continue;
            }
        };
        match next {
            None => break Closed::Peer,
            Some(Ok(Frame { id, msg })) => {
                // The next frame's time starts when its first bytes are seen.
                partial_since = None;
                // A batch's messages each count against the in-flight limit, as if they had
                // come alone; a batch beyond the limit of one is a bad frame.
                let weight = match &msg {
                    Msg::Batch(items) if items.len() > MAX_BATCH => {
                        let why = format!(
                            "a batch of {} messages exceeds the limit of {MAX_BATCH}",
                            items.len()
                        );
                        tracing::warn!(%peer, "closing connection after a bad frame: {why}");
                        let _ = tx
                            .send(Frame {
                                id: 0,
                                msg: Msg::Error(ClientError::invalid(why)),
                            })
                            .await;
                        break Closed::BadFrame;
                    }
                    Msg::Batch(items) if items.is_empty() => continue,
                    Msg::Batch(items) => items.len().min(config.max_inflight_per_conn) as u32,
                    _ => 1,
                };
                last_request = Instant::now();
                live.last_active_ms
                    .store(registry.ms_at(last_request), Ordering::Relaxed);
                let peer_msg = (config.is_peer)(&msg);
                if !peer_msg {
                    last_client_request = last_request;
                }
                match &closing {
                    // Read after the close began: not run, and said so.
                    Some(c) if c.why != Closed::Stopping || !peer_msg => {
                        let answer = if c.why == Closed::Stopping {
                            &drained
                        } else {
                            &closed
                        };
                        answer_all(&tx, id, &msg, answer).await;
                        continue;
                    }
                    _ => {}
                }
                let permit = tokio::select! {
                    _ = live.close.cancelled(), if closing.is_none() => {
                        if live.shed.load(Ordering::Relaxed) {
                            // Read, not run: say so before closing.
                            answer_all(&tx, id, &msg, &closed).await;
                            break Closed::Shed;
                        }
                        closing = Some(Closing::new(Closed::Stopping));
                        ticker = closing_ticker();
                        let _ = tx.send(Frame { id: 0, msg: drained.clone() }).await;
                        if !peer_msg {
                            answer_all(&tx, id, &msg, &drained).await;
                            continue;
                        }
                        live.inflight.clone().acquire_many_owned(weight).await.expect("never closed")
                    }
                    permit = live.inflight.clone().acquire_many_owned(weight) => permit.expect("never closed"),
                };
                // Waiting for a slot is the server's doing, not a slow frame.
                partial_since = None;
                if !peer_msg {
                    live.client_requests.fetch_add(1, Ordering::AcqRel);
                }
                let handler = handler.clone();
                let tx = tx.clone();
                let live = live.clone();
                tokio::spawn(async move {
                    match msg {
                        Msg::Batch(items) => run_batch(items, handler, &tx).await,
                        msg => {
                            let reply = handler(msg).await;
                            let _ = tx.send(Frame { id, msg: reply }).await;
                        }
                    }
                    if !peer_msg {
                        live.client_requests.fetch_sub(1, Ordering::AcqRel);
                    }
                    drop(permit);
                });
            }
            Some(Err(NetError::Io(e))) => {
                tracing::debug!(%peer, error = %e, "connection read failed");
                break Closed::Peer;
            }
            Some(Err(e)) => {
                tracing::warn!(%peer, error = %e, "closing connection after a bad frame");
                let _ = tx
                    .send(Frame {
                        id: 0,
                        msg: Msg::Error(ClientError::invalid(e.to_string())),
                    })
                    .await;
                break Closed::BadFrame;
            }
        }
        if tx.is_closed() {
            // The writer gave up (the peer reads nothing): stop running its requests.
            break Closed::Peer;
        }
    };
    // Let in-flight requests finish and their replies go out, then close.
    drop(tx);
    let _ = writer.await;
    why
}

/// Runs a [`Msg::Batch`]'s messages together in this one task (so that their writes reach
/// the group commit together and their completions wake one task) and answers each, as it
/// completes, in a frame with its own id.
async fn run_batch<H, F>(items: Vec<BatchItem>, handler: H, tx: &mpsc::Sender<Frame>)
where
    H: Fn(Msg) -> F,
    F: Future<Output = Msg>,
{
    let mut replies: FuturesUnordered<_> = items
        .into_iter()
        .map(|BatchItem { id, msg }| {
            let run = handler(Msg::Acceptor(msg));
            async move { Frame { id, msg: run.await } }
        })
        .collect();
    while let Some(reply) = replies.next().await {
        let _ = tx.send(reply).await;
    }
}

/// Answers `answer` to a request that is not run: to each message of a batch, by its id.
async fn answer_all(tx: &mpsc::Sender<Frame>, id: u64, msg: &Msg, answer: &Msg) {
    let ids: Vec<u64> = match msg {
        Msg::Batch(items) => items.iter().map(|i| i.id).collect(),
        _ => vec![id],
    };
    for id in ids {
        let _ = tx
            .send(Frame {
                id,
                msg: answer.clone(),
            })
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{CallError, Conn};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The server's writer yields only with a second request of the connection in flight.
    #[test]
    fn a_server_connection_is_busy_with_two_requests_in_flight() {
        let requests = Semaphore::new(8);
        assert!(!more_than_one_request(&requests, 8));
        let first = requests.try_acquire().unwrap();
        assert!(!more_than_one_request(&requests, 8), "one request alone");
        let second = requests.try_acquire().unwrap();
        assert!(more_than_one_request(&requests, 8));
        drop((first, second));
        assert!(!more_than_one_request(&requests, 8));
    }

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

    /// A server with small limits that answers `Value(v)` with `2v` after `v` ms.
    async fn small_server(max_connections: usize, stop: CancellationToken) -> String {
        small_server_counting(max_connections, stop).await.0
    }

    /// [`small_server`], and how many requests its handler has run.
    async fn small_server_counting(
        max_connections: usize,
        stop: CancellationToken,
    ) -> (String, Arc<AtomicUsize>) {
        let ran = Arc::new(AtomicUsize::new(0));
        let counted = ran.clone();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let config = ServerConfig {
            max_connections,
            frame_timeout: Duration::from_millis(300),
            idle_timeout: Duration::from_secs(3),
            // Negative values play the peers' (acceptor) messages.
            is_peer: |msg| matches!(msg, Msg::Value(v) if *v < 0),
            ..ServerConfig::default()
        };
        tokio::spawn(serve_until(
            listener,
            config,
            move |msg| {
                counted.fetch_add(1, Ordering::SeqCst);
                async move {
                    match msg {
                        Msg::Value(v) => {
                            let ms = v.unsigned_abs().min(5000);
                            tokio::time::sleep(Duration::from_millis(ms)).await;
                            Msg::Value(v * 2)
                        }
                        other => other,
                    }
                }
            },
            stop,
        ));
        (addr, ran)
    }

    /// Reads until the server closes the connection; true if it did within `within`.
    async fn closed_within(stream: &mut tokio::net::TcpStream, within: Duration) -> bool {
        let mut buf = [0u8; 256];
        let start = tokio::time::Instant::now();
        loop {
            let left = within.saturating_sub(start.elapsed());
            match tokio::time::timeout(left, stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }

    #[tokio::test]
    async fn a_half_sent_frame_is_timed_out_and_an_idle_connection_closed() {
        let addr = small_server(64, CancellationToken::new()).await;
        // The first bytes of a 100-byte frame, then nothing.
        let mut half = tokio::net::TcpStream::connect(&addr).await.unwrap();
        half.write_all(&[0, 0, 0, 100, 1, 2]).await.unwrap();
        // Silent from the start: idle, closed later than the half frame.
        let mut idle = tokio::net::TcpStream::connect(&addr).await.unwrap();
        assert!(
            closed_within(&mut half, Duration::from_secs(2)).await,
            "a frame that never completes must not hold its connection"
        );
        assert!(
            !closed_within(&mut idle, Duration::from_secs(1)).await,
            "an idle connection is kept for the idle timeout"
        );
        assert!(
            closed_within(&mut idle, Duration::from_secs(4)).await,
            "an idle connection is closed after the idle timeout"
        );
        // A connection with a request in flight longer than the idle timeout is not idle.
        let conn = Conn::connect(&addr, Duration::from_secs(1)).await.unwrap();
        assert_eq!(
            conn.call(Msg::Value(3500), Duration::from_secs(6)).await,
            Ok(Msg::Value(7000))
        );
        // Idle afterwards: the server says it closes (the client then sends nothing more on
        // it: a call is "not sent", never lost), and a request that crossed the notice is
        // answered "not run".
        tokio::time::sleep(Duration::from_millis(3300)).await;
        assert!(conn.is_closed(), "told of the close");
        assert!(matches!(
            conn.call(Msg::Value(1), Duration::from_secs(1)).await,
            Err(CallError::NotSent(_))
        ));
        let not_run =
            |m: &Msg| matches!(m, Msg::Error(e) if e.message.ends_with(counter_proto::CLOSING));
        // The raw connection's notice (it has been idle as long), then a request sent right
        // after it: answered "not run" before the close.
        let mut raw = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let mut notice = [0u8; 256];
        let n = raw.read(&mut notice).await.unwrap();
        let mut buf = bytes::BytesMut::from(&notice[..n]);
        let frame = tokio_util::codec::Decoder::decode(&mut FrameCodec::default(), &mut buf)
            .unwrap()
            .expect("the notice");
        assert!(frame.id == 0 && not_run(&frame.msg), "{frame:?}");
        let request = Frame {
            id: 5,
            msg: Msg::Value(1),
        };
        let got = raw_calls(&mut raw, &[request]).await;
        assert!(got.get(&5).is_some_and(not_run), "{got:?}");
        assert!(closed_within(&mut raw, Duration::from_secs(1)).await);
    }

    #[tokio::test]
    async fn well_behaved_clients_are_served_while_bad_ones_hold_every_slot() {
        let addr = small_server(16, CancellationToken::new()).await;
        // Ten times the cap of connections that send half a frame and nothing more.
        let mut bad = Vec::new();
        for _ in 0..160 {
            let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
            s.write_all(&[0, 0, 0, 50, 1]).await.unwrap();
            bad.push(s);
        }
        // Every good client is served at once: the longest-idle bad connections make room.
        for round in 0..20 {
            let conn = Conn::connect(&addr, Duration::from_secs(1)).await.unwrap();
            let started = std::time::Instant::now();
            assert_eq!(
                conn.call(Msg::Value(round), Duration::from_secs(2)).await,
                Ok(Msg::Value(round * 2)),
                "good client {round}"
            );
            assert!(
                started.elapsed() < Duration::from_millis(500),
                "round {round}"
            );
        }
        // A busy connection (a request in flight) is never shed for a newcomer.
        let busy = Arc::new(Conn::connect(&addr, Duration::from_secs(1)).await.unwrap());
        let slow = {
            let busy = busy.clone();
            tokio::spawn(async move { busy.call(Msg::Value(1500), Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        for _ in 0..40 {
            let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
            s.write_all(&[0, 0, 0, 50, 1]).await.unwrap();
            bad.push(s);
        }
        assert_eq!(slow.await.unwrap(), Ok(Msg::Value(3000)));
    }

    #[tokio::test]
    async fn stopping_answers_what_was_read_and_takes_nothing_new() {
        let stop = CancellationToken::new();
        let addr = small_server(64, stop.clone()).await;
        let conn = Arc::new(Conn::connect(&addr, Duration::from_secs(1)).await.unwrap());
        let calls: Vec<_> = (0..20)
            .map(|i| {
                let conn = conn.clone();
                tokio::spawn(
                    async move { conn.call(Msg::Value(300 + i), Duration::from_secs(5)).await },
                )
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop.cancel();
        // The listener is closed at once: a new connection is refused while the requests
        // already read are still running.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(Conn::connect(&addr, Duration::from_secs(1)).await.is_err());
        // The server told the connection at once: it takes nothing more (not sent).
        assert!(conn.is_closed());
        assert!(matches!(
            conn.call(Msg::Value(1), Duration::from_secs(5)).await,
            Err(CallError::NotSent(_))
        ));
        for (i, call) in calls.into_iter().enumerate() {
            assert_eq!(
                call.await.unwrap(),
                Ok(Msg::Value((300 + i as i64) * 2)),
                "a request read before the stop is answered"
            );
        }
    }

    /// Writes `frames` on a raw connection and reads until each has its reply: every frame
    /// read, by id (the server's notices have id 0).
    async fn raw_calls(
        stream: &mut tokio::net::TcpStream,
        frames: &[Frame],
    ) -> std::collections::BTreeMap<u64, Msg> {
        use tokio_util::codec::{Decoder, Encoder};
        let mut codec = FrameCodec::default();
        let mut out = bytes::BytesMut::new();
        for f in frames {
            codec.encode(f, &mut out).unwrap();
        }
        stream.write_all(&out).await.unwrap();
        // A batch is answered message by message, by their ids.
        let ids: Vec<u64> = frames
            .iter()
            .flat_map(|f| match &f.msg {
                Msg::Batch(items) => items.iter().map(|i| i.id).collect(),
                _ => vec![f.id],
            })
            .collect();
        let mut got = std::collections::BTreeMap::new();
        let mut buf = bytes::BytesMut::new();
        while !ids.iter().all(|id| got.contains_key(id)) {
            while let Some(f) = codec.decode(&mut buf).unwrap() {
                got.insert(f.id, f.msg);
            }
            if ids.iter().all(|id| got.contains_key(id)) {
                break;
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk))
                .await
                .expect("a reply")
                .unwrap();
            assert!(n > 0, "closed early; got {got:?}");
            buf.extend_from_slice(&chunk[..n]);
        }
        got
    }

    fn read(id: u64, key: &str) -> BatchItem {
        BatchItem {
            id,
            msg: counter_proto::AcceptorMsg::Read {
                shard: 1,
                key: key.into(),
                config: 1,
            },
        }
    }

    /// A batch's messages are each answered by their own id, as if each had come alone; a
    /// batch of more than `MAX_BATCH` messages is a bad frame: nothing of it runs and the
    /// connection closes with `invalid`.
    #[tokio::test]
    async fn a_batch_is_answered_message_by_message_and_a_batch_too_large_is_refused() {
        let runs = Arc::new(AtomicUsize::new(0));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let counted = runs.clone();
        let config = ServerConfig {
            // Fewer than a batch's messages: a batch still runs (it takes every slot).
            max_inflight_per_conn: 2,
            ..ServerConfig::default()
        };
        tokio::spawn(serve(listener, config, move |msg| {
            counted.fetch_add(1, Ordering::SeqCst);
            async move {
                match msg {
                    Msg::Acceptor(counter_proto::AcceptorMsg::Read { key, .. }) => Msg::ReadReply {
                        accepted: Some((Default::default(), key.len() as i64)),
                    },
                    _ => Msg::Value(-1),
                }
            }
        }));
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let batch = Frame {
            id: 0,
            msg: Msg::Batch(vec![read(5, "a"), read(6, "bb"), read(8, "bbb")]),
        };
        let got = raw_calls(&mut stream, &[batch]).await;
        let value = |n| Msg::ReadReply {
            accepted: Some((Default::default(), n)),
        };
        assert_eq!(got.get(&5), Some(&value(1)));
        assert_eq!(got.get(&6), Some(&value(2)));
        assert_eq!(got.get(&8), Some(&value(3)));
        assert!(!got.contains_key(&0), "{got:?}");
        assert_eq!(runs.load(Ordering::SeqCst), 3);

        let too_many = Frame {
            id: 0,
            msg: Msg::Batch((1..=MAX_BATCH as u64 + 1).map(|i| read(i, "k")).collect()),
        };
        use tokio_util::codec::{Decoder, Encoder};
        let mut codec = FrameCodec::default();
        let mut out = bytes::BytesMut::new();
        codec.encode(&too_many, &mut out).unwrap();
        stream.write_all(&out).await.unwrap();
        // Everything the server sends until it closes the connection.
        let mut bytes = bytes::BytesMut::new();
        loop {
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk))
                .await
                .expect("the server closes the connection")
                .unwrap_or(0);
            if n == 0 {
                break;
            }
            bytes.extend_from_slice(&chunk[..n]);
        }
        let answers: Vec<Frame> =
            std::iter::from_fn(|| codec.decode(&mut bytes).unwrap()).collect();
        assert!(
            matches!(&answers[..], [Frame { id: 0, msg: Msg::Error(e) }] if e.kind == counter_proto::ErrorKind::Invalid && e.message.contains("exceeds the limit")),
            "{answers:?}"
        );
        assert_eq!(
            runs.load(Ordering::SeqCst),
            3,
            "nothing of the large batch ran"
        );
    }

    /// A batch read once a server began to close is answered "not run", message by message.
    #[tokio::test]
    async fn a_batch_read_after_the_close_began_is_not_run_message_by_message() {
        let stop = CancellationToken::new();
        let (addr, runs) = small_server_counting(8, stop.clone()).await;
        let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
        // The connection is served before the close begins.
        raw_calls(
            &mut stream,
            &[Frame {
                id: 1,
                msg: Msg::Value(1),
            }],
        )
        .await;
        let before = runs.load(Ordering::SeqCst);
        stop.cancel();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let batch = Frame {
            id: 0,
            msg: Msg::Batch(vec![read(2, "a"), read(3, "b")]),
        };
        let got = raw_calls(&mut stream, &[batch]).await;
        for id in [2, 3] {
            assert!(
                matches!(got.get(&id), Some(Msg::Error(e)) if e.message.ends_with(counter_proto::DRAINING)),
                "{got:?}"
            );
        }
        assert_eq!(
            runs.load(Ordering::SeqCst),
            before,
            "nothing of the batch ran"
        );
    }

    #[tokio::test]
    async fn a_drain_serves_peer_messages_and_refuses_client_ones_until_clients_are_done() {
        let stop = CancellationToken::new();
        let (addr, ran) = small_server_counting(64, stop.clone()).await;
        let client = Arc::new(Conn::connect(&addr, Duration::from_secs(1)).await.unwrap());
        let mut peer = tokio::net::TcpStream::connect(&addr).await.unwrap();
        // A client request that runs 1.5 s, in flight when the drain begins.
        let slow = {
            let client = client.clone();
            tokio::spawn(async move { client.call(Msg::Value(1500), Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop.cancel();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let frame = |id, v| Frame {
            id,
            msg: Msg::Value(v),
        };
        let draining =
            |m: &Msg| matches!(m, Msg::Error(e) if e.message.contains(counter_proto::DRAINING));
        // The peer's connection was told of the drain (id 0); a peer message is served, a
        // client message refused as draining (not run).
        let before = ran.load(Ordering::SeqCst);
        let got = raw_calls(&mut peer, &[frame(7, -5), frame(8, 3)]).await;
        assert!(got.get(&0).is_some_and(draining), "the notice: {got:?}");
        assert_eq!(got.get(&7), Some(&Msg::Value(-10)), "{got:?}");
        assert!(got.get(&8).is_some_and(draining), "{got:?}");
        // "Draining" means not run: clients treat it as not sent and send it elsewhere.
        assert_eq!(
            ran.load(Ordering::SeqCst),
            before + 1,
            "only the peer message was run"
        );
        // Peer messages keep being served while the client request runs, well past the
        // linger; the connection closes once that request is answered.
        tokio::time::sleep(Duration::from_millis(600)).await;
        let got = raw_calls(&mut peer, &[frame(9, -2)]).await;
        assert_eq!(got.get(&9), Some(&Msg::Value(-4)), "{got:?}");
        assert_eq!(slow.await.unwrap(), Ok(Msg::Value(3000)));
        assert!(closed_within(&mut peer, Duration::from_secs(2)).await);
    }

    #[tokio::test]
    async fn a_busy_connection_is_not_taken_for_a_half_sent_frame() {
        use tokio_util::codec::Encoder;
        let addr = small_server(64, CancellationToken::new()).await;
        let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
        // Frames of one length, sent so that every write ends in the middle of a frame: the
        // server's read buffer is never empty, yet every frame completes within 20 ms. For
        // five frame timeouts, none may be taken for a half-sent frame.
        let mut codec = FrameCodec::default();
        let mut bytes = bytes::BytesMut::new();
        let count = 75u64;
        for id in 1000..1000 + count {
            codec
                .encode(
                    &Frame {
                        id,
                        msg: Msg::Value(0),
                    },
                    &mut bytes,
                )
                .unwrap();
        }
        let len = bytes.len() / count as usize;
        let (mut read, mut write) = stream.split();
        let mut start = len / 2;
        write.write_all(&bytes[..start]).await.unwrap();
        while start < bytes.len() {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let end = (start + len).min(bytes.len());
            write.write_all(&bytes[start..end]).await.unwrap();
            start = end;
        }
        // Every request answered, then the connection still open.
        let mut replies = bytes::BytesMut::new();
        let mut got = 0;
        while got < count {
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(5), read.read(&mut chunk))
                .await
                .expect("replies")
                .unwrap();
            assert!(n > 0, "closed after {got} replies");
            replies.extend_from_slice(&chunk[..n]);
            while tokio_util::codec::Decoder::decode(&mut codec, &mut replies)
                .unwrap()
                .is_some()
            {
                got += 1;
            }
        }
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
