//! The warm pool on the linux runtime: creates that ask for the defaults claim sandboxes
//! started ahead of demand, each gets its caller's workspace and nothing of anyone else's, the
//! pool refills, and a stopped server leaves no pooled sandbox behind.

use std::time::{Duration, Instant};

use cloudterm_test_support::{sandbox_leftovers, TestServer};
use serde_json::json;

use crate::sandboxes::Api;

/// Waits until at least `n` sandboxes wait in the pool; returns their ids.
async fn pooled(server: &TestServer, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = server.state().sandboxes.pool_ready();
        if ready.len() >= n {
            return ready;
        }
        assert!(Instant::now() < deadline, "the pool did not fill to {n}: {ready:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn id_of(sandbox: &serde_json::Value) -> String {
    sandbox["id"].as_str().expect("id").to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn default_creates_claim_pooled_sandboxes_with_their_own_workspace() {
    let Some(server) = TestServer::start_runtime("linux", |c| c.sandboxes.warm_pool = 2).await else { return };
    let alice = Api::new(&server, "alice");
    let bob = Api::new(&server, "bob");

    let waiting = pooled(&server, 2).await;
    let a = id_of(&alice.create(json!({})).await);
    assert_eq!(a, waiting[0], "a default create must claim the oldest pooled sandbox");
    let out = alice.sh(&a, "hostname; pwd; echo secret > alice.txt; ls /workspace").await;
    assert_eq!(out["exit_code"], 0, "{out}");
    assert_eq!(out["stdout"], format!("{a}\n/workspace\nalice.txt\n"));

    // Alice's files are in her workspace: a sandbox started the ordinary way (an env var
    // keeps it out of the pool) sees them.
    let plain = id_of(&alice.create(json!({"env": {"FROM": "start"}})).await);
    assert!(!pooled(&server, 0).await.contains(&plain));
    let out = alice.sh(&plain, "cat /workspace/alice.txt; echo $FROM").await;
    assert_eq!(out["stdout"], "secret\nstart\n", "{out}");

    // Bob's pooled sandbox has his (empty) workspace, none of Alice's files, and cannot
    // uncover what lies under its workspace mount.
    let waiting = pooled(&server, 1).await;
    let b = id_of(&bob.create(json!({})).await);
    assert!(waiting.contains(&b), "bob's default create should come from the pool");
    let out = bob.sh(&b, "ls -A /workspace; find / -xdev -name alice.txt 2>/dev/null; echo end").await;
    assert_eq!(out["stdout"], "end\n", "{out}");
    let out =
        bob.sh(&b, "umount /workspace; a=$?; umount -l /workspace; b=$?; mount -t tmpfs x /mnt; echo $a $b $?").await;
    let codes = out["stdout"].as_str().unwrap_or_default().split_whitespace().collect::<Vec<_>>();
    assert!(codes.len() == 3 && !codes.contains(&"0"), "mount calls must fail: {out}");

    // Limits other than the defaults are not served from the pool.
    let waiting = pooled(&server, 2).await;
    let small = alice.create(json!({"limits": {"memory_mb": 128}})).await;
    assert!(!waiting.contains(&id_of(&small)));
    assert_eq!(small["limits"]["memory_mb"], 128);
    assert_eq!(pooled(&server, 0).await, waiting, "the pool was not touched");

    // A deleted claimed sandbox goes like any other; a stopped server takes its pool along.
    let (status, _) = alice.call("DELETE", &format!("/sandboxes/{a}"), None).await;
    assert_eq!(status, 204);
    assert_eq!(sandbox_leftovers(&a), Vec::<String>::new());
    // Claimed sandboxes outlive a graceful stop on purpose; remove them so the test leaves
    // nothing running on the host.
    for (api, id) in [(&alice, &plain), (&bob, &b), (&alice, &id_of(&small))] {
        let (status, _) = api.call("DELETE", &format!("/sandboxes/{id}"), None).await;
        assert_eq!(status, 204);
    }
    let waiting = pooled(&server, 2).await;
    let _data_dir = server.stop().await;
    for id in waiting {
        assert_eq!(sandbox_leftovers(&id), Vec::<String>::new(), "pooled sandbox {id} outlived the server");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_removes_pooled_sandboxes_of_a_killed_server() {
    let Some(server) = TestServer::start_runtime("linux", |c| c.sandboxes.warm_pool = 2).await else { return };
    let waiting = pooled(&server, 2).await;
    // A crash: the pool is never closed, its sandboxes keep running on the host.
    let data_dir = server.crash();
    assert!(waiting.iter().all(|id| !sandbox_leftovers(id).is_empty()), "the pool should outlive a crash");
    let server = TestServer::restart_on(data_dir, |c| {
        c.runtime.kind = "linux".into();
        c.sandboxes.warm_pool = 0;
    })
    .await;
    for id in &waiting {
        assert_eq!(sandbox_leftovers(id), Vec::<String>::new(), "pooled sandbox {id} survived the restart");
    }
    drop(server);
}
