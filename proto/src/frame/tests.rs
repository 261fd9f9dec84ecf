//! The wire format pinned: round trips, variant indexes, the golden bytes of every message, and
//! bytes that must be refused without a panic.

use super::*;
use crate::{ClientEntry, MemberStatus, Op, Outcome, RequestId, ShardMove};

fn sample() -> Frame {
    Frame {
        id: 42,
        msg: Msg::Accept {
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
        },
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
    // Variant indexes are the encoding: the old ones must not move (postcard: version,
    // frame id, then the variant index as a varint).
    let index = |msg: Msg| {
        let mut buf = Vec::new();
        encode_frame(&Frame { id: 1, msg }, &mut buf).unwrap();
        buf[2]
    };
    assert_eq!(
        index(Msg::Read {
            shard: 0,
            key: "k".into()
        }),
        9
    );
    assert_eq!(index(Msg::ReadReply { accepted: None }), 10);
    assert_eq!(index(Msg::Identify), 13);
    // The status messages come after every older variant.
    assert_eq!(index(Msg::GetPlacement), 15);
    assert_eq!(index(Msg::Status), 17);
    assert_eq!(index(Msg::NodeStatusReply(sample_node_status())), 20);
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
            "030100016b0102010100010506c801e807",
        ),
        (Msg::Value(-2), "03010103"),
        (
            Msg::Swapped {
                value: 3,
                swapped: true,
            },
            "0301020601",
        ),
        (Msg::Error(ClientError::expired("x")), "030103040178"),
        (
            Msg::Prepare {
                shard: 7,
                key: "k".into(),
                ballot: b,
            },
            "03010407016bac020201",
        ),
        (
            Msg::Promise {
                ballot: b,
                accepted: Some((b, register.clone())),
            },
            "030105ac02020101ac020201090901070b010201e807000304",
        ),
        (
            Msg::Accept {
                shard: 1,
                key: "k".into(),
                ballot: b,
                register: Register::new(1, 2),
                next: Some(b),
            },
            "03010601016bac020201020200000001ac020201",
        ),
        (
            Msg::Accepted {
                ballot: b,
                next: None,
            },
            "030107ac02020100",
        ),
        (
            Msg::Reject {
                ballot: b,
                promised: b,
            },
            "030108ac020201ac020201",
        ),
        (
            Msg::Read {
                shard: 1,
                key: "k".into(),
            },
            "03010901016b",
        ),
        (
            Msg::ReadReply {
                accepted: Some((b, -1)),
            },
            "03010a01ac02020101",
        ),
        (Msg::OpenSession { lifetime_ms: 1 }, "03010b01"),
        (
            Msg::Session {
                expires_ms: 2,
                renew_after_ms: 1,
            },
            "03010c0201",
        ),
        (Msg::Identify, "03010d"),
        (
            Msg::Identity {
                cluster_id: 1,
                node: 2,
                config_version: 3,
                state: DataState::Created,
            },
            "03010e01020301",
        ),
        (Msg::GetPlacement, "03010f"),
        (
            Msg::Placement {
                shards: 8,
                replication: 3,
                nodes: vec![(1, "a:1".into())],
            },
            "0301100803010103613a31",
        ),
        (Msg::Status, "030111"),
        (
            Msg::ClusterStatus(sample_cluster_status()),
            "0301120176010305020101020203683a31000203683a31010102010304050306017602010300010303683a32010178040104010101010102010177",
        ),
        (Msg::NodeStatus, "030113"),
        (
            Msg::NodeStatusReply(sample_node_status()),
            "0301140203683a3101010201030405030601760201030001",
        ),
    ]
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
