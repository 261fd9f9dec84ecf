//! One bench client: its connection to a router, its session and request ids, and one op with
//! its retries. A bench client runs one op at a time, so one session each (the rule of
//! `counter-client`'s sessions: one request in flight per session).

use crate::config::Kind;
use crate::keys::Keys;
use counter_cluster::Directory;
use counter_net::{CallError, Conn, Pool};
use counter_proto::{Command, ErrorKind, Msg, Op, RequestId};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Retries of an op whose outcome was unknown (each with the same request id).
pub const MAX_RETRIES: u32 = 3;
/// Longest pause before a retry.
const BACKOFF_START: Duration = Duration::from_millis(10);
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
            // `expired`: not applied now, but an earlier attempt may have been.
            ErrorKind::Unknown | ErrorKind::Expired => Outcome::Unknown(e.message),
            // After a lost attempt, "not applied" speaks for this attempt only.
            ErrorKind::Unavailable if after_unknown => {
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

/// Asks `router` where keys live (`--direct`).
pub async fn fetch_directory(router: &str, timeout: Duration) -> Result<Directory, String> {
    let answer = Pool::new(timeout)
        .call(router, Msg::GetPlacement, timeout)
        .await
        .map_err(|e| format!("router {router}: {e}"))?;
    Directory::from_answer(answer)
}

/// One simulated client of the store.
pub struct Client {
    link: Link,
    /// `--etcd`: the etcd member this client sends its ops to instead.
    etcd: Option<crate::etcd::Etcd>,
    /// `--direct`: the placement, and the connections to the nodes.
    direct: Option<(Arc<Directory>, Arc<Pool>)>,
    session: Option<counter_client::Session>,
    timeout: Duration,
}

impl Client {
    pub fn new(link: Link, timeout: Duration) -> Client {
        Client {
            link,
            etcd: None,
            direct: None,
            session: None,
            timeout,
        }
    }

    /// Sends ops to etcd instead (`--etcd`).
    pub fn use_etcd(&mut self, etcd: crate::etcd::Etcd) {
        self.etcd = Some(etcd);
    }

    /// Sends ops straight to a replica of their key, over `pool`'s connections to the nodes.
    pub fn go_direct(&mut self, direct: Arc<Directory>, pool: Arc<Pool>) {
        self.direct = Some((direct, pool));
    }

    /// Sends one command: to the first reachable replica of its key (direct), else the router.
    async fn call(&mut self, key: &str, msg: Msg, left: Duration) -> Result<Msg, CallError> {
        if let Some((direct, pool)) = &self.direct {
            for addr in direct.replicas(key) {
                match pool.call(addr, msg.clone(), left).await {
                    Err(CallError::NotSent(_)) => continue,
                    other => return other,
                }
            }
        }
        self.link.call(msg, left).await
    }

    /// The next request id of this client's session, opening a new session (at the router,
    /// by its clock) when there is none or it may not take a request of this timeout
    /// (`counter_client::Session`'s rules).
    async fn next_request(&mut self) -> Result<RequestId, Outcome> {
        if !self.session.is_some_and(|s| s.takes(self.timeout)) {
            let asked = Instant::now();
            let open = Msg::OpenSession { lifetime_ms: 0 };
            let answer = self.link.call(open, self.timeout).await.map_err(|e| {
                Outcome::Failed(ErrorKind::Unavailable, format!("opening a session: {e}"))
            })?;
            let session = counter_client::Session::from_answer(answer, asked)
                .map_err(|e| Outcome::Failed(e.kind, e.message))?;
            self.session = Some(session);
        }
        Ok(self.session.as_mut().expect("opened above").next_request())
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
        if let Some(etcd) = &mut self.etcd {
            return etcd.execute(&keys.name(index), kind, self.timeout).await;
        }
        let deadline = Instant::now() + self.timeout;
        let op = match kind {
            Kind::Incr => Op::Incr(1),
            Kind::Decr => Op::Decr(1),
            Kind::Get => Op::Get,
        };
        let request = match kind != Kind::Get && request_ids {
            true => match self.next_request().await {
                Ok(id) => Some(id),
                Err(failed) => return (failed, 0),
            },
            false => None,
        };
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
            let key = keys.name(index);
            let msg = Msg::Command {
                key: key.clone(),
                command,
                timeout_ms: (ms / 10 * 9).max(1),
            };
            let result = self.call(&key, msg, left).await;
            if matches!(&result, Ok(Msg::Error(e)) if e.kind == ErrorKind::Expired) {
                self.session = None; // an expired session takes no more requests
            }
            let outcome = classify(result, retries > 0);
            let Outcome::Unknown(e) = &outcome else {
                return (outcome, retries);
            };
            if !retry_safe || retries >= MAX_RETRIES {
                return (outcome, retries);
            }
            let pause = counter_net::backoff(retries + 1, BACKOFF_START, BACKOFF_MAX);
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
            classify(Ok(Msg::Error(ClientError::expired("session ended"))), false),
            Outcome::Unknown(_)
        ));
        assert_eq!(
            classify(Ok(Msg::Error(ClientError::invalid("bad key"))), true),
            Outcome::Failed(ErrorKind::Invalid, "bad key".into())
        );
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
}
