//! The wire format pinned: round trips, variant indexes, the golden bytes of every message, and
//! bytes that must be refused without a panic.

use super::*;
use crate::{Change, ClientEntry, Config, MemberStatus, Op, Outcome, RequestId, ShardMove};

fn sample() -> Frame {
    Frame {
        id: 42,
        msg: Msg::Acceptor(AcceptorMsg::Accept {
            shard: 7,
            key: "page_views".into(),
            ballot: Ballot {
                round: 3,
                node: 2,
                epoch: 1,
            },
            register: Register {
                value: -5,
                version: 9,
                clients: vec![ClientEntry {
                    client: 7,
                    seq: 11,
                    outcome: Outcome::BelowMin {
                        value: 1,
                        would: -1,
                        min: 0,
                    },
                    expires_ms: 1_700_000_000_000,
                    sessionless: false,
                }],
                horizon: 3,
                floor: 1_600_000_000_000,
            },
            next: Some(Ballot {
                round: 4,
                node: 2,
                epoch: 1,
            }),
            config: 3,
        }),
    }
}

#[test]
fn round_trip() {
    let mut buf = Vec::new();
    encode_frame(&sample(), &mut buf).unwrap();
    assert_eq!(decode_frame(&buf).unwrap(), sample());
}

#[test]
fn identity_messages_are_appended_and_round_trip() {
    for msg in [
        Msg::Identify,
        Msg::Identity {
            cluster_id: u64::MAX - 3,
            node: 2,
            config_version: 1,
            state: DataState::Created,
        },
    ] {
        let frame = Frame { id: 9, msg };
        let mut buf = Vec::new();
        encode_frame(&frame, &mut buf).unwrap();
        assert_eq!(decode_frame(&buf).unwrap(), frame);
    }
    // Variant indexes are the encoding (postcard: version, frame id, then the variant index
    // as a varint), pinned here: moving one is a new PROTOCOL_VERSION.
    let index = |msg: Msg| {
        let mut buf = Vec::new();
        encode_frame(&Frame { id: 1, msg }, &mut buf).unwrap();
        buf[2]
    };
    assert_eq!(
        index(Msg::Acceptor(AcceptorMsg::Read {
            shard: 0,
            key: "k".into(),
            config: 1,
        })),
        4
    );
    assert_eq!(index(Msg::ReadReply { accepted: None }), 8);
    assert_eq!(index(Msg::Identify), 11);
    // The status messages come after every older variant.
    assert_eq!(index(Msg::GetPlacement), 13);
    assert_eq!(index(Msg::Status), 15);
    assert_eq!(index(Msg::NodeStatusReply(sample_node_status())), 18);
}

/// One message of every variant, with its exact bytes: reordering a variant or a field,
/// or changing a type, must not silently change the wire. A deliberate change updates
/// these bytes and bumps [`PROTOCOL_VERSION`].
fn golden() -> Vec<(Msg, &'static str)> {
    let b = Ballot {
        round: 300,
        node: 2,
        epoch: 1,
    };
    let register = Register {
        value: -5,
        version: 9,
        clients: vec![ClientEntry {
            client: 7,
            seq: 11,
            outcome: Outcome::Cas {
                value: 1,
                swapped: true,
            },
            expires_ms: 1_000,
            sessionless: false,
        }],
        horizon: 3,
        floor: 4,
    };
    vec![
        (
            Msg::Command {
                key: "k".into(),
                command: Command {
                    op: Op::Decr(2),
                    min: Some(-1),
                    max: None,
                    request: Some(RequestId {
                        client: 5,
                        seq: 6,
                        expires_ms: 200,
                    }),
                },
                timeout_ms: 1_000,
            },
            "070100016b0102010100010506c801e807",
        ),
        (Msg::Value(-2), "07010103"),
        (
            Msg::Swapped {
                value: 3,
                swapped: true,
            },
            "0701020601",
        ),
        (Msg::Error(ClientError::expired("x")), "070103040178"),
        (
            Msg::Acceptor(AcceptorMsg::Prepare {
                shard: 7,
                key: "k".into(),
                ballot: b,
                config: 2,
            }),
            "0701040007016bac02020102",
        ),
        (
            Msg::Promise {
                ballot: b,
                accepted: Some((b, register.clone())),
            },
            "070105ac02020101ac020201090901070b010201e807000304",
        ),
        (
            Msg::Acceptor(AcceptorMsg::Accept {
                shard: 1,
                key: "k".into(),
                ballot: b,
                register: Register::new(1, 2),
                next: Some(b),
                config: 2,
            }),
            "0701040101016bac020201020200000001ac02020102",
        ),
        (
            Msg::Accepted {
                ballot: b,
                next: None,
            },
            "070106ac02020100",
        ),
        (
            Msg::Reject {
                ballot: b,
                promised: b,
            },
            "070107ac020201ac020201",
        ),
        (
            Msg::Acceptor(AcceptorMsg::Read {
                shard: 1,
                key: "k".into(),
                config: 2,
            }),
            "0701040201016b02",
        ),
        (
            Msg::Acceptor(AcceptorMsg::PromiseFloor {
                shard: 1,
                ballot: b,
                config: 2,
            }),
            "0701040301ac02020102",
        ),
        (
            Msg::Acceptor(AcceptorMsg::ReadAtFloor {
                shard: 1,
                key: "k".into(),
                ballot: b,
                config: 2,
            }),
            "0701040401016bac02020102",
        ),
        (
            Msg::ReadReply {
                accepted: Some((b, -1)),
            },
            "07010801ac02020101",
        ),
        (Msg::OpenSession { lifetime_ms: 1 }, "07010901"),
        (
            Msg::Session {
                expires_ms: 2,
                renew_after_ms: 1,
            },
            "07010a0201",
        ),
        (Msg::Identify, "07010b"),
        (
            Msg::Identity {
                cluster_id: 1,
                node: 2,
                config_version: 3,
                state: DataState::Created,
            },
            "07010c01020301",
        ),
        (Msg::GetPlacement, "07010d"),
        (
            Msg::Placement {
                config: 2,
                nodes: vec![(1, "a:1".into())],
                shards: vec![vec![1]],
            },
            "07010e02010103613a31010101",
        ),
        (Msg::Status, "07010f"),
        (
            Msg::ClusterStatus(sample_cluster_status()),
            "0701100176010305020101020203683a31000203683a3101010201030405030601760201030001010201010303683a320101780401040101010101020500010177",
        ),
        (Msg::NodeStatus, "070111"),
        (
            Msg::NodeStatusReply(sample_node_status()),
            "0701120203683a310101020103040503060176020103000101020101",
        ),
        (Msg::StaleConfig(Box::new(sample_config())), "070113030903020103683a310403683a3402020104000101010401000403683a340102010203"),
        (Msg::NeedConfig { have: 2 }, "07011402"),
        (Msg::GetConfig, "070115"),
        (Msg::ConfigIs(Box::new(sample_config())), "070116030903020103683a310403683a3402020104000101010401000403683a340102010203"),
        (Msg::InstallConfig(Box::new(sample_config())), "070117030903020103683a310403683a3402020104000101010401000403683a340102010203"),
        (Msg::ConfigInstalled { version: 3 }, "07011803"),
        (Msg::ConfigPrepare { ballot: b }, "070119ac020201"),
        (
            Msg::ConfigPromise {
                ballot: b,
                accepted: Some((b, Box::new(sample_config()))),
            },
            "07011aac02020101ac020201030903020103683a310403683a3402020104000101010401000403683a340102010203",
        ),
        (
            Msg::ConfigAccept {
                ballot: b,
                config: Box::new(sample_config()),
            },
            "07011bac020201030903020103683a310403683a3402020104000101010401000403683a340102010203",
        ),
        (
            Msg::ListKeys {
                shard: 1,
                after: Some("k".into()),
                limit: 2,
                config: 3,
            },
            "07011c0101016b0203",
        ),
        (
            Msg::Keys {
                keys: vec!["k".into()],
                done: true,
            },
            "07011d01016b01",
        ),
        (Msg::Admin(Change::RemoveNode { id: 2 }), "07011e0102"),
        (
            Msg::Admin(Change::ReplaceNode {
                old: 1,
                new: 4,
                addr: "h:4".into(),
            }),
            "07011e02010403683a34",
        ),
        (Msg::AdminDone("ok".into()), "07011f026f6b"),
        (
            Msg::Batch(vec![
                BatchItem {
                    id: 2,
                    msg: AcceptorMsg::Read {
                        shard: 1,
                        key: "k".into(),
                        config: 3,
                    },
                },
                BatchItem {
                    id: 3,
                    msg: AcceptorMsg::Prepare {
                        shard: 1,
                        key: "k".into(),
                        ballot: b,
                        config: 3,
                    },
                },
            ]),
            "07012002020201016b03030001016bac02020103",
        ),
    ]
}

fn sample_config() -> Config {
    Config {
        version: 3,
        cluster_id: 9,
        replication: 3,
        members: [(1, "h:1".to_string()), (4, "h:4".to_string())].into(),
        shards: vec![
            crate::ShardSet::stable(vec![1, 4]),
            crate::ShardSet {
                old: vec![1],
                new: vec![4],
            },
        ],
        pending: Some(Change::AddNode {
            id: 4,
            addr: "h:4".into(),
        }),
        removed: vec![2],
        dedup: crate::Dedup {
            max_clients: 1,
            idle_ms: 2,
            skew_ms: 3,
        },
    }
}

fn sample_node_status() -> NodeStatus {
    NodeStatus {
        node: 2,
        listen: "h:1".into(),
        cluster_id: 1,
        config_version: 1,
        state: DataState::Serving,
        epoch: Some(3),
        shards: 4,
        shards_total: 5,
        replication: 3,
        uptime_secs: 6,
        version: "v".into(),
        peers_up: vec![1, 3],
        shards_without_quorum: 0,
        rescan: vec![crate::RescanReport {
            shard: 1,
            keys_copied: 2,
            done: true,
        }],
        ready: true,
    }
}

fn sample_cluster_status() -> ClusterStatus {
    ClusterStatus {
        router_version: "v".into(),
        config_version: 1,
        replication: 3,
        shards: 5,
        nodes: 2,
        nodes_reachable: 1,
        nodes_ready: 1,
        members: vec![
            MemberStatus {
                node: 2,
                addr: "h:1".into(),
                status: Ok(sample_node_status()),
            },
            MemberStatus {
                node: 3,
                addr: "h:2".into(),
                status: Err("x".into()),
            },
        ],
        shards_available: 4,
        unavailable_shards: vec![4],
        moves: vec![ShardMove {
            shard: 1,
            from: vec![1],
            to: vec![2],
            keys_copied: 5,
            copied: false,
        }],
        warnings: vec!["w".into()],
    }
}

#[test]
fn golden_bytes_of_every_message() {
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let mut wrong = Vec::new();
    for (msg, expected) in golden() {
        let frame = Frame { id: 1, msg };
        let mut buf = Vec::new();
        encode_frame(&frame, &mut buf).unwrap();
        if hex(&buf) != expected {
            wrong.push(format!("{:?}: {}", frame.msg, hex(&buf)));
        }
        assert_eq!(decode_frame(&buf).unwrap(), frame);
    }
    assert!(wrong.is_empty(), "encodings changed:\n{}", wrong.join("\n"));
}

#[test]
fn unknown_version_is_recognised_before_the_body() {
    let mut buf = postcard::to_stdvec(&(PROTOCOL_VERSION + 1)).unwrap();
    buf.extend_from_slice(&[0xff, 0xff, 0xff]);
    assert_eq!(
        decode_frame(&buf),
        Err(DecodeError::UnknownVersion(PROTOCOL_VERSION + 1))
    );
}

#[test]
fn garbage_and_truncations_are_errors_not_panics() {
    let mut buf = Vec::new();
    encode_frame(&sample(), &mut buf).unwrap();
    for cut in 0..buf.len() {
        assert!(decode_frame(&buf[..cut]).is_err(), "prefix of {cut} bytes");
    }
    let mut trailing = buf.clone();
    trailing.push(0);
    assert!(matches!(
        decode_frame(&trailing),
        Err(DecodeError::Malformed(_))
    ));
    assert!(decode_frame(&[0xff; 64]).is_err());
    assert!(matches!(
        decode_frame(&vec![0; MAX_FRAME_LEN + 1]),
        Err(DecodeError::TooLarge(_))
    ));
}

/// A batch holds only acceptor messages, so no bytes make the decoder recurse: a batch inside
/// a batch (however deep, up to a frame's length) is a malformed frame.
#[test]
fn a_batch_inside_a_batch_is_malformed() {
    let mut buf = postcard::to_stdvec(&PROTOCOL_VERSION).unwrap();
    let mut empty = Vec::new();
    encode_frame(
        &Frame {
            id: 0,
            msg: Msg::Batch(vec![]),
        },
        &mut empty,
    )
    .unwrap();
    let batch = empty[2];
    // Frame { id: 0, Batch([ { id: 1, <batch's index> [ ... ] } ]) }, nested 20,000 deep.
    buf.extend_from_slice(&[0x00]);
    for _ in 0..20_000 {
        buf.extend_from_slice(&[batch, 0x01, 0x01]);
    }
    assert!(buf.len() <= MAX_FRAME_LEN);
    assert!(matches!(decode_frame(&buf), Err(DecodeError::Malformed(_))));
}
