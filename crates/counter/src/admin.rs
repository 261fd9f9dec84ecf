//! `counter-cli`'s admin commands (docs/CLI.md, "Cluster status" and "Membership"):
//!
//! ```text
//! cluster status [--json]
//! cluster add-node ID ADDR
//! cluster remove-node ID
//! cluster replace-node OLD_ID NEW_ID NEW_ADDR
//! ```
//!
//! Only on the command line (pipe mode takes key commands only). `cluster` is not a key
//! command, so no key command changes meaning.

use counter_proto::{Change, ClientError, ClusterStatus, MemberStatus, NodeId, NodeStatus};
use serde_json::{json, Value};
use std::ffi::OsString;
use std::fmt::Write;

/// A parsed admin command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admin {
    /// `cluster status [--json]`.
    Status { json: bool },
    /// `cluster add-node`, `remove-node`, `replace-node`.
    Change(Change),
}

const USAGE: &str = "usage: cluster status [--json] | cluster add-node ID ADDR | cluster \
                     remove-node ID | cluster replace-node OLD_ID NEW_ID NEW_ADDR";

fn node_id(word: &str) -> Result<NodeId, ClientError> {
    match word.parse::<NodeId>() {
        Ok(id) if id > 0 => Ok(id),
        _ => Err(ClientError::invalid(format!(
            "invalid node id {word:?}: expected a positive integer ({USAGE})"
        ))),
    }
}

/// Parses an admin command from the command line's words: `None` if they are not one (the
/// first word is not `cluster`), else the command or why it is invalid.
pub fn parse(words: &[OsString]) -> Option<Result<Admin, ClientError>> {
    let (first, rest) = words.split_first()?;
    if first.to_str() != Some("cluster") {
        return None;
    }
    let rest: Vec<Option<&str>> = rest.iter().map(|w| w.to_str()).collect();
    Some(match rest.as_slice() {
        [Some("status")] => Ok(Admin::Status { json: false }),
        [Some("status"), Some("--json")] => Ok(Admin::Status { json: true }),
        [Some("add-node"), Some(id), Some(addr)] => node_id(id).map(|id| {
            Admin::Change(Change::AddNode {
                id,
                addr: addr.to_string(),
            })
        }),
        [Some("remove-node"), Some(id)] => {
            node_id(id).map(|id| Admin::Change(Change::RemoveNode { id }))
        }
        [Some("replace-node"), Some(old), Some(new), Some(addr)] => node_id(old).and_then(|old| {
            node_id(new).map(|new| {
                Admin::Change(Change::ReplaceNode {
                    old,
                    new,
                    addr: addr.to_string(),
                })
            })
        }),
        [Some(sub @ ("add-node" | "remove-node" | "replace-node")), ..] => Err(
            ClientError::invalid(format!("wrong arguments for cluster {sub} ({USAGE})")),
        ),
        _ => Err(ClientError::invalid(USAGE)),
    })
}

/// The exit status of `cluster status`: 0 if every shard can be served, else 3 (unavailable).
pub fn exit_status(status: &ClusterStatus) -> u8 {
    if status.all_available() {
        0
    } else {
        3
    }
}

/// "12s", "5m03s", "2h05m", "3d04h".
fn uptime(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s if s < 86_400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        s => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn ids(list: &[u32]) -> String {
    if list.is_empty() {
        return "none".into();
    }
    list.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Sorted shard ids as ranges: "0-3, 7, 9-12".
fn ranges(list: &[u32]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < list.len() {
        let mut j = i;
        while j + 1 < list.len() && list[j + 1] == list[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            list[i].to_string()
        } else {
            format!("{}-{}", list[i], list[j])
        });
        i = j + 1;
    }
    out.join(", ")
}

/// The summary line: nodes reachable and ready, shards available, configuration, moves.
pub fn summary(status: &ClusterStatus) -> String {
    format!(
        "{}/{} nodes reachable, {}/{} ready, {}/{} shards available, configuration version {}, \
         replication {}, {}",
        status.nodes_reachable,
        status.nodes,
        status.nodes_ready,
        status.nodes,
        status.shards_available,
        status.shards,
        status.config_version,
        status.replication,
        match status.moves.len() {
            0 => "no moves in progress".to_string(),
            1 => "1 shard moving".to_string(),
            n => format!("{n} shards moving"),
        }
    )
}

/// The human-readable answer: one row per member, notes on what is wrong, the summary line.
pub fn table(status: &ClusterStatus) -> String {
    let header = [
        "NODE",
        "ADDR",
        "REACHABLE",
        "STATE",
        "READY",
        "EPOCH",
        "SHARDS",
        "CONFIG",
        "VERSION",
        "UPTIME",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    let mut notes = Vec::new();
    for m in &status.members {
        let MemberStatus { node, addr, .. } = m;
        let row = match &m.status {
            Ok(s) => {
                if !s.ready {
                    notes.push(not_ready(s));
                }
                vec![
                    node.to_string(),
                    addr.clone(),
                    "yes".into(),
                    s.state.to_string(),
                    yes(s.ready).into(),
                    s.epoch.map_or("-".into(), |e| e.to_string()),
                    s.shards.to_string(),
                    s.config_version.to_string(),
                    s.version.clone(),
                    uptime(s.uptime_secs),
                ]
            }
            Err(e) => {
                notes.push(format!("node {node} ({addr}) is not reachable: {e}"));
                let mut row = vec![node.to_string(), addr.clone(), "no".into()];
                row.resize(header.len(), "-".into());
                row
            }
        };
        rows.push(row);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            let _ = write!(line, "{cell:<w$}  ", w = widths[c]);
        }
        out += line.trim_end();
        out.push('\n');
    }
    let listed = status.members.len() as u32;
    if listed < status.nodes {
        notes.push(format!(
            "{} of {} members are not listed (see the warnings)",
            status.nodes - listed,
            status.nodes
        ));
    }
    for note in notes {
        let _ = writeln!(out, "{note}");
    }
    for m in &status.moves {
        let _ = writeln!(
            out,
            "shard {} moving {:?} -> {:?}: {} keys copied{}",
            m.shard,
            m.from,
            m.to,
            m.keys_copied,
            if m.copied { ", all" } else { "" }
        );
    }
    for w in &status.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    out += &summary(status);
    out.push('\n');
    let unavailable = status.shards - status.shards_available;
    if unavailable > 0 {
        let more = unavailable as usize - status.unavailable_shards.len();
        let _ = write!(
            out,
            "unavailable shards (no majority of replicas up): {}",
            ranges(&status.unavailable_shards)
        );
        if more > 0 {
            let _ = write!(out, " and {more} more");
        }
        out.push('\n');
    }
    out
}

/// Why a reachable node is not ready, in one line.
fn not_ready(s: &NodeStatus) -> String {
    let node = s.node;
    if s.state != counter_proto::DataState::Serving {
        return format!(
            "node {node} is not ready: it does not serve yet (data dir {}: a new cluster \
             waits for every member)",
            s.state
        );
    }
    format!(
        "node {node} is not ready: it reaches no majority of replicas for {} of its {} shards \
         (peers up: {})",
        s.shards_without_quorum,
        s.shards,
        ids(&s.peers_up)
    )
}

/// The answer as one JSON object (docs/CLI.md lists the fields). Cluster ids are 16 hex
/// digits, as in the logs (a JSON number would lose bits in many parsers).
pub fn json(router: &str, status: &ClusterStatus) -> Value {
    let nodes: Vec<Value> = status
        .members
        .iter()
        .map(|m| match &m.status {
            Ok(s) => json!({
                "id": m.node,
                "addr": m.addr,
                "reachable": true,
                "error": null,
                "listen": s.listen,
                "cluster_id": format!("{:016x}", s.cluster_id),
                "state": s.state.as_str(),
                "ready": s.ready,
                "epoch": s.epoch,
                "shards": s.shards,
                "shards_without_quorum": s.shards_without_quorum,
                "config_version": s.config_version,
                "version": s.version,
                "uptime_secs": s.uptime_secs,
                "peers_up": s.peers_up,
            }),
            Err(e) => json!({
                "id": m.node,
                "addr": m.addr,
                "reachable": false,
                "error": e,
                "listen": null,
                "cluster_id": null,
                "state": null,
                "ready": false,
                "epoch": null,
                "shards": null,
                "shards_without_quorum": null,
                "config_version": null,
                "version": null,
                "uptime_secs": null,
                "peers_up": null,
            }),
        })
        .collect();
    let moves: Vec<Value> = status
        .moves
        .iter()
        .map(|m| {
            json!({"shard": m.shard, "from": m.from, "to": m.to,
                   "keys_copied": m.keys_copied, "copied": m.copied})
        })
        .collect();
    json!({
        "router": router,
        "router_version": status.router_version,
        "config_version": status.config_version,
        "replication": status.replication,
        "shards": status.shards,
        "nodes_total": status.nodes,
        "nodes_reachable": status.nodes_reachable,
        "nodes_ready": status.nodes_ready,
        "shards_available": status.shards_available,
        "shards_unavailable": status.shards - status.shards_available,
        "unavailable_shards": status.unavailable_shards,
        "all_shards_available": status.all_available(),
        "moves": moves,
        "membership_changes_supported": true,
        "warnings": status.warnings,
        "nodes": nodes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use counter_proto::DataState;

    fn words(s: &str) -> Vec<OsString> {
        s.split(' ').map(OsString::from).collect()
    }

    #[test]
    fn parses_cluster_status_and_leaves_key_commands_alone() {
        assert_eq!(
            parse(&words("cluster status")),
            Some(Ok(Admin::Status { json: false }))
        );
        assert_eq!(
            parse(&words("cluster status --json")),
            Some(Ok(Admin::Status { json: true }))
        );
        for bad in [
            "cluster",
            "cluster stat",
            "cluster status --yaml",
            "cluster status --json x",
            "cluster add-node 4",
            "cluster add-node x 127.0.0.1:1",
            "cluster add-node 0 127.0.0.1:1",
            "cluster remove-node",
            "cluster replace-node 1 2",
        ] {
            let err = parse(&words(bad)).unwrap().unwrap_err();
            assert_eq!(err.kind, counter_proto::ErrorKind::Invalid, "{bad}");
        }
        assert_eq!(
            parse(&words("cluster add-node 4 127.0.0.1:7104")),
            Some(Ok(Admin::Change(Change::AddNode {
                id: 4,
                addr: "127.0.0.1:7104".into()
            })))
        );
        assert_eq!(
            parse(&words("cluster remove-node 2")),
            Some(Ok(Admin::Change(Change::RemoveNode { id: 2 })))
        );
        assert_eq!(
            parse(&words("cluster replace-node 2 5 h:5")),
            Some(Ok(Admin::Change(Change::ReplaceNode {
                old: 2,
                new: 5,
                addr: "h:5".into()
            })))
        );
        for key_command in ["incr cluster", "get status", "status", "clusters status"] {
            assert_eq!(parse(&words(key_command)), None, "{key_command}");
        }
    }

    fn node(id: u32, ready: bool, uptime_secs: u64) -> NodeStatus {
        NodeStatus {
            node: id,
            listen: format!("127.0.0.1:710{id}"),
            cluster_id: 0x00ab_cdef_0123_4567,
            config_version: 1,
            state: DataState::Serving,
            epoch: Some(2),
            shards: 8,
            shards_total: 8,
            replication: 3,
            uptime_secs,
            version: "0.1.0".into(),
            peers_up: if ready { vec![1, 2] } else { vec![] },
            shards_without_quorum: if ready { 0 } else { 8 },
            rescan: Vec::new(),
            ready,
        }
    }

    fn sample(available: u32) -> ClusterStatus {
        ClusterStatus {
            router_version: "0.1.0".into(),
            config_version: 1,
            replication: 3,
            shards: 8,
            nodes: 3,
            nodes_reachable: 2,
            nodes_ready: 1,
            members: vec![
                MemberStatus {
                    node: 1,
                    addr: "127.0.0.1:7101".into(),
                    status: Ok(node(1, true, 59)),
                },
                MemberStatus {
                    node: 2,
                    addr: "127.0.0.1:7102".into(),
                    status: Ok(node(2, false, 3_725)),
                },
                MemberStatus {
                    node: 3,
                    addr: "127.0.0.1:7103".into(),
                    status: Err("not sent: connect to 127.0.0.1:7103: refused".into()),
                },
            ],
            shards_available: available,
            unavailable_shards: (available..8).collect(),
            moves: vec![],
            warnings: vec![],
        }
    }

    #[test]
    fn the_table_has_a_row_per_node_notes_and_a_summary() {
        let text = table(&sample(5));
        let expected = "\
NODE  ADDR            REACHABLE  STATE    READY  EPOCH  SHARDS  CONFIG  VERSION  UPTIME
1     127.0.0.1:7101  yes        serving  yes    2      8       1       0.1.0    59s
2     127.0.0.1:7102  yes        serving  no     2      8       1       0.1.0    1h02m
3     127.0.0.1:7103  no         -        -      -      -       -       -        -
node 2 is not ready: it reaches no majority of replicas for 8 of its 8 shards (peers up: none)
node 3 (127.0.0.1:7103) is not reachable: not sent: connect to 127.0.0.1:7103: refused
2/3 nodes reachable, 1/3 ready, 5/8 shards available, configuration version 1, replication 3, no moves in progress
unavailable shards (no majority of replicas up): 5-7
";
        assert_eq!(text, expected);
        assert_eq!(exit_status(&sample(5)), 3);
        let all = table(&sample(8));
        assert!(all.ends_with("8/8 shards available, configuration version 1, replication 3, no moves in progress\n"), "{all}");
        assert_eq!(exit_status(&sample(8)), 0);
        // Beyond the first 64 unavailable shards, only their number.
        let mut many = sample(0);
        many.shards = 100;
        many.unavailable_shards = (0..64).collect();
        let text = table(&many);
        assert!(text.contains("0/100 shards available"), "{text}");
        let tail = "): 0-63 and 36 more\n";
        assert!(text.ends_with(tail), "{text}");
    }

    #[test]
    fn shard_ids_read_as_ranges() {
        assert_eq!(ranges(&[]), "");
        assert_eq!(ranges(&[4]), "4");
        assert_eq!(ranges(&[0, 1, 2, 3, 7, 9, 10, 11, 12]), "0-3, 7, 9-12");
        assert_eq!(ranges(&[1, 3]), "1, 3");
    }

    #[test]
    fn the_json_has_every_field() {
        let v = json("127.0.0.1:7100", &sample(5));
        // Round trip through text, as a script reads it.
        let v: Value = serde_json::from_str(&v.to_string()).unwrap();
        assert_eq!(v["router"], "127.0.0.1:7100");
        assert_eq!(v["nodes_total"], 3);
        assert_eq!(v["nodes_reachable"], 2);
        assert_eq!(v["nodes_ready"], 1);
        assert_eq!(v["shards"], 8);
        assert_eq!(v["shards_available"], 5);
        assert_eq!(v["shards_unavailable"], 3);
        assert_eq!(v["unavailable_shards"], json!([5, 6, 7]));
        assert_eq!(v["all_shards_available"], false);
        assert_eq!(v["config_version"], 1);
        assert_eq!(v["moves"], json!([]));
        assert_eq!(v["membership_changes_supported"], true);
        let nodes = v["nodes"].as_array().unwrap();
        assert_eq!(nodes.len(), 3);
        assert_eq!(nodes[0]["cluster_id"], "00abcdef01234567");
        assert_eq!(nodes[0]["state"], "serving");
        assert_eq!(nodes[0]["epoch"], 2);
        assert_eq!(nodes[0]["peers_up"], json!([1, 2]));
        assert_eq!(nodes[1]["ready"], false);
        assert_eq!(nodes[1]["shards_without_quorum"], 8);
        assert_eq!(nodes[2]["reachable"], false);
        assert!(nodes[2]["error"].as_str().unwrap().contains("refused"));
        assert_eq!(nodes[2]["state"], Value::Null);
        // Every row has the same keys, reachable or not.
        let keys = |n: &Value| {
            let mut k: Vec<String> = n.as_object().unwrap().keys().cloned().collect();
            k.sort();
            k
        };
        assert_eq!(keys(&nodes[0]), keys(&nodes[2]));
    }
}
