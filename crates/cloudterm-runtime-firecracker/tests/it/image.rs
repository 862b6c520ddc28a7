//! `cloudterm image build`'s core: an ext4 root image from a directory plus the agent, checked
//! by reading the image back with debugfs (no mount, no Firecracker needed).

use std::process::Command;

use cloudterm_runtime_firecracker::image::{build_rootfs, default_output};

fn debugfs(image: &std::path::Path, request: &str) -> String {
    let out = Command::new("debugfs").arg("-R").arg(request).arg(image).output().expect("run debugfs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn the_root_image_holds_the_tree_the_agent_as_init_and_a_workspace_mount_point() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let image_dir = tmp.path().join("debian");
    std::fs::create_dir_all(image_dir.join("etc")).expect("mkdir");
    std::fs::write(image_dir.join("etc/hostname"), "sandbox\n").expect("write");
    let agent = tmp.path().join("cloudterm-agent");
    std::fs::write(&agent, b"\x7fELF pretend agent").expect("write");
    let output = default_output(&image_dir);
    assert_eq!(output, tmp.path().join("debian.ext4"));

    let size = build_rootfs(&image_dir, &agent, &output, None).await.expect("build");
    assert!(size >= 64, "{size} MiB");
    assert_eq!(debugfs(&output, "cat /etc/hostname"), "sandbox\n");
    assert_eq!(debugfs(&output, "cat /.cloudterm/agent").as_bytes(), b"\x7fELF pretend agent");
    let stat = debugfs(&output, "stat /.cloudterm/agent");
    assert!(stat.contains("Mode:  0755") && stat.contains("User:     0"), "{stat}");
    assert!(debugfs(&output, "stat /workspace").contains("Type: directory"));
    assert!(!image_dir.join(".cloudterm").exists(), "the image directory is not modified");
    assert!(!tmp.path().join("debian.debugfs").exists(), "the debugfs script is removed");
}

#[tokio::test]
async fn a_tree_larger_than_the_asked_size_and_a_missing_agent_are_clear_errors() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let image_dir = tmp.path().join("big");
    std::fs::create_dir_all(&image_dir).expect("mkdir");
    std::fs::write(image_dir.join("blob"), vec![7u8; 12 << 20]).expect("write");
    let agent = tmp.path().join("agent");
    std::fs::write(&agent, b"agent").expect("write");
    let output = tmp.path().join("big.ext4");
    let err = build_rootfs(&image_dir, &agent, &output, Some(8)).await.expect_err("12 MiB in 8");
    assert!(err.to_string().contains("mkfs.ext4 could not make"), "{err}");
    assert!(!output.exists(), "no half-made image is left");
    let err = build_rootfs(&image_dir, &tmp.path().join("nope"), &output, None).await.expect_err("no agent");
    assert!(err.to_string().contains("nope"), "{err}");
}

#[test]
fn dynamically_linked_agents_are_told_apart_from_static_ones() {
    use cloudterm_runtime_firecracker::image::is_dynamic;
    // Any dynamically linked program of the host will do; the bare guest is static.
    assert!(is_dynamic(std::path::Path::new("/bin/sh")).expect("read /bin/sh"));
    let tmp = tempfile::tempdir().expect("tempdir");
    let guest = crate::guest::build(tmp.path(), crate::guest::Guest::Reset);
    assert!(!is_dynamic(&guest).expect("read the guest"));
    std::fs::write(tmp.path().join("text"), "not an elf").expect("write");
    assert!(!is_dynamic(&tmp.path().join("text")).expect("read"));
}
