//! `counter-client` against a real cluster: every method, typed errors, sessions, and direct
//! mode (commands straight to a replica of their key) failing over to another replica when a
//! node is down, and working with the router gone once the placement is known.

mod common;

use common::LocalCluster;
use counter_client::{Client, ErrorKind};
use std::time::Duration;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn every_method_and_typed_errors_through_the_router() {
    let c = LocalCluster::start(3, 3, 8);
    runtime().block_on(async {
        let client = Client::connect(c.router_addr.clone()).await.unwrap();
        assert_eq!(client.get("lib").await.unwrap(), 0);
        assert_eq!(client.incr("lib", 5).await.unwrap(), 5);
        assert_eq!(client.decr("lib", 2).await.unwrap(), 3);
        assert_eq!(client.set("lib", 10).await.unwrap(), 10);
        assert_eq!(client.cas("lib", 10, 11).await.unwrap(), (11, true));
        assert_eq!(client.cas("lib", 10, 12).await.unwrap(), (11, false));
        let sold_out = client.decr_bounded("lib", 20, Some(0), None).await;
        assert_eq!(sold_out.unwrap_err().kind, ErrorKind::Rejected);
        let overflow = client.incr_bounded("lib", u64::MAX, None, None).await;
        assert_eq!(overflow.unwrap_err().kind, ErrorKind::Invalid);
        assert_eq!(
            client.incr("", 1).await.unwrap_err().kind,
            ErrorKind::Invalid
        );
        assert_eq!(client.reset("lib").await.unwrap(), 0);
        // Many tasks share one client: each command in flight has a session of its own.
        let client = std::sync::Arc::new(client);
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let client = client.clone();
                tokio::spawn(async move {
                    for _ in 0..10 {
                        client.incr("shared", 1).await.unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(client.get("shared").await.unwrap(), 160);
    });
    assert_eq!(c.get("shared"), 160);
}

#[test]
fn direct_mode_fails_over_between_replicas_and_outlives_the_router() {
    let mut c = LocalCluster::start(3, 3, 8);
    runtime().block_on(async {
        let client = Client::builder([c.router_addr.clone()])
            .direct(true)
            .timeout(Duration::from_secs(5))
            .build();
        for i in 0..20 {
            assert_eq!(client.incr(&format!("d{i}"), 2).await.unwrap(), 2);
        }
        // A node down: every key still has a reachable replica to coordinate it.
        c.kill_node(0);
        for i in 0..20 {
            assert_eq!(client.incr(&format!("d{i}"), 1).await.unwrap(), 3, "d{i}");
        }
        // The router gone: the placement is known, the nodes are reachable.
        c.kill_router();
        for i in 0..20 {
            assert_eq!(client.get(&format!("d{i}")).await.unwrap(), 3, "d{i}");
        }
        // A client through the router alone now sees it unavailable (nothing was sent).
        let routed = Client::builder([c.router_addr.clone()])
            .timeout(Duration::from_secs(2))
            .build();
        let err = routed.incr("d0", 1).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::Unavailable, "{err}");
        assert_eq!(client.get("d0").await.unwrap(), 3, "nothing applied");
    });
}
