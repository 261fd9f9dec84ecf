//! `counter-client`: the client library of the counter store.
//!
//! A [`Client`] talks to one or more `counter-router`s. It owns what makes retries safe:
//!
//! - **Sessions.** Every mutating command carries a request id `(client, seq, expires_ms)` of a
//!   *session*: a random client id, a sequence number counting 1, 2, 3, ... and the session's
//!   end, handed out by a router (`OpenSession`) by the router's clock, so this machine's clock
//!   never matters. A session carries one request at a time: a `Client` keeps a small pool of
//!   them, one per request in flight, and moves to a new session well before one ends.
//! - **Retries.** An `unknown` outcome (lost connection, no decision in time) of a read or of a
//!   command with a request id is sent again with the same id, with randomized exponential
//!   backoff, until the deadline: the key's register remembers the request, so it is applied at
//!   most once.
//! - **Direct mode** ([`Builder::direct`]): the client fetches the cluster's placement from a
//!   router once and sends each command straight to a replica of its key, which coordinates it
//!   (one network hop less); a replica that cannot be reached is skipped, and when none of the
//!   key's replicas can be, the command goes through a router.
//! - **Typed errors.** [`Error::kind`] is one of [`ErrorKind`]: `Invalid` (never applied),
//!   `Unavailable` (definitely not applied), `Unknown` (may or may not have been applied),
//!   `Rejected` (a bound refused it, nothing changed), `Expired` (the session ended or the
//!   request is too old to be recognised: its outcome is unknown).
//!
//! ```no_run
//! # async fn demo() -> Result<(), counter_client::Error> {
//! let client = counter_client::Client::connect("127.0.0.1:7100").await?;
//! let views = client.incr("page_views", 1).await?;
//! let stock = client.decr_bounded("stock:sku-123", 1, Some(0), None).await?;
//! println!("{views} views, {stock} left");
//! # Ok(())
//! # }
//! ```

use counter_cluster::Directory;
use counter_net::{CallError, Pool};
use counter_proto::Msg;
use counter_proto::NOT_A_MEMBER;
use rand::Rng;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;

pub use counter_proto::{ClientError as Error, Command, ErrorKind, Op, RequestId};

/// Most attempts of one command whose outcome was unknown (each with the same request id).
const MAX_ATTEMPTS: u32 = 8;
/// Longest pause between two attempts.
const BACKOFF_START: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_millis(500);

/// What a command answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The counter's value after the command (or read).
    Value(i64),
    /// A compare-and-set: the value held afterwards, and whether it swapped.
    Swapped { value: i64, swapped: bool },
}

/// How to build a [`Client`].
///
/// ```
/// let builder = counter_client::Client::builder(["127.0.0.1:7100", "127.0.0.1:7200"])
///     .timeout(std::time::Duration::from_secs(5));
/// # drop(builder);
/// ```
#[derive(Clone, Debug)]
pub struct Builder {
    routers: Vec<String>,
    timeout: Duration,
    session_ms: u64,
    direct: bool,
}

impl Builder {
    /// Sends each command straight to a replica of its key instead of through a router (see
    /// the crate's doc); the routers are still asked for the placement and used as a fallback.
    ///
    /// ```
    /// let client = counter_client::Client::builder(["127.0.0.1:7100"]).direct(true).build();
    /// # drop(client);
    /// ```
    pub fn direct(mut self, direct: bool) -> Builder {
        self.direct = direct;
        self
    }

    /// How long one command may take, retries included (default 10 s).
    ///
    /// ```
    /// let b = counter_client::Client::builder(["127.0.0.1:7100"]);
    /// let client = b.timeout(std::time::Duration::from_secs(2)).build();
    /// # drop(client);
    /// ```
    pub fn timeout(mut self, timeout: Duration) -> Builder {
        self.timeout = timeout;
        self
    }

    /// The session life to ask for (default: the longest the cluster allows). A short-lived
    /// process asks for a short one, so that keys forget it sooner.
    ///
    /// ```
    /// use std::time::Duration;
    /// let b = counter_client::Client::builder(["127.0.0.1:7100"]);
    /// let one_shot = b.session_life(Duration::from_secs(300)).build();
    /// # drop(one_shot);
    /// ```
    pub fn session_life(mut self, life: Duration) -> Builder {
        self.session_ms = life.as_millis().min(u128::from(u64::MAX)) as u64;
        self
    }

    /// A client; no connection is made until the first command.
    ///
    /// ```
    /// let client = counter_client::Client::builder(["127.0.0.1:7100"]).build();
    /// # drop(client);
    /// ```
    pub fn build(self) -> Client {
        Client {
            routers: self.routers,
            pool: Pool::new(self.timeout.min(Duration::from_secs(2))),
            timeout: self.timeout,
            session_ms: self.session_ms,
            idle: Mutex::new(Vec::new()),
            direct: self.direct,
            placement: OnceCell::new(),
        }
    }
}

/// A session: one request at a time, numbered 1, 2, 3, ... (see the crate's doc). [`Client`]
/// keeps a pool of them; a tool with its own connections (counter-bench) uses them directly:
/// open with [`Msg::OpenSession`], build with [`Session::from_answer`], check
/// [`Session::takes`] before each request, and take its id from [`Session::next_request`].
///
/// ```
/// use std::time::{Duration, Instant};
/// let asked = Instant::now();
/// let answer = counter_proto::Msg::Session { expires_ms: 1_000_000, renew_after_ms: 120_000 };
/// let mut s = counter_client::Session::from_answer(answer, asked).unwrap();
/// assert!(s.takes(Duration::from_secs(10)));
/// assert_eq!(s.next_request().seq, 1);
/// assert_eq!(s.next_request().seq, 2);
/// assert!(!s.takes(Duration::from_secs(200)), "its retries could outlive it");
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Session {
    client: u64,
    expires_ms: u64,
    /// When to stop using it for new requests (this process's monotonic clock).
    renew_at: Instant,
    /// The last sequence number used.
    seq: u64,
}

impl Session {
    /// The session an `OpenSession` answer describes (`asked`: when it was asked for): a
    /// random client id, numbers from 1. Any other answer is an error: opening a session
    /// changes nothing, so nothing was applied.
    pub fn from_answer(answer: Msg, asked: Instant) -> Result<Session, Error> {
        match answer {
            Msg::Session {
                expires_ms,
                renew_after_ms,
            } => Ok(Session {
                client: rand::thread_rng().gen(),
                expires_ms,
                renew_at: asked + Duration::from_millis(renew_after_ms),
                seq: 0,
            }),
            Msg::Error(e) => Err(e),
            other => Err(Error::unavailable(format!(
                "opening a session: unexpected answer {other:?}"
            ))),
        }
    }

    /// True when a request with this `timeout` (retries included) may go in this session: it
    /// ends before the session's renewal time, so no attempt of it reaches a server after the
    /// session's end, even one whose clock is ahead by the skew allowed.
    pub fn takes(&self, timeout: Duration) -> bool {
        self.renew_at > Instant::now() + timeout
    }

    /// The id of the session's next request.
    pub fn next_request(&mut self) -> RequestId {
        self.seq += 1;
        RequestId {
            client: self.client,
            seq: self.seq,
            expires_ms: self.expires_ms,
        }
    }
}

/// A connection to the counter store through its routers. Share it between tasks (`Arc`):
/// each command in flight uses a session of its own.
///
/// ```no_run
/// # async fn demo() -> Result<(), counter_client::Error> {
/// let client = counter_client::Client::connect("127.0.0.1:7100").await?;
/// assert_eq!(client.set("k", 5).await?, 5);
/// assert_eq!(client.cas("k", 5, 7).await?, (7, true));
/// assert_eq!(client.get("k").await?, 7);
/// # Ok(())
/// # }
/// ```
pub struct Client {
    routers: Vec<String>,
    pool: Pool,
    timeout: Duration,
    session_ms: u64,
    /// Sessions not in use, ready for the next request.
    idle: Mutex<Vec<Session>>,
    direct: bool,
    /// Direct mode's placement, fetched once (`None`: it could not be, so use the routers).
    placement: OnceCell<Option<Directory>>,
}

impl Client {
    /// A builder for a client of these routers (tried in order when one cannot be reached).
    ///
    /// ```
    /// let client = counter_client::Client::builder(["127.0.0.1:7100"]).build();
    /// # drop(client);
    /// ```
    pub fn builder<I, S>(routers: I) -> Builder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Builder {
            routers: routers.into_iter().map(Into::into).collect(),
            timeout: Duration::from_secs(10),
            session_ms: 0,
            direct: false,
        }
    }

    /// A client of one router, with the default settings, after checking that the router
    /// answers (it opens the first session).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), counter_client::Error> {
    /// let client = counter_client::Client::connect("127.0.0.1:7100").await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect(router: impl Into<String>) -> Result<Client, Error> {
        let client = Client::builder([router.into()]).build();
        let session = client.open_session().await?;
        client.release(session);
        Ok(client)
    }

    /// Adds `n` (> 0) to `key`; the new value.
    ///
    /// ```no_run
    /// # async fn demo(client: counter_client::Client) -> Result<(), counter_client::Error> {
    /// let v = client.incr("page_views", 1).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn incr(&self, key: &str, n: u64) -> Result<i64, Error> {
        self.incr_bounded(key, n, None, None).await
    }

    /// Subtracts `n` (> 0) from `key`; the new value.
    ///
    /// ```no_run
    /// # async fn demo(client: counter_client::Client) -> Result<(), counter_client::Error> {
    /// let left = client.decr("stock:sku-1", 2).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn decr(&self, key: &str, n: u64) -> Result<i64, Error> {
        self.decr_bounded(key, n, None, None).await
    }

    /// Adds `n` only if the result stays within `min..=max`; else [`ErrorKind::Rejected`] and
    /// nothing changes.
    ///
    /// ```no_run
    /// # async fn demo(client: counter_client::Client) -> Result<(), counter_client::Error> {
    /// // A quota: at most 100 per tenant.
    /// let used = client.incr_bounded("quota:tenant-9", 1, None, Some(100)).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn incr_bounded(
        &self,
        key: &str,
        n: u64,
        min: Option<i64>,
        max: Option<i64>,
    ) -> Result<i64, Error> {
        value(self.command(key, bounded(Op::Incr(n), min, max)).await?)
    }

    /// Subtracts `n` only if the result stays within `min..=max` (e.g. stock never below 0);
    /// else [`ErrorKind::Rejected`] and nothing changes.
    ///
    /// ```no_run
    /// # async fn demo(client: counter_client::Client) -> Result<(), counter_client::Error> {
    /// match client.decr_bounded("stock:sku-1", 1, Some(0), None).await {
    ///     Ok(left) => println!("sold, {left} left"),
    ///     Err(e) if e.kind == counter_client::ErrorKind::Rejected => println!("sold out"),
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn decr_bounded(
        &self,
        key: &str,
        n: u64,
        min: Option<i64>,
        max: Option<i64>,
    ) -> Result<i64, Error> {
        value(self.command(key, bounded(Op::Decr(n), min, max)).await?)
    }

    /// The current value (0 for a key never written).
    ///
    /// ```no_run
    /// # async fn demo(client: counter_client::Client) -> Result<(), counter_client::Error> {
    /// let views = client.get("page_views").await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn get(&self, key: &str) -> Result<i64, Error> {
        value(self.command(key, Op::Get.into()).await?)
    }

    /// Sets `key` to `v`; returns `v`.
    ///
    /// ```no_run
    /// # async fn demo(client: counter_client::Client) -> Result<(), counter_client::Error> {
    /// assert_eq!(client.set("stock:sku-1", 40).await?, 40);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn set(&self, key: &str, v: i64) -> Result<i64, Error> {
        value(self.command(key, Op::Set(v).into()).await?)
    }

    /// Sets `key` to 0; returns 0.
    ///
    /// ```no_run
    /// # async fn demo(client: counter_client::Client) -> Result<(), counter_client::Error> {
    /// assert_eq!(client.reset("page_views").await?, 0);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn reset(&self, key: &str) -> Result<i64, Error> {
        value(self.command(key, Op::Reset.into()).await?)
    }

    /// Sets `key` to `new` if it holds `expected`: the value held afterwards and whether it
    /// swapped.
    ///
    /// ```no_run
    /// # async fn demo(client: counter_client::Client) -> Result<(), counter_client::Error> {
    /// let (now, swapped) = client.cas("lock", 0, 1).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn cas(&self, key: &str, expected: i64, new: i64) -> Result<(i64, bool), Error> {
        match self.command(key, Op::Cas { expected, new }.into()).await? {
            Answer::Swapped { value, swapped } => Ok((value, swapped)),
            Answer::Value(v) => Err(Error::unknown(format!(
                "a compare-and-set was answered with a plain value {v}"
            ))),
        }
    }

    /// Runs any command (its `request` is filled in from a session for a mutating one).
    ///
    /// ```no_run
    /// # async fn demo(client: counter_client::Client) -> Result<(), counter_client::Error> {
    /// use counter_client::{Command, Op};
    /// let answer = client.command("k", Command::from(Op::Incr(2))).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn command(&self, key: &str, mut command: Command) -> Result<Answer, Error> {
        counter_proto::validate_key(key)?;
        counter_proto::validate_command(&command)?;
        if command.op.is_read() {
            command.request = None;
            return self.run(key, command, false).await;
        }
        let mut session = self.take_session().await?;
        command.request = Some(session.next_request());
        let result = self.run(key, command, false).await;
        // An expired session takes no more requests; any other outcome leaves it usable (an
        // abandoned attempt with a lower number is refused once a later one is applied).
        if !matches!(&result, Err(e) if e.kind == ErrorKind::Expired) {
            self.release(session);
        }
        result
    }

    /// Runs a command whose request id the caller chose (`counter-cli --request-id`): an
    /// earlier process may have sent it, so "not applied by this attempt" is reported as
    /// unknown.
    ///
    /// ```no_run
    /// # async fn demo(client: counter_client::Client) -> Result<(), counter_client::Error> {
    /// use counter_client::{Command, Op, RequestId};
    /// // Retried across processes with the same id: applied at most once.
    /// let id = RequestId { client: 42, seq: 1_764_000_000_000_000, expires_ms: 0 };
    /// let answer = client.command_with_id("payments", Op::Incr(250).into(), id).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn command_with_id(
        &self,
        key: &str,
        command: Command,
        id: RequestId,
    ) -> Result<Answer, Error> {
        counter_proto::validate_key(key)?;
        counter_proto::validate_command(&command)?;
        let command = Command {
            request: Some(id),
            ..command
        };
        self.run(key, command, true).await
    }

    /// A session ready for a request: an idle one whose renewal time comes after this
    /// request's whole deadline (so that no attempt of it reaches a server after the session's
    /// end, even one whose clock is ahead by the skew allowed), or a new one.
    async fn take_session(&self) -> Result<Session, Error> {
        let reuse = {
            let mut idle = self.idle.lock().expect("session pool");
            idle.retain(|s| s.takes(self.timeout));
            idle.pop()
        };
        match reuse {
            Some(s) => Ok(s),
            None => self.open_session().await,
        }
    }

    fn release(&self, session: Session) {
        self.idle.lock().expect("session pool").push(session);
    }

    async fn open_session(&self) -> Result<Session, Error> {
        let asked = Instant::now();
        let msg = Msg::OpenSession {
            lifetime_ms: self.session_ms,
        };
        // Direct mode outlives the routers: the nodes open sessions too.
        let nodes: &[String] = match self.placement.get() {
            Some(Some(directory)) => directory.nodes(),
            _ => &[],
        };
        let answer = self
            .call_first(&self.routers, nodes, msg, self.timeout)
            .await;
        if matches!(&answer, Ok(Msg::Session { renew_after_ms, .. })
            if Duration::from_millis(*renew_after_ms) <= self.timeout)
        {
            tracing::warn!(
                timeout_ms = self.timeout.as_millis() as u64,
                "the cluster's sessions are renewed sooner than this client's timeout: a \
                 request retried that long may be answered expired"
            );
        }
        match answer {
            Ok(answer) => Session::from_answer(answer, asked),
            // Opening a session changes nothing: whatever happened, nothing was applied.
            Err(e) => Err(Error::unavailable(format!("opening a session: {e}"))),
        }
    }

    /// Sends `command` until it is decided, retrying an unknown outcome with the same request
    /// id (reads and commands with an id are safe to retry) until the deadline. `given`: the
    /// id came from the caller, and an earlier process may have sent it.
    async fn run(&self, key: &str, command: Command, given: bool) -> Result<Answer, Error> {
        let deadline = Instant::now() + self.timeout;
        let retry_safe = command.op.is_read() || command.request.is_some();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let left = deadline.saturating_duration_since(Instant::now());
            let mut result = self.send(key, command, left).await;
            if let Err(e) = &result {
                // An earlier attempt (ours, or another process's with the same id) may have
                // been applied: "not applied by this attempt" does not tell more.
                if attempt > 1 || given {
                    if let Some(unknown) = e.after_earlier_attempt() {
                        result = Err(unknown);
                    }
                }
            }
            match result {
                Err(e) if e.kind == ErrorKind::Unknown && retry_safe && attempt < MAX_ATTEMPTS => {
                    let pause = counter_net::backoff(attempt, BACKOFF_START, BACKOFF_MAX);
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left <= pause + Duration::from_millis(10) {
                        return Err(e);
                    }
                    tracing::debug!(attempt, error = %e, "outcome unknown; retrying");
                    tokio::time::sleep(pause).await;
                }
                other => return other,
            }
        }
    }

    async fn send(&self, key: &str, command: Command, left: Duration) -> Result<Answer, Error> {
        let ms = left.as_millis().min(u128::from(u32::MAX)) as u32;
        // The router gets most of the budget so its own answer arrives before we give up.
        let msg = Msg::Command {
            key: key.to_string(),
            command,
            timeout_ms: (ms / 10 * 9).max(1),
        };
        // Direct: the key's replicas, then the routers if none takes it.
        let replicas: &[String] = match self.directory().await {
            Some(directory) => directory.replicas(key),
            None => &[],
        };
        let result = self.call_first(replicas, &self.routers, msg, left).await;
        match result {
            Ok(Msg::Error(e)) => Err(e),
            Ok(Msg::Value(v)) => Ok(Answer::Value(v)),
            Ok(Msg::Swapped { value, swapped }) => Ok(Answer::Swapped { value, swapped }),
            Ok(other) => Err(Error::unknown(format!(
                "unexpected answer from the router: {other:?}"
            ))),
            Err(CallError::NotSent(e)) => Err(Error::unavailable(e)),
            Err(CallError::Lost(e)) => Err(Error::unknown(format!(
                "{e}; the command may have been applied"
            ))),
        }
    }

    /// Direct mode's directory, fetched from a router the first time (`None`: not in direct
    /// mode, or it could not be fetched, so the routers are used).
    async fn directory(&self) -> Option<&Directory> {
        if !self.direct {
            return None;
        }
        self.placement
            .get_or_init(|| async {
                let answer = self.call(Msg::GetPlacement, self.timeout).await;
                let directory = answer
                    .map_err(|e| e.to_string())
                    .and_then(Directory::from_answer);
                directory
                    .map_err(|e| tracing::warn!(error = %e, "no placement; using the routers"))
                    .ok()
            })
            .await
            .as_ref()
    }

    /// Sends `msg` to the first router that takes it.
    async fn call(&self, msg: Msg, left: Duration) -> Result<Msg, CallError> {
        self.call_first(&self.routers, &[], msg, left).await
    }

    /// Sends `msg` to the first of `first`, then `then`, that takes it, failing over only while that is
    /// safe: nothing was sent, or a node answered that it is not a member any more (it was
    /// removed since the directory was fetched; nothing was applied). `msg` is copied only
    /// while another candidate remains.
    async fn call_first(
        &self,
        first: &[String],
        then: &[String],
        msg: Msg,
        left: Duration,
    ) -> Result<Msg, CallError> {
        let total = first.len() + then.len();
        let mut msg = Some(msg);
        let mut last = Err(CallError::NotSent("no router given".into()));
        for i in 0..total {
            let addr = first.get(i).unwrap_or_else(|| &then[i - first.len()]);
            let this = match i + 1 < total {
                true => msg.clone(),
                false => msg.take(),
            };
            let answer = self
                .pool
                .call(addr, this.expect("kept for the last"), left)
                .await;
            match answer {
                Err(CallError::NotSent(e)) => {
                    tracing::debug!(%addr, error = %e, "unreachable; trying the next");
                    last = Err(CallError::NotSent(format!("{addr}: {e}")));
                }
                Ok(Msg::Error(e))
                    if e.kind == ErrorKind::Unavailable && e.message.contains(NOT_A_MEMBER) =>
                {
                    tracing::warn!(%addr, error = %e, "not a member any more; trying the next");
                    last = Ok(Msg::Error(e));
                }
                Err(CallError::Lost(e)) => return Err(CallError::Lost(format!("{addr}: {e}"))),
                answer => return answer,
            }
        }
        last
    }
}

fn bounded(op: Op, min: Option<i64>, max: Option<i64>) -> Command {
    Command {
        op,
        min,
        max,
        request: None,
    }
}

fn value(answer: Answer) -> Result<i64, Error> {
    match answer {
        Answer::Value(v) => Ok(v),
        Answer::Swapped { value, .. } => Ok(value),
    }
}
