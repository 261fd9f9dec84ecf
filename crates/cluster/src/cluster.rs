//! The cluster file.

use counter_core::Limits;
use counter_proto::NodeId;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// Shards of a cluster whose file does not say (fixed when the cluster is created).
pub const DEFAULT_SHARDS: u32 = 64;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read cluster file {0}: {1}")]
    Read(String, std::io::Error),
    #[error("cluster file {0}: {1}")]
    Parse(String, String),
    #[error("cluster file {0}: {1}")]
    Invalid(String, String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    replication: usize,
    shards: Option<u32>,
    /// Most clients whose last request each key remembers (exactly-once retries).
    dedup_clients: Option<usize>,
    /// Longest session life in seconds, and how long an entry of a request id without a
    /// session is kept (`counter-core`'s `change` module).
    dedup_idle_secs: Option<u64>,
    /// How far apart the servers' clocks may be (seconds) without refusing a live session.
    max_clock_skew_secs: Option<u64>,
    #[serde(rename = "node", default)]
    nodes: Vec<NodeEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeEntry {
    id: NodeId,
    addr: String,
}

/// A validated cluster description.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cluster {
    /// Replicas of every key (odd, at most the number of nodes).
    pub replication: usize,
    /// Number of shards the key space is split into.
    pub shards: u32,
    /// Node id → the address the others reach it at.
    pub nodes: BTreeMap<NodeId, String>,
    /// What each key's register keeps of its clients' requests (`counter-core`'s `change`).
    pub limits: Limits,
}

impl Cluster {
    pub fn load(path: &Path) -> Result<Cluster, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read(name.clone(), e))?;
        Cluster::parse(&name, &text)
    }

    pub fn parse(name: &str, text: &str) -> Result<Cluster, ConfigError> {
        let file: File =
            toml::from_str(text).map_err(|e| ConfigError::Parse(name.into(), e.to_string()))?;
        let invalid = |m: String| ConfigError::Invalid(name.into(), m);
        let mut nodes = BTreeMap::new();
        for n in file.nodes {
            if n.addr.trim().is_empty() {
                return Err(invalid(format!("node {} has an empty addr", n.id)));
            }
            if nodes.insert(n.id, n.addr).is_some() {
                return Err(invalid(format!("node id {} appears twice", n.id)));
            }
        }
        if nodes.is_empty() {
            return Err(invalid("no [[node]] entries".into()));
        }
        let r = file.replication;
        if r == 0 || r.is_multiple_of(2) || r > nodes.len() {
            return Err(invalid(format!(
                "replication = {r}: it must be odd and at most the number of nodes ({})",
                nodes.len()
            )));
        }
        let shards = file.shards.unwrap_or(DEFAULT_SHARDS);
        if shards == 0 || shards > 65_536 {
            return Err(invalid(format!("shards = {shards}: must be 1..=65536")));
        }
        let defaults = Limits::default();
        let limits = Limits {
            max_clients: file.dedup_clients.unwrap_or(defaults.max_clients),
            idle_ms: file
                .dedup_idle_secs
                .map_or(defaults.idle_ms, |s| s.saturating_mul(1000)),
            skew_ms: file
                .max_clock_skew_secs
                .map_or(defaults.skew_ms, |s| s.saturating_mul(1000)),
        };
        limits.validate().map_err(invalid)?;
        Ok(Cluster {
            replication: r,
            shards,
            nodes,
            limits,
        })
    }

    pub fn addr(&self, node: NodeId) -> Option<&str> {
        self.nodes.get(&node).map(String::as_str)
    }

    /// The cluster's first configuration (version 1), as this file describes it: placement
    /// proposed by the hash ring ([`Placement::new`]). `cluster_id` is the id computed from
    /// the file (`counter-storage`'s identity).
    ///
    /// [`Placement::new`]: crate::Placement::new
    pub fn bootstrap_config(&self, cluster_id: u64) -> counter_proto::Config {
        let placement = crate::Placement::new(self);
        counter_core::membership::bootstrap(
            cluster_id,
            self.replication as u32,
            self.nodes.clone(),
            (0..self.shards)
                .map(|s| placement.replicas(s).to_vec())
                .collect(),
            self.limits,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
replication = 3
[[node]]
id = 1
addr = "127.0.0.1:7101"
[[node]]
id = 2
addr = "127.0.0.1:7102"
[[node]]
id = 3
addr = "127.0.0.1:7103"
"#;

    #[test]
    fn parses_the_cli_md_example() {
        let c = Cluster::parse("c", GOOD).unwrap();
        assert_eq!(c.replication, 3);
        assert_eq!(c.shards, DEFAULT_SHARDS);
        assert_eq!(c.addr(2), Some("127.0.0.1:7102"));
        assert_eq!(c.limits, Limits::default());
        let tuned =
            format!("dedup_clients = 16\ndedup_idle_secs = 60\nmax_clock_skew_secs = 5\n{GOOD}");
        let limits = Cluster::parse("c", &tuned).unwrap().limits;
        assert_eq!(
            (limits.max_clients, limits.idle_ms, limits.skew_ms),
            (16, 60_000, 5_000)
        );
        // Sessions must outlast the margin they are renewed by: four times the skew.
        let short = format!("dedup_idle_secs = 60\n{GOOD}");
        let err = Cluster::parse("c", &short).unwrap_err().to_string();
        assert!(err.contains("at least 240 s"), "{err}");
    }

    #[test]
    fn rejects_bad_files_with_a_reason() {
        let even = GOOD.replace("replication = 3", "replication = 2");
        assert!(Cluster::parse("c", &even)
            .unwrap_err()
            .to_string()
            .contains("odd"));
        let too_many = GOOD.replace("replication = 3", "replication = 5");
        assert!(Cluster::parse("c", &too_many).is_err());
        let dup = GOOD.replace("id = 3", "id = 2");
        assert!(Cluster::parse("c", &dup)
            .unwrap_err()
            .to_string()
            .contains("twice"));
        assert!(Cluster::parse("c", "replication = 1").is_err());
        let no_clients = format!("dedup_clients = 0\n{GOOD}");
        assert!(Cluster::parse("c", &no_clients)
            .unwrap_err()
            .to_string()
            .contains("dedup_clients"));
        assert!(Cluster::parse("c", "garbage ===").is_err());
    }
}
