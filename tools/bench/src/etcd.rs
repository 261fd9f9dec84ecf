//! `--etcd URL`: the same workloads against etcd v3, for the ratio BENCHMARKS.md quotes
//! (`tools/etcd-bench.sh` starts a 3-member etcd and runs them). An increment is etcd's usual
//! compare-and-swap: a transaction that puts value + delta if the key's `mod_revision` is the
//! one last seen, and otherwise reads the key, to try again with what it read (how etcd's
//! own STM and `clientv3/concurrency` increment). A read is a range of the key.
//!
//! It speaks etcd's JSON gateway (`/v3/kv/txn`, `/v3/kv/range`: keys and values in base64,
//! 64-bit integers as strings) over one HTTP/1.1 keep-alive connection per client, with
//! `hyper`; etcd fsyncs its WAL before it answers, as our nodes do.

use crate::client::Outcome;
use crate::config::Kind;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::Bytes;
use counter_proto::ErrorKind;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Compare-and-swap attempts of one increment before it is reported failed (a key that many
/// clients write at once).
const MAX_CAS: u32 = 1_000;

/// One bench client's connection to an etcd member.
pub struct Etcd {
    /// `host:port` of the member.
    addr: String,
    sender: Option<SendRequest<Full<Bytes>>>,
    /// What this client last saw of each key: value and `mod_revision`.
    seen: HashMap<String, (i64, i64)>,
}

/// Why a request got no usable answer: `sent` if it may have reached etcd.
struct Failure {
    sent: bool,
    message: String,
}

impl Etcd {
    /// A client of the member at `url` (`http://host:port`).
    pub fn new(url: &str) -> Result<Etcd, String> {
        let addr = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("--etcd {url}: expected http://HOST:PORT"))?
            .trim_end_matches('/')
            .to_string();
        Ok(Etcd {
            addr,
            sender: None,
            seen: HashMap::new(),
        })
    }

    /// Runs one op on `key` within `timeout`; the second value counts CAS conflicts retried.
    pub async fn execute(&mut self, key: &str, kind: Kind, timeout: Duration) -> (Outcome, u32) {
        let deadline = Instant::now() + timeout;
        let delta = match kind {
            Kind::Incr => 1,
            Kind::Decr => -1,
            Kind::Get => {
                let body = json!({ "key": B64.encode(key) });
                return match self.post("/v3/kv/range", &body, deadline).await {
                    Ok(answer) => match kv_of(&answer) {
                        Ok(seen) => (Outcome::Ok(seen.map_or(0, |(v, _)| v)), 0),
                        Err(e) => (Outcome::Failed(ErrorKind::Unavailable, e), 0),
                    },
                    Err(f) => (failed(f), 0),
                };
            }
        };
        for attempt in 0..MAX_CAS {
            let (value, revision) = self.seen.get(key).copied().unwrap_or((0, 0));
            let Some(new) = value.checked_add(delta) else {
                return (
                    Outcome::Failed(ErrorKind::Invalid, "overflow".into()),
                    attempt,
                );
            };
            let k = B64.encode(key);
            let body = json!({
                "compare": [{ "target": "MOD", "key": k, "result": "EQUAL",
                              "mod_revision": revision.to_string() }],
                "success": [{ "request_put": { "key": k, "value": B64.encode(new.to_string()) } }],
                "failure": [{ "request_range": { "key": k } }],
            });
            let answer = match self.post("/v3/kv/txn", &body, deadline).await {
                Ok(answer) => answer,
                // A transaction that may have been applied: its outcome is unknown.
                Err(f) => return (failed(f), attempt),
            };
            if answer["succeeded"].as_bool().unwrap_or(false) {
                let at = int(&answer["header"]["revision"]).unwrap_or(0);
                self.seen.insert(key.to_string(), (new, at));
                return (Outcome::Ok(new), attempt);
            }
            // Someone else changed it (or our view was stale): take what etcd holds, again.
            let range = &answer["responses"][0]["response_range"];
            match kv_of(range) {
                Ok(Some(seen)) => self.seen.insert(key.to_string(), seen),
                Ok(None) => self.seen.remove(key),
                Err(e) => return (Outcome::Unknown(e), attempt),
            };
        }
        (
            Outcome::Failed(
                ErrorKind::Unavailable,
                format!("{MAX_CAS} compare-and-swap attempts lost"),
            ),
            MAX_CAS,
        )
    }

    /// POSTs `body` as JSON and parses the JSON answer.
    async fn post(
        &mut self,
        path: &str,
        body: &Value,
        deadline: Instant,
    ) -> Result<Value, Failure> {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, self.post_now(path, body)).await {
            Ok(result) => result,
            Err(_) => {
                self.sender = None;
                Err(Failure {
                    sent: true,
                    message: format!("no answer from etcd {} in time", self.addr),
                })
            }
        }
    }

    async fn post_now(&mut self, path: &str, body: &Value) -> Result<Value, Failure> {
        let not_sent = |message: String| Failure {
            sent: false,
            message,
        };
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            let stream = tokio::net::TcpStream::connect(&self.addr)
                .await
                .map_err(|e| not_sent(format!("connect to etcd {}: {e}", self.addr)))?;
            let _ = stream.set_nodelay(true);
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| not_sent(format!("etcd {}: {e}", self.addr)))?;
            tokio::spawn(conn);
            self.sender = Some(sender);
        }
        let sender = self.sender.as_mut().expect("connected above");
        sender
            .ready()
            .await
            .map_err(|e| not_sent(format!("etcd {}: {e}", self.addr)))?;
        let request = hyper::Request::post(path)
            .header(hyper::header::HOST, &self.addr)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("a valid request");
        let lost = |message: String| Failure {
            sent: true,
            message,
        };
        let response = sender.send_request(request).await.map_err(|e| {
            self.sender = None;
            lost(format!("etcd {}: {e}", self.addr))
        })?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| lost(format!("etcd {}: {e}", self.addr)))?
            .to_bytes();
        if !status.is_success() {
            return Err(lost(format!(
                "etcd {} answered {status}: {}",
                self.addr,
                String::from_utf8_lossy(&bytes)
            )));
        }
        serde_json::from_slice(&bytes).map_err(|e| lost(format!("etcd {}: {e}", self.addr)))
    }
}

fn failed(f: Failure) -> Outcome {
    match f.sent {
        true => Outcome::Unknown(f.message),
        false => Outcome::Failed(ErrorKind::Unavailable, f.message),
    }
}

/// A 64-bit integer of etcd's JSON (a string, or absent for 0).
fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Null => Some(0),
        Value::String(s) => s.parse().ok(),
        other => other.as_i64(),
    }
}

/// The value and `mod_revision` of the first key of a range answer (`None`: no such key).
fn kv_of(range: &Value) -> Result<Option<(i64, i64)>, String> {
    let Some(kv) = range["kvs"].as_array().and_then(|kvs| kvs.first()) else {
        return Ok(None);
    };
    let value = kv["value"].as_str().unwrap_or("");
    let value = B64
        .decode(value)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("etcd holds a value that is not a counter: {kv}"))?;
    let revision = int(&kv["mod_revision"]).ok_or_else(|| format!("no mod_revision in {kv}"))?;
    Ok(Some((value, revision)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_answers_are_read_as_etcd_writes_them() {
        let answer = json!({ "kvs": [{ "key": "aw==", "value": B64.encode("-42"),
                                       "mod_revision": "17" }], "count": "1" });
        assert_eq!(kv_of(&answer), Ok(Some((-42, 17))));
        assert_eq!(kv_of(&json!({ "count": "0" })), Ok(None));
        assert!(kv_of(&json!({ "kvs": [{ "value": B64.encode("x") }] })).is_err());
        assert_eq!(int(&json!("9")), Some(9));
        assert_eq!(int(&Value::Null), Some(0));
        assert!(Etcd::new("127.0.0.1:2379").is_err());
        assert_eq!(
            Etcd::new("http://127.0.0.1:2379/").unwrap().addr,
            "127.0.0.1:2379"
        );
    }
}
