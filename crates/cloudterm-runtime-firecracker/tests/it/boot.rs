//! Spawning Firecracker, configuring it over the API socket, booting the bare guest, the serial
//! console, the vsock socket, teardown, and the errors of a bad kernel or image.

use std::time::{Duration, Instant};

use cloudterm_runtime::{AgentClient, AgentEndpoint};
use cloudterm_runtime_firecracker::machine::boot;
use cloudterm_runtime_firecracker::vmm::is_ours;
use cloudterm_runtime_firecracker::{FirecrackerError, VmDir};

use crate::guest::{self, BANNER};
use crate::support::{console, eventually, machine, processes_mentioning, Harness};

fn vm_dir(h: &Harness, name: &str) -> VmDir {
    let dir = VmDir::new(h.dir.path().join(name));
    std::fs::create_dir_all(dir.path()).expect("vm dir");
    dir
}

#[tokio::test]
async fn the_bare_guest_boots_prints_on_its_console_and_is_gone_after_kill() {
    let Some(h) = Harness::new() else { return };
    let dir = vm_dir(&h, "vm");
    let started = Instant::now();
    let vmm = boot(&h.binary, &dir, "boot-test", &machine(h.ticker.clone())).await.expect("boot");
    let booted = started.elapsed();
    assert!(
        eventually(Duration::from_secs(5), || guest::ticks(&console(&dir.console_log())).len() >= 3).await,
        "no ticks on the console: {:?}",
        console(&dir.console_log())
    );
    eprintln!("spawn + configure + InstanceStart: {booted:?}; three ticks after {:?}", started.elapsed());
    let text = console(&dir.console_log());
    assert!(text.starts_with(BANNER), "{text:?}");
    let ticks = guest::ticks(&text);
    assert_eq!(ticks[..3], [0, 1, 2], "the guest counts from 0: {ticks:?}");
    assert!(dir.vsock_socket().exists(), "firecracker listens on the hybrid vsock socket");
    assert!(is_ours(vmm.pid(), &dir.api_socket()));

    vmm.kill().await;
    assert!(vmm.exit_status().is_some());
    assert!(!is_ours(vmm.pid(), &dir.api_socket()));
    assert!(processes_mentioning(&h.dir.path().display().to_string()).is_empty(), "a process outlived kill");
}

#[tokio::test]
async fn a_vsock_port_nobody_listens_on_is_unreachable_not_a_hang() {
    let Some(h) = Harness::new() else { return };
    let dir = vm_dir(&h, "vm");
    let vmm = boot(&h.binary, &dir, "vsock-test", &machine(h.ticker.clone())).await.expect("boot");
    // The bare guest has no vsock driver: Firecracker takes the connection and the CONNECT
    // line, and the client must give up within its bound with a clear error.
    let client = AgentClient::new(AgentEndpoint::Vsock { uds: dir.vsock_socket(), port: 1024 });
    let started = Instant::now();
    let err = client.info().await.expect_err("no agent in the bare guest");
    assert!(started.elapsed() < Duration::from_secs(8), "took {:?}", started.elapsed());
    assert!(err.to_string().contains("unreachable"), "{err}");
    vmm.kill().await;
}

#[tokio::test]
async fn a_kernel_that_is_no_elf_is_refused_before_firecracker_starts() {
    let Some(h) = Harness::new() else { return };
    let dir = vm_dir(&h, "vm");
    let bz = h.dir.path().join("bzImage");
    std::fs::write(&bz, b"MZ this is what a compressed kernel starts with").expect("write");
    let err = boot(&h.binary, &dir, "bad-kernel", &machine(bz)).await.expect_err("not an ELF");
    assert!(matches!(err, FirecrackerError::Invalid(_)), "{err}");
    assert!(err.to_string().contains("not an uncompressed 64-bit ELF"), "{err}");
    assert!(!dir.api_socket().exists(), "no VMM was started");
}

#[tokio::test]
async fn a_kernel_firecracker_cannot_load_is_refused_with_its_reason_and_the_vmm_is_killed() {
    let Some(h) = Harness::new() else { return };
    let dir = vm_dir(&h, "vm");
    let broken = h.dir.path().join("broken.elf");
    let mut bytes = b"\x7fELF\x02\x01\x01".to_vec();
    bytes.resize(4096, 0);
    std::fs::write(&broken, bytes).expect("write");
    let err = boot(&h.binary, &dir, "broken-kernel", &machine(broken)).await.expect_err("unloadable");
    assert!(matches!(err, FirecrackerError::Invalid(_)), "{err}");
    assert!(err.to_string().contains("could not start the VM"), "{err}");
    assert!(processes_mentioning(&h.dir.path().display().to_string()).is_empty(), "the refused VMM still runs");
}

#[tokio::test]
async fn a_missing_image_is_refused_before_firecracker_starts() {
    let Some(h) = Harness::new() else { return };
    let dir = vm_dir(&h, "vm");
    let mut spec = machine(h.ticker.clone());
    spec.rootfs = Some(h.dir.path().join("missing.ext4"));
    let err = boot(&h.binary, &dir, "bad-image", &spec).await.expect_err("no image");
    assert!(matches!(err, FirecrackerError::Invalid(_)) && err.to_string().contains("missing.ext4"), "{err}");
    assert!(!dir.api_socket().exists());
}
