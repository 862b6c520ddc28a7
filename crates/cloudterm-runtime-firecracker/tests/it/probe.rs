//! The `auto` probe: Firecracker is picked only when a probe VM reaches its agent within the
//! bound. Here the only guest is the bare one, which has no agent, so `auto` must fall back and
//! say why.

use std::time::Duration;

use cloudterm_runtime::{select_with, RuntimeChoice, RuntimeKind};
use cloudterm_runtime_firecracker::probe::{preflight, probe, probe_blocking};
use cloudterm_runtime_firecracker::Readiness;

use crate::guest::BANNER;
use crate::support::{processes_mentioning, Harness};

#[tokio::test]
async fn a_guest_without_an_agent_fails_the_probe_and_leaves_nothing() {
    let Some(h) = Harness::new() else { return };
    let mut config = h.config(h.ticker.clone());
    config.readiness = Readiness::Agent;
    let err = probe(&config, Duration::from_millis(1500)).await.expect_err("no agent in the bare guest");
    assert!(err.contains("agent did not answer"), "{err}");
    assert!(err.contains(BANNER), "the console explains what booted: {err}");
    assert!(processes_mentioning(&h.dir.path().display().to_string()).is_empty());
    let leftovers: Vec<_> = std::fs::read_dir(h.root()).expect("root").collect();
    assert!(leftovers.is_empty(), "probe left {leftovers:?}");
}

#[tokio::test]
async fn a_guest_that_comes_up_passes_the_probe() {
    let Some(h) = Harness::new() else { return };
    let config = h.config(h.ticker.clone());
    let seen = probe(&config, Duration::from_secs(5)).await.expect("the banner counts as up");
    assert!(seen.contains("probe VM booted"), "{seen}");
}

#[test]
fn auto_falls_back_from_firecracker_here_and_says_why() {
    let Some(h) = Harness::new() else { return };
    let mut config = h.config(h.ticker.clone());
    config.readiness = Readiness::Agent;
    let firecracker = || probe_blocking(&config, Duration::from_millis(1500));
    let selection = select_with(RuntimeChoice::Auto, &firecracker).expect("auto always selects");
    assert_ne!(selection.kind, RuntimeKind::Firecracker);
    assert!(selection.reason.contains("passed over: runtime firecracker is unavailable"), "{}", selection.reason);
    assert!(selection.reason.contains("agent did not answer"), "{}", selection.reason);
    let err = select_with(RuntimeChoice::Exactly(RuntimeKind::Firecracker), &firecracker).expect_err("explicit fails");
    assert!(err.to_string().contains("agent did not answer"), "{err}");
}

#[test]
fn preflight_names_what_is_missing() {
    let Some(h) = Harness::new() else { return };
    let config = h.config(h.dir.path().join("no-vmlinux"));
    let err = preflight(&config).expect_err("no kernel");
    assert!(err.contains("no-vmlinux"), "{err}");
    let mut config = h.config(h.ticker.clone());
    config.binary = h.dir.path().join("no-firecracker");
    let err = preflight(&config).expect_err("no binary");
    assert!(err.contains("no-firecracker"), "{err}");
    assert!(preflight(&h.config(h.ticker.clone())).is_ok());
}
