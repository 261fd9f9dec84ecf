//! The Redis-protocol (RESP2) front door of the router: `counter-router --resp-listen`.
//!
//! Redis clients (`redis-cli`, `redis-benchmark`, client libraries) speak to the counter store
//! with the commands that map onto counters: `GET`, `SET` (integers only), `INCR`, `INCRBY`,
//! `DECR`, `DECRBY`, `MGET`, and the extension `CINCRBY`/`CDECRBY` (bounds and a caller's request
//! id), plus the connection commands clients send on their own (`PING`, `HELLO`, `CLIENT`,
//! `SELECT 0`, `COMMAND`, `CONFIG GET`, `INFO`, `QUIT`). docs/CLI.md has the table.
//!
//! Every key command goes through [`Router::handle`] like a `counter-cli` command, so it is
//! linearizable; every mutating command carries a request id of a session from a pool the
//! router owns ([`Sessions`]), so the router's retries apply it at most once. Errors are RESP
//! errors whose first word names the kind: `INVALID`, `UNAVAILABLE`, `UNKNOWN`, `REJECTED`,
//! `EXPIRED` (Redis's own wording, `ERR ...`, for syntax, arity and non-integer arguments).
//!
//! Frames are decoded by the `redis-protocol` crate's RESP2 codec. Its parser takes any declared
//! length and waits for the bytes, so [`RespCodec`] first checks the declared lengths of the
//! frame at the head of the buffer (the array's count, each bulk string's length, the frame's
//! total) and refuses one over [`RespConfig`]'s limits before any of it is buffered.
//!
//! Per connection: up to [`RespConfig::window`] commands run at once, answered in the order
//! they came (`buffered`); a connection's commands on one key run one after the other in that
//! order, as Redis runs a pipeline (`INCR k` then `GET k` pipelined reads the increment);
//! reading stops while the window is full or while the commands in
//! flight hold [`RespConfig::max_pending_bytes`], so a client that never reads its replies costs
//! a bounded amount of memory. A half-sent frame is dropped (the connection closed) after
//! [`RespConfig::frame_timeout`], an idle connection after [`RespConfig::idle_timeout`], and a
//! connection whose replies cannot be written for that long too. At most
//! [`RespConfig::max_clients`] connections: a new one sheds the connection idle the longest, or
//! is refused (`-ERR max number of clients reached`) when none is idle.

use crate::forward::{session_opened, DEFAULT_TIMEOUT_MS};
use crate::Router;
use bytes::{Bytes, BytesMut};
use counter_client::Session;
use counter_proto::{ClientError, Command, ErrorKind, Msg, Op, RequestId};
use futures::future::BoxFuture;
use futures::{FutureExt, SinkExt, StreamExt};
use redis_protocol::codec::Resp2;
use redis_protocol::resp2::types::{BytesFrame as Frame, Resp2Frame};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::codec::{Decoder, FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The limits of the RESP front door.
#[derive(Clone, Debug)]
pub struct RespConfig {
    /// Most connections at once (a new one sheds the one idle the longest).
    pub max_clients: usize,
    /// Most commands of one connection running at once (replies still go in order).
    pub window: usize,
    /// Most bytes of requests (and so of replies) of one connection in flight at once.
    pub max_pending_bytes: usize,
    /// Longest bulk string in a request.
    pub max_bulk_len: usize,
    /// Most elements of a request's array (the command and its arguments).
    pub max_args: usize,
    /// Longest request frame (headers included).
    pub max_frame_len: usize,
    /// A frame begun and not finished within this long closes the connection.
    pub frame_timeout: Duration,
    /// A connection that sends nothing (or reads none of its replies) for this long is closed.
    pub idle_timeout: Duration,
    /// Each key command's deadline, the router's retries included.
    pub command_timeout: Duration,
    /// Most sessions of the router's pool in use at once (mutating commands wait for one).
    /// `None`: a quarter of the cluster file's `dedup_clients`, so that the pool's sessions,
    /// counted twice while they renew, stay within the half of a key's entries that the
    /// exactly-once rules allow for clients writing it at once (docs/CLI.md).
    pub max_sessions: Option<usize>,
}

impl Default for RespConfig {
    fn default() -> RespConfig {
        RespConfig {
            max_clients: 1024,
            window: 128,
            max_pending_bytes: 1 << 20,
            max_bulk_len: 512 * 1024,
            max_args: 1024,
            max_frame_len: 1 << 20,
            frame_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(300),
            command_timeout: Duration::from_millis(u64::from(DEFAULT_TIMEOUT_MS)),
            max_sessions: None,
        }
    }
}

/// How long a stopping front door keeps a connection open after its last command, once its
/// commands in flight are answered.
const DRAIN_LINGER: Duration = Duration::from_millis(200);

/// How long after a drain began a connection that keeps sending is closed (each command read
/// meanwhile is answered "draining", not run).
const DRAIN_GRACE: Duration = Duration::from_secs(1);

/// Serves RESP on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, router: Arc<Router>, config: RespConfig) {
    serve_until(listener, router, config, CancellationToken::new()).await
}

/// Serves RESP on `listener` until `stop`, then drains as the router's own port does: the
/// listener closes, the commands read before are answered, a command read after is answered
/// `-UNAVAILABLE ... draining ...` (nothing of it is run), and each connection closes once it
/// has been quiet for a moment; returns when every connection is closed.
pub async fn serve_until(
    listener: TcpListener,
    router: Arc<Router>,
    config: RespConfig,
    stop: CancellationToken,
) {
    let mut shared = Shared::new(router, config);
    shared.stop = stop.clone();
    let shared = Arc::new(shared);
    let tracker = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (socket, addr) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: wait, never spin.
                tracing::warn!(error = %e, "resp: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        match shared.admit(addr) {
            Some(conn) => {
                let shared = shared.clone();
                tracker.spawn(async move {
                    tracing::debug!(id = conn.id, %addr, "resp: connection opened");
                    tokio::select! {
                        _ = connection(shared.clone(), conn.clone(), socket) => {}
                        _ = conn.kill.notified() => {}
                    }
                    shared.leave(conn.id);
                    tracing::debug!(id = conn.id, %addr, "resp: connection closed");
                });
            }
            None => {
                tracing::warn!(%addr, max = shared.config.max_clients, "resp: connection refused: max number of clients reached, none idle");
                tokio::spawn(refuse(socket));
            }
        }
    }
    drop(listener);
    tracker.close();
    tracker.wait().await;
}

/// What the connections share.
struct Shared {
    router: Arc<Router>,
    config: RespConfig,
    sessions: Sessions,
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    next_id: AtomicU64,
    started: Instant,
    /// Cancelled when the router drains.
    stop: CancellationToken,
}

/// One connection, as the others see it (for shedding and `INFO`).
struct Conn {
    id: u64,
    addr: SocketAddr,
    /// Microseconds since [`Shared::started`] of the last frame read or reply written.
    last_active_us: AtomicU64,
    /// Commands read and not answered yet.
    in_flight: AtomicUsize,
    /// Closes the connection (it was shed).
    kill: Notify,
}

impl Shared {
    fn new(router: Arc<Router>, config: RespConfig) -> Shared {
        let limits = router.cluster().limits;
        let max_sessions = config.max_sessions.unwrap_or(limits.max_clients / 4).max(1);
        Shared {
            sessions: Sessions::new(limits, config.command_timeout, max_sessions),
            router,
            config,
            conns: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            started: Instant::now(),
            stop: CancellationToken::new(),
        }
    }

    fn now_us(&self) -> u64 {
        self.started.elapsed().as_micros() as u64
    }

    /// Registers a new connection; at the cap, sheds the connection idle the longest (nothing
    /// in flight), or refuses the new one (`None`) when none is idle.
    fn admit(&self, addr: SocketAddr) -> Option<Arc<Conn>> {
        let mut conns = self.conns.lock().expect("resp connections");
        if conns.len() >= self.config.max_clients {
            let victim = conns
                .values()
                .filter(|c| c.in_flight.load(Ordering::Relaxed) == 0)
                .min_by_key(|c| (c.last_active_us.load(Ordering::Relaxed), c.id))
                .cloned()?;
            conns.remove(&victim.id);
            let idle_ms = self
                .now_us()
                .saturating_sub(victim.last_active_us.load(Ordering::Relaxed))
                / 1000;
            tracing::warn!(
                id = victim.id,
                addr = %victim.addr,
                idle_ms,
                max = self.config.max_clients,
                "resp: max number of clients reached; closing the connection idle the longest"
            );
            victim.kill.notify_one();
        }
        let conn = Arc::new(Conn {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            addr,
            last_active_us: AtomicU64::new(self.now_us()),
            in_flight: AtomicUsize::new(0),
            kill: Notify::new(),
        });
        conns.insert(conn.id, conn.clone());
        Some(conn)
    }

    fn leave(&self, id: u64) {
        self.conns.lock().expect("resp connections").remove(&id);
    }

    fn clients(&self) -> usize {
        self.conns.lock().expect("resp connections").len()
    }

    fn touch(&self, conn: &Conn) {
        conn.last_active_us.store(self.now_us(), Ordering::Relaxed);
    }
}

/// The router's own client sessions (see `counter_client::Session`): opened locally by the
/// router's clock and the cluster file's limits, as `OpenSession` would be answered; one request
/// at a time each; a session whose renewal time comes before a request's deadline is dropped.
pub struct Sessions {
    idle: Mutex<Vec<Session>>,
    limits: counter_core::Limits,
    timeout: Duration,
    in_use: Arc<Semaphore>,
}

impl Sessions {
    /// A pool for requests of at most `timeout`, at most `max` sessions in use at once.
    pub fn new(limits: counter_core::Limits, timeout: Duration, max: usize) -> Sessions {
        Sessions {
            idle: Mutex::new(Vec::new()),
            limits,
            timeout,
            in_use: Arc::new(Semaphore::new(max)),
        }
    }

    /// A session for one request (waiting, at most the request's timeout, for one to be free),
    /// with the permit that counts it in use.
    async fn take(&self) -> Result<(Session, OwnedSemaphorePermit), ClientError> {
        let permit = tokio::time::timeout(self.timeout, self.in_use.clone().acquire_owned())
            .await
            .map_err(|_| {
                ClientError::unavailable("the router's sessions stayed busy until the deadline")
            })?
            .expect("the session semaphore is never closed");
        let reuse = {
            let mut idle = self.idle.lock().expect("session pool");
            idle.retain(|s| s.takes(self.timeout));
            idle.pop()
        };
        let session = match reuse {
            Some(s) => s,
            None => self.open(),
        };
        Ok((session, permit))
    }

    /// A new session, opened by this router's clock (lifetime 0: the longest allowed).
    fn open(&self) -> Session {
        let asked = Instant::now();
        let answer = session_opened(&self.limits, 0, counter_proto::unix_ms());
        Session::from_answer(answer, asked).expect("session_opened answers a session")
    }

    /// Back to the pool after a request, unless the session expired.
    fn release(&self, session: Session, answer: &Msg) {
        if !matches!(answer, Msg::Error(e) if e.kind == ErrorKind::Expired) {
            self.idle.lock().expect("session pool").push(session);
        }
    }
}

/// Errors of [`RespCodec`]: a protocol error (answered, then the connection is closed) or I/O.
#[derive(Debug)]
pub enum CodecError {
    Protocol(String),
    Io(std::io::Error),
}

impl From<std::io::Error> for CodecError {
    fn from(e: std::io::Error) -> CodecError {
        CodecError::Io(e)
    }
}

impl std::fmt::Display for CodecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CodecError::Protocol(m) => write!(f, "Protocol error: {m}"),
            CodecError::Io(e) => write!(f, "{e}"),
        }
    }
}

/// `redis-protocol`'s RESP2 decoder behind a check of the declared lengths: yields each
/// request's arguments (a non-empty array of bulk strings).
pub struct RespCodec {
    inner: Resp2,
    max_args: usize,
    max_bulk_len: usize,
    max_frame_len: usize,
}

impl RespCodec {
    pub fn new(config: &RespConfig) -> RespCodec {
        RespCodec {
            inner: Resp2::default(),
            max_args: config.max_args,
            max_bulk_len: config.max_bulk_len,
            max_frame_len: config.max_frame_len,
        }
    }
}

/// Longest header line (`*1024\r\n`, `$524288\r\n`) taken.
const MAX_HEADER_LEN: usize = 24;

/// The number of a header line (`*N\r\n`, `$N\r\n`) starting at `at` (the type byte), and
/// where the line ends (after its CRLF); `Ok(None)` if the line is not complete yet.
fn header(buf: &[u8], at: usize, what: &str) -> Result<Option<(i64, usize)>, CodecError> {
    let line = &buf[at + 1..buf.len().min(at + 1 + MAX_HEADER_LEN)];
    let Some(cr) = line.iter().position(|&b| b == b'\r') else {
        if line.len() >= MAX_HEADER_LEN {
            return Err(CodecError::Protocol(format!("too big {what} count string")));
        }
        return Ok(None);
    };
    let invalid = || CodecError::Protocol(format!("invalid {what} length"));
    let n: i64 = std::str::from_utf8(&line[..cr])
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(invalid)?;
    match line.get(cr + 1) {
        None => Ok(None),
        Some(b'\n') => Ok(Some((n, at + 1 + cr + 2))),
        Some(_) => Err(invalid()),
    }
}

impl RespCodec {
    /// Checks the frame at the head of `buf` against the limits, as far as it has arrived:
    /// an array of at most `max_args` bulk strings of at most `max_bulk_len` bytes each, at most
    /// `max_frame_len` in all (declared lengths count before their bytes arrive). The codec
    /// parses the frame; this only refuses what must not be buffered.
    fn check_head(&self, buf: &[u8]) -> Result<(), CodecError> {
        if buf[0] != b'*' {
            return Err(CodecError::Protocol(format!(
                "expected '*', got '{}'",
                (buf[0] as char).escape_default()
            )));
        }
        let Some((count, mut at)) = header(buf, 0, "mbulk")? else {
            return Ok(());
        };
        if count > self.max_args as i64 {
            return Err(CodecError::Protocol("invalid multibulk length".into()));
        }
        for _ in 0..count.max(0) {
            let Some(&kind) = buf.get(at) else {
                return Ok(());
            };
            if kind != b'$' {
                return Err(CodecError::Protocol(format!(
                    "expected '$', got '{}'",
                    (kind as char).escape_default()
                )));
            }
            let Some((len, data)) = header(buf, at, "bulk")? else {
                return Ok(());
            };
            if !(0..=self.max_bulk_len as i64).contains(&len) {
                return Err(CodecError::Protocol("invalid bulk length".into()));
            }
            at = data + len as usize + 2;
            if at > self.max_frame_len {
                return Err(CodecError::Protocol(format!(
                    "request longer than {} bytes",
                    self.max_frame_len
                )));
            }
            match buf.get(at - 2..at) {
                Some(b"\r\n") => {}
                Some(_) => return Err(CodecError::Protocol("expected CRLF after bulk".into())),
                None => {}
            }
        }
        Ok(())
    }
}

impl Decoder for RespCodec {
    type Item = Vec<Bytes>;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Vec<Bytes>>, CodecError> {
        loop {
            if src.is_empty() {
                return Ok(None);
            }
            self.check_head(src)?;
            let frame = self
                .inner
                .decode(src)
                .map_err(|e| CodecError::Protocol(e.details().to_string()))?;
            match frame {
                None => return Ok(None),
                // `*-1` and `*0`: nothing to answer (as Redis does).
                Some(Frame::Null) => continue,
                Some(Frame::Array(items)) if items.is_empty() => continue,
                Some(Frame::Array(items)) => {
                    return items
                        .into_iter()
                        .map(|item| match item {
                            Frame::BulkString(b) => Ok(b),
                            other => Err(CodecError::Protocol(format!(
                                "expected a bulk string, got {:?}",
                                other.kind()
                            ))),
                        })
                        .collect::<Result<Vec<_>, _>>()
                        .map(Some);
                }
                Some(other) => {
                    return Err(CodecError::Protocol(format!(
                        "expected an array, got {:?}",
                        other.kind()
                    )))
                }
            }
        }
    }
}

/// A reply, and what it holds of the connection's budget until it is written.
type Reply = (Frame, Option<OwnedSemaphorePermit>);

/// Tells a client there is no room and closes.
async fn refuse(socket: TcpStream) {
    let mut writer = FramedWrite::new(socket, Resp2::default());
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        writer.send(error_frame("ERR max number of clients reached")),
    )
    .await;
    linger(writer.into_inner()).await;
}

/// After the last reply: closes the sending side and reads what the client still sends (for a
/// moment), so that the kernel does not reset the connection before the client read the reply.
async fn linger(socket: TcpStream) {
    let (mut read, mut write) = socket.into_split();
    let _ = tokio::io::AsyncWriteExt::shutdown(&mut write).await;
    let mut scratch = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        while matches!(read.read(&mut scratch).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// The reading side of a connection: frames in, replies (futures, in order) out.
struct ReadSide {
    shared: Arc<Shared>,
    conn: Arc<Conn>,
    /// `None` once handed back.
    reader: Option<FramedRead<tokio::net::tcp::OwnedReadHalf, RespCodec>>,
    budget: Arc<Semaphore>,
    name: Option<String>,
    /// Per key, when the connection's latest command on it is done: a connection's commands on
    /// one key run one after the other, in the order sent (as Redis runs a pipeline), while
    /// commands on different keys run at once.
    order: HashMap<String, futures::future::Shared<tokio::sync::oneshot::Receiver<()>>>,
    done: bool,
    /// Hands the reader back when the client is told to go (protocol error, `QUIT`), for
    /// [`linger`].
    give_back: Option<tokio::sync::oneshot::Sender<tokio::net::tcp::OwnedReadHalf>>,
    /// When this connection first saw the drain.
    drain_since: Option<Instant>,
}

/// What the reader got.
enum Next {
    Command(Vec<Bytes>),
    /// Say this and close.
    Fatal(Frame),
    /// Close now (end of input, timeout, I/O error).
    End,
}

impl ReadSide {
    /// The next request, closing the connection on a half-sent frame that stays unfinished for
    /// the frame timeout, or on silence for the idle timeout.
    async fn next(&mut self) -> Next {
        let config = &self.shared.config;
        let step = (config.frame_timeout / 2)
            .min(config.idle_timeout)
            .max(Duration::from_millis(10));
        let mut waiting = Instant::now();
        let mut partial_since: Option<Instant> = None;
        let Some(reader) = self.reader.as_mut() else {
            return Next::End;
        };
        let stop = self.shared.stop.clone();
        loop {
            let stopping = stop.is_cancelled();
            let since_stop = match stopping {
                true => *self.drain_since.get_or_insert_with(Instant::now),
                false => Instant::now(),
            };
            let step = if stopping { DRAIN_LINGER / 4 } else { step };
            let read = tokio::select! {
                read = tokio::time::timeout(step, reader.next()) => read,
                _ = stop.cancelled(), if !stopping => {
                    waiting = Instant::now();
                    continue;
                }
            };
            match read {
                // A client that keeps sending through a drain is told once more, then closed.
                Ok(Some(Ok(_))) if stopping && since_stop.elapsed() >= DRAIN_GRACE => {
                    return Next::Fatal(client_error(&ClientError::unavailable(format!(
                        "router {}",
                        counter_proto::DRAINING
                    ))));
                }
                Ok(Some(Ok(args))) => return Next::Command(args),
                Ok(Some(Err(CodecError::Protocol(m)))) => {
                    tracing::info!(id = self.conn.id, addr = %self.conn.addr, error = %m, "resp: protocol error; closing the connection");
                    return Next::Fatal(error_frame(&format!("ERR Protocol error: {m}")));
                }
                Ok(Some(Err(CodecError::Io(e)))) => {
                    tracing::debug!(id = self.conn.id, error = %e, "resp: read failed");
                    return Next::End;
                }
                Ok(None) => return Next::End,
                Err(_) => {
                    if reader.read_buffer().is_empty() {
                        partial_since = None;
                        if stopping
                            && (waiting.elapsed() >= DRAIN_LINGER
                                || since_stop.elapsed() >= DRAIN_GRACE)
                        {
                            return Next::End;
                        }
                        if waiting.elapsed() >= config.idle_timeout {
                            tracing::info!(id = self.conn.id, addr = %self.conn.addr, "resp: idle connection closed");
                            return Next::End;
                        }
                    } else if partial_since.get_or_insert_with(Instant::now).elapsed()
                        >= config.frame_timeout
                    {
                        tracing::info!(
                            id = self.conn.id,
                            addr = %self.conn.addr,
                            buffered = reader.read_buffer().len(),
                            "resp: a frame was left unfinished; connection closed"
                        );
                        return Next::End;
                    }
                }
            }
        }
    }

    /// Hands the read half back for [`linger`].
    fn finish(&mut self) {
        self.done = true;
        if let (Some(tx), Some(reader)) = (self.give_back.take(), self.reader.take()) {
            let _ = tx.send(reader.into_inner());
        }
    }
}

/// One step of a connection's request stream: the next request's reply (a future), or the end.
async fn read_step(mut rs: ReadSide) -> Option<(BoxFuture<'static, Reply>, ReadSide)> {
    if rs.done {
        return None;
    }
    let args = match rs.next().await {
        Next::Command(args) => args,
        Next::Fatal(frame) => {
            rs.finish();
            let reply: BoxFuture<'static, Reply> = futures::future::ready((frame, None)).boxed();
            return Some((reply, rs));
        }
        Next::End => return None,
    };
    rs.shared.touch(&rs.conn);
    // The request's bytes (and so its reply's, at most about as large) count against the
    // connection's budget until the reply is written: reading waits while it is spent.
    let size = args.iter().map(|a| a.len() + 16).sum::<usize>() + 16;
    let permits = size.min(rs.shared.config.max_pending_bytes) as u32;
    let permit = rs
        .budget
        .clone()
        .acquire_many_owned(permits)
        .await
        .expect("the budget is never closed");
    rs.conn.in_flight.fetch_add(1, Ordering::Relaxed);
    let step = if rs.shared.stop.is_cancelled() {
        // Read after the drain began: run nothing, say so (the client may go elsewhere).
        Step::Now(client_error(&ClientError::unavailable(format!(
            "router {}",
            counter_proto::DRAINING
        ))))
    } else {
        rs.dispatch(args)
    };
    let reply: BoxFuture<'static, Reply> = match step {
        Step::Now(frame) => futures::future::ready((frame, Some(permit))).boxed(),
        Step::Later(fut) => Box::pin(async move { (fut.await, Some(permit)) }),
        Step::Quit(frame) => {
            rs.finish();
            futures::future::ready((frame, Some(permit))).boxed()
        }
    };
    Some((reply, rs))
}

/// Serves one connection: reads requests, runs up to `window` at once, writes the replies in
/// order.
async fn connection(shared: Arc<Shared>, conn: Arc<Conn>, socket: TcpStream) {
    let (read, write) = socket.into_split();
    let (give_back, given) = tokio::sync::oneshot::channel();
    let config = shared.config.clone();
    let read_side = ReadSide {
        shared: shared.clone(),
        conn: conn.clone(),
        reader: Some(FramedRead::new(read, RespCodec::new(&config))),
        budget: Arc::new(Semaphore::new(config.max_pending_bytes)),
        name: None,
        order: HashMap::new(),
        done: false,
        give_back: Some(give_back),
        drain_since: None,
    };
    let requests = futures::stream::unfold(read_side, read_step);
    let mut replies = std::pin::pin!(requests.buffered(config.window.max(1)));
    let mut writer = FramedWrite::new(write, Resp2::default());
    let idle = config.idle_timeout;
    loop {
        let item = match replies.next().now_or_never() {
            Some(item) => item,
            None => {
                // Nothing more ready: send what is buffered, then wait.
                if !matches!(
                    tokio::time::timeout(idle, SinkExt::<Frame>::flush(&mut writer)).await,
                    Ok(Ok(()))
                ) {
                    tracing::info!(id = conn.id, addr = %conn.addr, "resp: replies not read; connection closed");
                    return;
                }
                replies.next().await
            }
        };
        let Some((frame, permit)) = item else { break };
        if !matches!(
            tokio::time::timeout(idle, writer.feed(frame)).await,
            Ok(Ok(()))
        ) {
            tracing::info!(id = conn.id, addr = %conn.addr, "resp: replies not read; connection closed");
            return;
        }
        if permit.is_some() {
            conn.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
        drop(permit);
        shared.touch(&conn);
    }
    if !matches!(
        tokio::time::timeout(idle, SinkExt::<Frame>::flush(&mut writer)).await,
        Ok(Ok(()))
    ) {
        return;
    }
    // Told to go (QUIT, protocol error): close gracefully.
    if let Ok(read) = given.await {
        if let Ok(socket) = read.reunite(writer.into_inner()) {
            linger(socket).await;
        }
    }
}

/// What one request does.
enum Step {
    /// Answered at once (connection commands, errors).
    Now(Frame),
    /// Runs against the cluster.
    Later(BoxFuture<'static, Frame>),
    /// Answered, then the connection closes.
    Quit(Frame),
}

fn error_frame(text: &str) -> Frame {
    // A RESP error is one line.
    let line: String = text
        .chars()
        .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
        .collect();
    Frame::Error(line.into())
}

fn client_error(e: &ClientError) -> Frame {
    error_frame(&format!(
        "{} {}",
        e.kind.as_str().to_ascii_uppercase(),
        e.message
    ))
}

fn ok() -> Frame {
    Frame::SimpleString(Bytes::from_static(b"OK"))
}

fn bulk(s: impl Into<Bytes>) -> Frame {
    Frame::BulkString(s.into())
}

fn wrong_arity(name: &str) -> Frame {
    error_frame(&format!(
        "ERR wrong number of arguments for '{}' command",
        name.to_ascii_lowercase()
    ))
}

fn not_an_integer() -> Frame {
    error_frame("ERR value is not an integer or out of range")
}

fn syntax_error(detail: &str) -> Frame {
    error_frame(&format!("ERR syntax error: {detail}"))
}

/// Redis's answer to an unknown command (its wording: the name and the start of the args).
fn unknown_command(args: &[Bytes]) -> Frame {
    let mut rest = String::new();
    for arg in &args[1..] {
        if rest.len() >= 128 {
            break;
        }
        let arg = String::from_utf8_lossy(arg);
        let room = 128 - rest.len();
        rest += &format!("'{}' ", arg.chars().take(room).collect::<String>());
    }
    let name = String::from_utf8_lossy(&args[0]);
    error_frame(&format!(
        "ERR unknown command '{}', with args beginning with: {rest}",
        name.chars().take(128).collect::<String>()
    ))
}

fn unknown_subcommand(command: &str, sub: &[u8]) -> Frame {
    error_frame(&format!(
        "ERR unknown subcommand '{}'. Try {command} HELP.",
        String::from_utf8_lossy(sub)
            .chars()
            .take(128)
            .collect::<String>()
    ))
}

fn int_arg(arg: &[u8]) -> Option<i64> {
    std::str::from_utf8(arg).ok()?.parse().ok()
}

fn u64_arg(arg: &[u8]) -> Option<u64> {
    std::str::from_utf8(arg).ok()?.parse().ok()
}

fn key_arg(arg: &Bytes) -> Result<String, Frame> {
    String::from_utf8(arg.to_vec())
        .map_err(|_| client_error(&ClientError::invalid("key is not valid UTF-8")))
}

/// `n` added to a counter as an operation: a positive `n` increments, a negative one
/// decrements, 0 reads.
fn add(n: i64) -> Op {
    match n {
        0 => Op::Get,
        n if n > 0 => Op::Incr(n as u64),
        n => Op::Decr(n.unsigned_abs()),
    }
}

impl ReadSide {
    /// Runs one request: connection commands at once (in order with the others, so that
    /// `CLIENT SETNAME` then `CLIENT GETNAME` pipelined answers the name), key commands
    /// against the cluster.
    fn dispatch(&mut self, args: Vec<Bytes>) -> Step {
        let name = String::from_utf8_lossy(&args[0]).to_ascii_uppercase();
        let argc = args.len();
        let arity = |ok: bool| if ok { None } else { Some(wrong_arity(&name)) };
        let bad_arity = match name.as_str() {
            "PING" => arity(argc <= 2),
            "ECHO" | "GET" | "INCR" | "DECR" | "SELECT" => arity(argc == 2),
            "SET" | "CINCRBY" | "CDECRBY" => arity(argc >= 3),
            "INCRBY" | "DECRBY" => arity(argc == 3),
            "MGET" | "CLIENT" | "CONFIG" | "AUTH" => arity(argc >= 2),
            _ => None,
        };
        if let Some(frame) = bad_arity {
            return Step::Now(frame);
        }
        let now = Step::Now;
        match name.as_str() {
            "PING" => match args.get(1) {
                Some(msg) => now(bulk(msg.clone())),
                None => now(Frame::SimpleString(Bytes::from_static(b"PONG"))),
            },
            "ECHO" => now(bulk(args[1].clone())),
            "QUIT" => Step::Quit(ok()),
            "HELLO" => now(self.hello(&args)),
            "AUTH" => now(error_frame(
                "ERR AUTH <password> called without any password configured for the default user. \
                 Are you sure your configuration is correct?",
            )),
            "SELECT" => match int_arg(&args[1]) {
                Some(0) => now(ok()),
                Some(_) => now(error_frame("ERR DB index is out of range")),
                None => now(not_an_integer()),
            },
            "CLIENT" => now(self.client(&args)),
            "COMMAND" => now(command_command(&args)),
            "CONFIG" => now(config_command(&args, self.shared.config.max_clients)),
            "INFO" => now(self.info()),
            "GET" => match key_arg(&args[1]) {
                Ok(key) => {
                    let run = run_as(
                        self.shared.clone(),
                        key.clone(),
                        Op::Get.into(),
                        None,
                        |v| bulk(v.to_string()),
                    );
                    self.later(&[key], run)
                }
                Err(e) => now(e),
            },
            "SET" => self.set(&args),
            "INCR" | "DECR" => match key_arg(&args[1]) {
                Ok(key) => {
                    let op = if name == "INCR" {
                        Op::Incr(1)
                    } else {
                        Op::Decr(1)
                    };
                    self.change(key, op)
                }
                Err(e) => now(e),
            },
            "INCRBY" | "DECRBY" => {
                let key = match key_arg(&args[1]) {
                    Ok(key) => key,
                    Err(e) => return now(e),
                };
                let Some(n) = int_arg(&args[2]) else {
                    return now(not_an_integer());
                };
                let op = if name == "INCRBY" {
                    add(n)
                } else {
                    // Decrementing by i64::MIN is incrementing by 2^63.
                    match n {
                        i64::MIN => Op::Incr(1 << 63),
                        n => add(-n),
                    }
                };
                self.change(key, op)
            }
            "CINCRBY" | "CDECRBY" => self.cincrby(&name, &args),
            "MGET" => {
                let keys: Result<Vec<String>, Frame> = args[1..].iter().map(key_arg).collect();
                match keys {
                    Ok(keys) => {
                        let run = mget(self.shared.clone(), keys.clone());
                        self.later(&keys, run)
                    }
                    Err(e) => now(e),
                }
            }
            _ => now(unknown_command(&args)),
        }
    }

    /// Runs `op` on `key` in its turn, answering the value as an integer.
    fn change(&mut self, key: String, op: Op) -> Step {
        let run = run_as(
            self.shared.clone(),
            key.clone(),
            op.into(),
            None,
            Frame::Integer,
        );
        self.later(&[key], run)
    }

    /// Runs `fut` once the connection's earlier commands on `keys` are done.
    fn later(
        &mut self,
        keys: &[String],
        fut: impl std::future::Future<Output = Frame> + Send + 'static,
    ) -> Step {
        let before: Vec<_> = keys
            .iter()
            .filter_map(|k| self.order.get(k).cloned())
            .collect();
        let (done, signal) = tokio::sync::oneshot::channel::<()>();
        let signal = signal.shared();
        if self.order.len() >= 2 * self.shared.config.window {
            self.order.retain(|_, s| s.peek().is_none());
        }
        for key in keys {
            self.order.insert(key.clone(), signal.clone());
        }
        Step::Later(Box::pin(async move {
            for earlier in before {
                let _ = earlier.await;
            }
            let frame = fut.await;
            drop(done);
            frame
        }))
    }

    /// `HELLO [protover [AUTH user pass] [SETNAME name]]`: RESP2 only, answered as Redis does.
    fn hello(&mut self, args: &[Bytes]) -> Frame {
        if let Some(version) = args.get(1) {
            match int_arg(version) {
                Some(2) => {}
                Some(_) => {
                    return error_frame("NOPROTO sorry, this protocol version is not supported")
                }
                None => {
                    return error_frame("ERR Protocol version is not an integer or out of range")
                }
            }
        }
        let mut i = 2;
        while i < args.len() {
            let opt = String::from_utf8_lossy(&args[i]).to_ascii_uppercase();
            match (opt.as_str(), args.len() - i - 1) {
                ("AUTH", n) if n >= 2 => {
                    return error_frame(
                        "ERR this server has no authentication (AUTH is not supported)",
                    )
                }
                ("SETNAME", n) if n >= 1 => {
                    if let Err(e) = self.set_name(&args[i + 1]) {
                        return e;
                    }
                    i += 2;
                }
                _ => {
                    return error_frame(&format!(
                        "ERR Syntax error in HELLO option '{}'",
                        String::from_utf8_lossy(&args[i])
                    ))
                }
            }
        }
        Frame::Array(vec![
            bulk("server"),
            bulk("counter-store"),
            bulk("version"),
            bulk(env!("CARGO_PKG_VERSION")),
            bulk("proto"),
            Frame::Integer(2),
            bulk("id"),
            Frame::Integer(self.conn.id as i64),
            bulk("mode"),
            bulk("standalone"),
            bulk("role"),
            bulk("master"),
            bulk("modules"),
            Frame::Array(Vec::new()),
        ])
    }

    fn set_name(&mut self, name: &[u8]) -> Result<(), Frame> {
        if name.iter().any(|&b| !(b'!'..=b'~').contains(&b)) {
            return Err(error_frame(
                "ERR Client names cannot contain spaces, newlines or special characters.",
            ));
        }
        self.name = (!name.is_empty()).then(|| String::from_utf8_lossy(name).into_owned());
        Ok(())
    }

    fn client(&mut self, args: &[Bytes]) -> Frame {
        let sub = String::from_utf8_lossy(&args[1]).to_ascii_uppercase();
        let argc = args.len();
        match sub.as_str() {
            "SETNAME" if argc == 3 => match self.set_name(&args[2]) {
                Ok(()) => ok(),
                Err(e) => e,
            },
            "GETNAME" if argc == 2 => match &self.name {
                Some(name) => bulk(name.clone()),
                None => Frame::Null,
            },
            "ID" if argc == 2 => Frame::Integer(self.conn.id as i64),
            "INFO" if argc == 2 => bulk(format!(
                "id={} addr={} name={} db=0 resp=2 cmd=client|info\n",
                self.conn.id,
                self.conn.addr,
                self.name.as_deref().unwrap_or("")
            )),
            // Client libraries announce themselves (redis-rs does, and ignores the answer).
            "SETINFO" if argc == 4 => ok(),
            "SETNAME" | "GETNAME" | "ID" | "INFO" | "SETINFO" => {
                wrong_arity(&format!("client|{}", sub.to_ascii_lowercase()))
            }
            _ => unknown_subcommand("CLIENT", &args[1]),
        }
    }

    fn info(&self) -> Frame {
        let s = &self.shared;
        bulk(format!(
            "# Server\r\nserver_name:counter-store\r\ncounter_store_version:{}\r\n\
             redis_mode:standalone\r\nuptime_in_seconds:{}\r\n\r\n# Clients\r\n\
             connected_clients:{}\r\nmaxclients:{}\r\n",
            env!("CARGO_PKG_VERSION"),
            s.started.elapsed().as_secs(),
            s.clients(),
            s.config.max_clients
        ))
    }

    /// `SET key int`: no options (`NX`, `XX`, `EX`, `GET`, ... do not map onto counters).
    fn set(&mut self, args: &[Bytes]) -> Step {
        if args.len() > 3 {
            return Step::Now(syntax_error(
                "SET takes a key and an integer only (NX, XX, EX, PX, EXAT, PXAT, KEEPTTL, GET are \
                 not supported)",
            ));
        }
        let key = match key_arg(&args[1]) {
            Ok(key) => key,
            Err(e) => return Step::Now(e),
        };
        let Some(v) = int_arg(&args[2]) else {
            return Step::Now(client_error(&ClientError::invalid(format!(
                "value must be a signed 64-bit integer, not {:?}",
                String::from_utf8_lossy(&args[2])
            ))));
        };
        let shared = self.shared.clone();
        let k = key.clone();
        let fut = async move {
            match run(&shared, k, Op::Set(v).into(), None).await {
                Ok(_) => ok(),
                Err(e) => client_error(&e),
            }
        };
        self.later(&[key], fut)
    }

    /// `CINCRBY key n [MIN m] [MAX m] [ID client seq]` (and `CDECRBY`): a bounded change, with
    /// the caller's request id when given (exactly once across the caller's retries).
    fn cincrby(&mut self, name: &str, args: &[Bytes]) -> Step {
        let key = match key_arg(&args[1]) {
            Ok(key) => key,
            Err(e) => return Step::Now(e),
        };
        let Some(n) = int_arg(&args[2]) else {
            return Step::Now(not_an_integer());
        };
        if n == 0 {
            return Step::Now(client_error(&ClientError::invalid(
                "delta must not be 0 (GET reads)",
            )));
        }
        let op = match (name, n) {
            ("CINCRBY", n) => add(n),
            (_, i64::MIN) => Op::Incr(1 << 63),
            (_, n) => add(-n),
        };
        let mut command = Command::from(op);
        let mut given = None;
        let mut i = 3;
        while i < args.len() {
            let opt = String::from_utf8_lossy(&args[i]).to_ascii_uppercase();
            let left = args.len() - i - 1;
            match opt.as_str() {
                "MIN" | "MAX" if left >= 1 => {
                    let Some(m) = int_arg(&args[i + 1]) else {
                        return Step::Now(not_an_integer());
                    };
                    let slot = if opt == "MIN" {
                        &mut command.min
                    } else {
                        &mut command.max
                    };
                    if slot.replace(m).is_some() {
                        return Step::Now(syntax_error(&format!("{opt} given twice")));
                    }
                    i += 2;
                }
                "ID" if left >= 2 => {
                    let (Some(client), Some(seq)) = (u64_arg(&args[i + 1]), u64_arg(&args[i + 2]))
                    else {
                        return Step::Now(not_an_integer());
                    };
                    if given.is_some() {
                        return Step::Now(syntax_error("ID given twice"));
                    }
                    given = Some(RequestId {
                        client,
                        seq,
                        expires_ms: 0,
                    });
                    i += 3;
                }
                _ => {
                    return Step::Now(syntax_error(&format!(
                        "{} takes key n [MIN m] [MAX m] [ID client seq]",
                        name.to_ascii_lowercase()
                    )))
                }
            }
        }
        let run = run_as(
            self.shared.clone(),
            key.clone(),
            command,
            given,
            Frame::Integer,
        );
        self.later(&[key], run)
    }
}

/// `COMMAND`, `COMMAND DOCS`, `COMMAND INFO`: nothing described (enough for redis-cli);
/// `COMMAND COUNT`: 0.
fn command_command(args: &[Bytes]) -> Frame {
    let Some(sub) = args.get(1) else {
        return Frame::Array(Vec::new());
    };
    match String::from_utf8_lossy(sub).to_ascii_uppercase().as_str() {
        "COUNT" => Frame::Integer(0),
        "DOCS" | "INFO" | "LIST" => Frame::Array(Vec::new()),
        _ => unknown_subcommand("COMMAND", sub),
    }
}

/// `CONFIG GET name...`: the few parameters that describe the store in Redis's terms (every
/// change is synced before it is answered: `appendonly yes`, `appendfsync always`; no
/// snapshots: `save ""`), by exact name or `*`; others are left out. redis-benchmark asks for
/// `save` and `appendonly` and warns when they are missing.
fn config_command(args: &[Bytes], max_clients: usize) -> Frame {
    match String::from_utf8_lossy(&args[1])
        .to_ascii_uppercase()
        .as_str()
    {
        "GET" if args.len() >= 3 => {
            let max_clients = max_clients.to_string();
            let known = [
                ("save", ""),
                ("appendonly", "yes"),
                ("appendfsync", "always"),
                ("databases", "1"),
                ("maxclients", max_clients.as_str()),
            ];
            let mut out = Vec::new();
            for (name, value) in known {
                let asked = args[2..]
                    .iter()
                    .any(|a| a.as_ref() == b"*" || a.eq_ignore_ascii_case(name.as_bytes()));
                if asked {
                    out.push(bulk(name.to_string()));
                    out.push(bulk(value.to_string()));
                }
            }
            Frame::Array(out)
        }
        "GET" => wrong_arity("config|get"),
        _ => unknown_subcommand("CONFIG", &args[1]),
    }
}

/// Runs one key command through the router: a mutating one with a request id (the caller's
/// `given`, or the next of a session of the router's pool).
async fn run(
    shared: &Shared,
    key: String,
    mut command: Command,
    given: Option<RequestId>,
) -> Result<Msg, ClientError> {
    let timeout_ms = shared
        .config
        .command_timeout
        .as_millis()
        .min(u32::MAX as u128) as u32;
    let msg = |command| Msg::Command {
        key: key.clone(),
        command,
        timeout_ms,
    };
    let answer = if command.op.is_read() {
        command.request = None;
        shared.router.handle(msg(command)).await
    } else if let Some(id) = given {
        command.request = Some(id);
        match shared.router.handle(msg(command)).await {
            // An earlier attempt of the caller's may have been applied: "not applied by this
            // attempt" does not tell more (as counter-client's `command_with_id`).
            Msg::Error(e) => Msg::Error(e.after_earlier_attempt().unwrap_or(e)),
            answer => answer,
        }
    } else {
        let (mut session, _permit) = shared.sessions.take().await?;
        command.request = Some(session.next_request());
        let answer = shared.router.handle(msg(command)).await;
        shared.sessions.release(session, &answer);
        answer
    };
    match answer {
        Msg::Error(e) => Err(e),
        answer => Ok(answer),
    }
}

fn value_of(answer: Msg) -> Result<i64, ClientError> {
    match answer {
        Msg::Value(v) => Ok(v),
        Msg::Swapped { value, .. } => Ok(value),
        other => Err(ClientError::unknown(format!(
            "unexpected answer from the router: {}",
            crate::forward::msg_name(&other)
        ))),
    }
}

/// A key command: its value as `as_frame` makes it (an integer, or a bulk string for `GET`), or
/// its error.
async fn run_as(
    shared: Arc<Shared>,
    key: String,
    command: Command,
    given: Option<RequestId>,
    as_frame: fn(i64) -> Frame,
) -> Frame {
    match run(&shared, key, command, given).await.and_then(value_of) {
        Ok(v) => as_frame(v),
        Err(e) => client_error(&e),
    }
}

/// `MGET`: every key read linearizably, at once; any failure fails the command (the first
/// key's error, in order).
async fn mget(shared: Arc<Shared>, keys: Vec<String>) -> Frame {
    let reads = keys
        .into_iter()
        .map(|key| run(&shared, key, Op::Get.into(), None));
    let mut values = Vec::new();
    for answer in futures::future::join_all(reads).await {
        match answer.and_then(value_of) {
            Ok(v) => values.push(bulk(v.to_string())),
            Err(e) => return client_error(&e),
        }
    }
    Frame::Array(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8]) -> (Vec<Vec<Bytes>>, Option<String>) {
        let mut codec = RespCodec::new(&RespConfig::default());
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(args)) => out.push(args),
                Ok(None) => return (out, None),
                Err(e) => return (out, Some(e.to_string())),
            }
        }
    }

    #[test]
    fn pipelined_frames_decode_in_order() {
        let (frames, err) =
            decode_all(b"*2\r\n$4\r\nINCR\r\n$1\r\nk\r\n*0\r\n*1\r\n$4\r\nPING\r\n*1\r\n$4\r\nPI");
        assert_eq!(err, None);
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0], vec![Bytes::from("INCR"), Bytes::from("k")]);
        assert_eq!(frames[1], vec![Bytes::from("PING")]);
    }

    #[test]
    fn oversized_and_malformed_frames_are_refused_before_their_bytes_arrive() {
        let refused = |input: &[u8]| decode_all(input).1.expect("refused");
        assert!(refused(b"*1\r\n$1000000000\r\n").contains("invalid bulk length"));
        assert!(refused(b"*1\r\n$-5\r\n").contains("invalid bulk length"));
        assert!(refused(b"*5000\r\n").contains("invalid multibulk length"));
        assert!(refused(b"*x\r\n").contains("invalid mbulk length"));
        assert!(refused(b"*11111111111111111111111111111").contains("too big mbulk"));
        assert!(refused(b"hello\r\n").contains("expected '*'"));
        assert!(refused(b"*1\r\n:5\r\n").contains("expected '$'"));
        assert!(refused(b"*1\r\n$2\r\nabXY").contains("CRLF"));
        // 3 bulk strings of 512 KiB: each is allowed, the frame is not.
        let mut big = b"*3\r\n$524288\r\n".to_vec();
        big.extend(vec![b'a'; 524288]);
        big.extend(b"\r\n$524288\r\n");
        assert!(refused(&big).contains("request longer"));
        // A frame cut short is waited for.
        assert_eq!(decode_all(b"*2\r\n$4\r\nINCR\r\n$3\r\nab"), (vec![], None));
    }

    #[test]
    fn increments_map_onto_operations() {
        assert_eq!(add(5), Op::Incr(5));
        assert_eq!(add(-5), Op::Decr(5));
        assert_eq!(add(0), Op::Get);
        assert_eq!(add(i64::MIN), Op::Decr(1 << 63));
    }

    #[test]
    fn unknown_commands_are_named_as_redis_does() {
        let frame = unknown_command(&[Bytes::from("FOO"), Bytes::from("a"), Bytes::from("b")]);
        assert_eq!(
            frame,
            Frame::Error("ERR unknown command 'FOO', with args beginning with: 'a' 'b' ".into())
        );
        assert_eq!(
            client_error(&ClientError::rejected("above\r\nmax")),
            Frame::Error("REJECTED above  max".into())
        );
    }
}
