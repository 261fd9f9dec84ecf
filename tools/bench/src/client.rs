//! One bench client: its connection to a router, its request ids, and one op with its retries.

use crate::config::Kind;
use crate::keys::Keys;
use counter_net::{CallError, Conn, Pool};
use counter_proto::{Command, ErrorKind, Msg, Op, RequestId};
use rand::Rng;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Retries of an op whose outcome was unknown (each with the same request id).
pub const MAX_RETRIES: u32 = 3;
/// Longest pause before a retry.
const BACKOFF_MAX: Duration = Duration::from_millis(500);

/// How one op ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Answered: the counter's value afterwards.
    Ok(i64),
    /// Certainly not applied (invalid, unavailable, rejected).
    Failed(ErrorKind, String),
    /// May or may not have been applied.
    Unknown(String),
}

/// What an answer (or its absence) means. `after_unknown`: an earlier attempt of the same
/// command had an unknown outcome, so "not applied" speaks for this attempt only.
pub fn classify(result: Result<Msg, CallError>, after_unknown: bool) -> Outcome {
    match result {
        Ok(Msg::Value(value)) | Ok(Msg::Swapped { value, .. }) => Outcome::Ok(value),
        Ok(Msg::Error(e)) => match e.kind {
            ErrorKind::Unknown => Outcome::Unknown(e.message),
            // An expired request id is answered `invalid`; after a lost attempt, that (like
            // `unavailable`) does not mean the earlier attempt was not applied.
            ErrorKind::Unavailable | ErrorKind::Invalid if after_unknown => {
                Outcome::Unknown(format!("an earlier attempt may have been applied; {e}"))
            }
            kind => Outcome::Failed(kind, e.message),
        },
        Ok(other) => Outcome::Unknown(format!("unexpected answer from the router: {other:?}")),
        Err(CallError::NotSent(e)) if after_unknown => {
            Outcome::Unknown(format!("an earlier attempt may have been applied; {e}"))
        }
        Err(CallError::NotSent(e)) => Outcome::Failed(ErrorKind::Unavailable, e),
        Err(CallError::Lost(e)) => Outcome::Unknown(e),
    }
}

/// A connection to one router, taken from a shared pool and replaced when it fails.
pub struct Link {
    pool: Arc<Pool>,
    addr: String,
    conn: Option<Arc<Conn>>,
}

impl Link {
    pub fn new(pool: Arc<Pool>, addr: String) -> Link {
        Link {
            pool,
            addr,
            conn: None,
        }
    }

    /// Connects now, if not connected.
    pub async fn connect(&mut self, timeout: Duration) -> Result<(), CallError> {
        if self.conn.as_ref().is_some_and(|c| !c.is_closed()) {
            return Ok(());
        }
        let conn = tokio::time::timeout(timeout, self.pool.conn(&self.addr))
            .await
            .map_err(|_| CallError::NotSent(format!("connect to {}: timed out", self.addr)))??;
        self.conn = Some(conn);
        Ok(())
    }

    async fn call(&mut self, msg: Msg, timeout: Duration) -> Result<Msg, CallError> {
        self.connect(timeout).await?;
        let conn = self.conn.as_ref().expect("connected above");
        conn.call(msg, timeout).await
    }
}

/// One simulated client of the store.
pub struct Client {
    link: Link,
    /// This client's id in request ids, and the last sequence number it used.
    id: u64,
    last_seq: u64,
    timeout: Duration,
}

impl Client {
    pub fn new(link: Link, timeout: Duration) -> Client {
        Client {
            link,
            id: rand::thread_rng().gen(),
            last_seq: 0,
            timeout,
        }
    }

    /// A fresh request id: microseconds since the Unix epoch, strictly increasing.
    fn next_request(&mut self) -> RequestId {
        let id = RequestId::next(self.id, self.last_seq);
        self.last_seq = id.seq;
        id
    }

    /// Runs one op on key `index` within the op timeout; an unknown outcome of a command that
    /// is safe to repeat (a read, or a change with a request id) is retried up to
    /// [`MAX_RETRIES`] times. Returns the outcome and the number of retries.
    pub async fn execute(
        &mut self,
        keys: &Keys,
        index: u64,
        kind: Kind,
        request_ids: bool,
    ) -> (Outcome, u32) {
        let deadline = Instant::now() + self.timeout;
        let op = match kind {
            Kind::Incr => Op::Incr(1),
            Kind::Decr => Op::Decr(1),
            Kind::Get => Op::Get,
        };
        let request = (kind != Kind::Get && request_ids).then(|| self.next_request());
        let command = Command {
            op,
            min: None,
            max: None,
            request,
        };
        let retry_safe = kind == Kind::Get || request.is_some();
        let mut retries = 0;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ms = left.as_millis().min(u128::from(u32::MAX)) as u32;
            // The router gets most of the budget so that its answer arrives before we give up.
            let msg = Msg::Command {
                key: keys.name(index),
                command,
                timeout_ms: (ms / 10 * 9).max(1),
            };
            let outcome = classify(self.link.call(msg, left).await, retries > 0);
            let Outcome::Unknown(e) = &outcome else {
                return (outcome, retries);
            };
            if !retry_safe || retries >= MAX_RETRIES {
                return (outcome, retries);
            }
            let cap = Duration::from_millis(20u64 << retries).min(BACKOFF_MAX);
            let pause = rand::thread_rng().gen_range(cap / 2..=cap);
            let left = deadline.saturating_duration_since(Instant::now());
            if left <= pause + Duration::from_millis(10) {
                return (outcome, retries);
            }
            tracing::debug!(retries, error = %e, "outcome unknown; retrying");
            tokio::time::sleep(pause).await;
            retries += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use counter_proto::ClientError;

    #[test]
    fn answers_are_classified_honestly() {
        assert_eq!(classify(Ok(Msg::Value(3)), false), Outcome::Ok(3));
        assert_eq!(
            classify(Ok(Msg::Error(ClientError::rejected("bound"))), false),
            Outcome::Failed(ErrorKind::Rejected, "bound".into())
        );
        assert!(matches!(
            classify(Ok(Msg::Error(ClientError::unknown("lost"))), false),
            Outcome::Unknown(_)
        ));
        assert!(matches!(
            classify(Err(CallError::Lost("x".into())), false),
            Outcome::Unknown(_)
        ));
        assert_eq!(
            classify(Err(CallError::NotSent("refused".into())), false),
            Outcome::Failed(ErrorKind::Unavailable, "refused".into())
        );
        // After an unknown attempt, "not applied" no longer holds for the op.
        assert!(matches!(
            classify(Err(CallError::NotSent("refused".into())), true),
            Outcome::Unknown(_)
        ));
        assert!(matches!(
            classify(Ok(Msg::Error(ClientError::unavailable("no quorum"))), true),
            Outcome::Unknown(_)
        ));
        assert!(matches!(
            classify(Ok(Msg::Error(ClientError::invalid("expired"))), true),
            Outcome::Unknown(_)
        ));
        assert!(matches!(
            classify(
                Ok(Msg::Accepted {
                    ballot: Default::default(),
                    next: None,
                }),
                false
            ),
            Outcome::Unknown(_)
        ));
    }

    #[test]
    fn request_ids_increase_strictly() {
        let pool = Arc::new(Pool::new(Duration::from_millis(10)));
        let mut c = Client::new(
            Link::new(pool, "127.0.0.1:1".into()),
            Duration::from_secs(1),
        );
        let a = c.next_request();
        let b = c.next_request();
        assert_eq!(a.client, b.client);
        assert!(b.seq > a.seq);
        c.last_seq = u64::MAX / 2;
        assert_eq!(c.next_request().seq, u64::MAX / 2 + 1);
    }
}
