//! Connections by address, created on first use and replaced when they fail.

use crate::client::{CallError, Conn};
use counter_proto::Msg;
use dashmap::DashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

/// A pool holding one multiplexed connection per peer address.
pub struct Pool {
    conns: DashMap<String, Arc<Mutex<Option<Arc<Conn>>>>>,
    connect_timeout: Duration,
}

impl Pool {
    pub fn new(connect_timeout: Duration) -> Pool {
        Pool {
            conns: DashMap::new(),
            connect_timeout,
        }
    }

    /// A live connection to `addr`, connecting if there is none.
    pub async fn conn(&self, addr: &str) -> Result<Arc<Conn>, CallError> {
        let slot = self
            .conns
            .entry(addr.to_string())
            .or_default()
            .value()
            .clone();
        // One connect at a time per peer; callers queue behind it instead of racing.
        let mut guard = slot.lock().await;
        if let Some(conn) = guard.as_ref() {
            if !conn.is_closed() {
                return Ok(conn.clone());
            }
        }
        let conn = Arc::new(Conn::connect(addr, self.connect_timeout).await?);
        *guard = Some(conn.clone());
        Ok(conn)
    }

    /// Sends `msg` to `addr` and waits at most `timeout` for the reply.
    pub async fn call(&self, addr: &str, msg: Msg, timeout: Duration) -> Result<Msg, CallError> {
        let conn = tokio::time::timeout(timeout, self.conn(addr))
            .await
            .map_err(|_| CallError::NotSent(format!("connect to {addr}: timed out")))??;
        conn.call(msg, timeout).await
    }
}
