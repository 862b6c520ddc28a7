//! The sandbox's root file system, assembled on the host by the helper (as real root) before
//! the container is created: overlays of a read-only image with per-sandbox writable layers,
//! a generated `/etc`, and bind mounts of the workspace, the agent and any requested host
//! directories. With a user namespace every lower layer and bind mount is *idmapped*, so the
//! host's root-owned files appear owned by the sandbox's root and files the sandbox writes in
//! the workspace stay owned by host root.

use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{lchown, symlink, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context};
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use super::sys;
use crate::protocol::StartRequest;

/// The host directories that make up the default image, in the order they are assembled.
const HOST_DIRS: &[&str] = &["usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"];

/// The idmap applied to lower layers and bind mounts, and the uid/gid that owns generated files.
pub struct IdMap<'a> {
    /// A user namespace whose mapping is the sandbox's.
    pub userns: &'a OwnedFd,
    /// Host uid/gid of the sandbox's root.
    pub root: u32,
}

/// Host paths of one sandbox's runtime files.
pub struct Layout {
    pub state_dir: PathBuf,
}

impl Layout {
    pub fn rootfs(&self) -> PathBuf {
        self.state_dir.join("rootfs")
    }
    pub fn layers(&self) -> PathBuf {
        self.state_dir.join("layers")
    }
    pub fn bundle(&self) -> PathBuf {
        self.state_dir.join("bundle")
    }
    pub fn socket(&self) -> PathBuf {
        self.state_dir.join("agent.sock")
    }
    pub fn log(&self) -> PathBuf {
        self.state_dir.join("agent.log")
    }
}

fn chown_to(path: &Path, idmap: Option<&IdMap<'_>>) -> io::Result<()> {
    match idmap {
        Some(map) => lchown(path, Some(map.root), Some(map.root)),
        None => Ok(()),
    }
}

/// Creates a directory (or keeps an existing one) and sets its mode and owner. An existing
/// entry that is not a real directory is refused: a root restored from a snapshot's writable
/// layer was written by the sandbox, and a symlink planted at `var/tmp` would otherwise make
/// the helper chmod and chown whatever host path it names.
fn mkdir(path: &Path, mode: u32, idmap: Option<&IdMap<'_>>) -> anyhow::Result<()> {
    match fs::create_dir(path) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
            let meta = fs::symlink_metadata(path).with_context(|| format!("cannot inspect {}", path.display()))?;
            if !meta.is_dir() {
                bail!("{} exists and is not a directory", path.display());
            }
        }
        Err(err) => return Err(err).with_context(|| format!("cannot create {}", path.display())),
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    chown_to(path, idmap)?;
    Ok(())
}

fn write_file(path: &Path, text: &str, mode: u32, idmap: Option<&IdMap<'_>>) -> anyhow::Result<()> {
    // Never write through a symlink an image may have planted.
    if fs::symlink_metadata(path).is_ok() {
        fs::remove_file(path).with_context(|| format!("cannot replace {}", path.display()))?;
    }
    fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    chown_to(path, idmap)?;
    Ok(())
}

/// What the per-sandbox files of `/etc` depend on besides the id.
pub struct EtcInputs<'a> {
    /// The whole `resolv.conf` (the helper's network setup decides it).
    pub resolv_conf: &'a str,
}

/// Files that depend on the sandbox id and its network, written into every image.
fn write_identity(etc: &Path, id: &str, inputs: &EtcInputs<'_>, idmap: Option<&IdMap<'_>>) -> anyhow::Result<()> {
    write_file(&etc.join("hostname"), &format!("{id}\n"), 0o644, idmap)?;
    write_file(
        &etc.join("hosts"),
        &format!("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{id}\n"),
        0o644,
        idmap,
    )?;
    write_file(&etc.join("resolv.conf"), inputs.resolv_conf, 0o644, idmap)?;
    Ok(())
}

/// The generated `/etc` of an image that has none: never the host's.
fn write_generated_etc(etc: &Path, id: &str, inputs: &EtcInputs<'_>, idmap: Option<&IdMap<'_>>) -> anyhow::Result<()> {
    mkdir(etc, 0o755, idmap)?;
    write_etc_base(etc, idmap)?;
    write_identity(etc, id, inputs, idmap)
}

/// What every sandbox's generated `/etc` holds but its identity: users and groups, name
/// service configuration, Debian's alternatives links and the loader cache.
fn write_etc_base(etc: &Path, idmap: Option<&IdMap<'_>>) -> anyhow::Result<()> {
    let shell = if Path::new("/usr/bin/bash").exists() { "/bin/bash" } else { "/bin/sh" };
    write_file(
        &etc.join("passwd"),
        &format!(
            "root:x:0:0:root:/workspace:{shell}\nuser:x:1000:1000:user:/workspace:{shell}\n\
             nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
        ),
        0o644,
        idmap,
    )?;
    write_file(
        &etc.join("group"),
        "root:x:0:\ntty:x:5:\nusers:x:100:user\nuser:x:1000:\nnogroup:x:65534:\n",
        0o644,
        idmap,
    )?;
    write_file(
        &etc.join("shadow"),
        "root:*:19000:0:99999:7:::\nuser:*:19000:0:99999:7:::\nnobody:*:19000:0:99999:7:::\n",
        0o640,
        idmap,
    )?;
    write_file(
        &etc.join("nsswitch.conf"),
        "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\nnetworks: files\n\
         protocols: files\nservices: files\n",
        0o644,
        idmap,
    )?;
    // The os-release of the image the binaries come from, if it has one.
    if Path::new("/usr/lib/os-release").exists() {
        symlink("../usr/lib/os-release", etc.join("os-release"))?;
        chown_to(&etc.join("os-release"), idmap)?;
    }
    // Debian's alternatives (`awk`, `editor`, `python` …) are symlinks under /etc; copy the
    // links (only links, never file contents) so the commands in /usr resolve.
    if let Ok(entries) = fs::read_dir("/etc/alternatives") {
        let dir = etc.join("alternatives");
        mkdir(&dir, 0o755, idmap)?;
        for entry in entries.flatten() {
            let Ok(target) = fs::read_link(entry.path()) else { continue };
            let link = dir.join(entry.file_name());
            if symlink(&target, &link).is_ok() {
                chown_to(&link, idmap)?;
            }
        }
    }
    // The loader cache only lists library paths; without it glibc still finds the default
    // directories but not the ones `/etc/ld.so.conf.d` adds.
    if let Ok(cache) = fs::read("/etc/ld.so.cache") {
        let path = etc.join("ld.so.cache");
        fs::write(&path, cache)?;
        chown_to(&path, idmap)?;
    }
    Ok(())
}

/// The shared, read-only base of the default image's `/etc`, built once under `template_root`
/// and reused by every sandbox as the lower layer of its own `/etc` overlay. Writing the
/// alternatives links and the loader cache for each sandbox cost tens of milliseconds of
/// small-file I/O per start; an overlay costs one mount. The directory's name carries a
/// digest of what it was built from, so a change on the host (new alternatives, a new loader
/// cache) gets a new template.
fn etc_template(template_root: &Path) -> anyhow::Result<PathBuf> {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    if let Ok(entries) = fs::read_dir("/etc/alternatives") {
        let mut links: Vec<(std::ffi::OsString, Option<PathBuf>)> =
            entries.flatten().map(|e| (e.file_name(), fs::read_link(e.path()).ok())).collect();
        links.sort();
        links.hash(&mut hasher);
    }
    if let Ok(meta) = fs::metadata("/etc/ld.so.cache") {
        meta.len().hash(&mut hasher);
        meta.modified().ok().hash(&mut hasher);
    }
    Path::new("/usr/bin/bash").exists().hash(&mut hasher);
    Path::new("/usr/lib/os-release").exists().hash(&mut hasher);
    let dir = template_root.join(format!(".etc-template-{:016x}", hasher.finish()));
    // Built in a staging directory and renamed into place, so it exists only when complete.
    if dir.is_dir() {
        return Ok(dir);
    }
    fs::create_dir_all(template_root)?;
    let staging = template_root.join(format!(".etc-template-building-{}", std::process::id()));
    let _ = remove_tree(&staging);
    mkdir(&staging, 0o755, None)?;
    write_etc_base(&staging, None)?;
    match fs::rename(&staging, &dir) {
        Ok(()) => Ok(dir),
        // Another helper built it first.
        Err(_) if dir.is_dir() => {
            let _ = remove_tree(&staging);
            Ok(dir)
        }
        Err(err) => Err(err).with_context(|| format!("cannot install the /etc template at {}", dir.display())),
    }
}

/// Makes `target` show `lower` read-only with a writable layer under `layer_dir`.
fn overlay(lower: &Path, target: &Path, layer_dir: &Path, idmap: Option<&IdMap<'_>>) -> anyhow::Result<()> {
    fs::create_dir_all(layer_dir)?;
    let upper = layer_dir.join("upper");
    let work = layer_dir.join("work");
    mkdir(&upper, 0o755, idmap)?;
    mkdir(&work, 0o700, idmap)?;
    let lower_path = match idmap {
        Some(map) => {
            // The overlay keeps private clones of its layers, so the idmapped staging mount
            // can be detached right after the overlay is mounted.
            let stage = layer_dir.join("lower");
            mkdir(&stage, 0o755, None)?;
            let tree = sys::open_tree_clone(lower, false)
                .with_context(|| format!("cannot clone the mount of {}", lower.display()))?;
            sys::mount_setattr(&tree, sys::MOUNT_ATTR_RDONLY, Some(map.userns))
                .with_context(|| format!("cannot idmap {}", lower.display()))?;
            sys::move_mount(&tree, &stage)?;
            stage
        }
        None => lower.to_path_buf(),
    };
    for path in [&lower_path, &upper, &work] {
        let text = path.to_string_lossy();
        if text.contains([',', ':', '\\']) || text.contains('\n') {
            bail!("path {} cannot be used in overlay options", path.display());
        }
    }
    let options = format!("lowerdir={},upperdir={},workdir={}", lower_path.display(), upper.display(), work.display());
    let mounted = mount(Some("overlay"), target, Some("overlay"), MsFlags::MS_NODEV, Some(options.as_str()))
        .with_context(|| format!("cannot mount the overlay of {} at {}", lower.display(), target.display()));
    if idmap.is_some() {
        let _ = umount2(&lower_path, MntFlags::MNT_DETACH);
        let _ = fs::remove_dir(&lower_path);
    }
    mounted
}

/// Bind-mounts `source` at `target` (which must exist) through the new mount API, idmapped
/// when there is a user namespace.
pub fn bind(source: &Path, target: &Path, read_only: bool, idmap: Option<&IdMap<'_>>) -> anyhow::Result<()> {
    let tree = sys::open_tree_clone(source, false).with_context(|| format!("cannot clone {}", source.display()))?;
    let mut attrs = sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV;
    if read_only {
        attrs |= sys::MOUNT_ATTR_RDONLY;
    }
    sys::mount_setattr(&tree, attrs, idmap.map(|map| map.userns))
        .with_context(|| format!("cannot set mount attributes of {}", source.display()))?;
    sys::move_mount(&tree, target)
        .with_context(|| format!("cannot mount {} at {}", source.display(), target.display()))?;
    Ok(())
}

/// Checks an in-sandbox path: absolute, normal components only.
pub fn relative_target(target: &Path) -> anyhow::Result<PathBuf> {
    if !target.is_absolute() {
        bail!("mount target {} is not absolute", target.display());
    }
    let mut rel = PathBuf::new();
    for component in target.components() {
        match component {
            Component::RootDir => {}
            Component::Normal(part) => rel.push(part),
            _ => bail!("mount target {} must not contain `.` or `..`", target.display()),
        }
    }
    if rel.as_os_str().is_empty() {
        bail!("cannot mount over the sandbox's root");
    }
    Ok(rel)
}

/// Creates `rootfs/rel` as a directory (or an empty file), refusing to follow any symlink on
/// the way: the rootfs is partly written by the sandbox, and the helper resolves it on the host.
pub fn make_mountpoint(rootfs: &Path, rel: &Path, is_file: bool, idmap: Option<&IdMap<'_>>) -> anyhow::Result<PathBuf> {
    let mut path = rootfs.to_path_buf();
    let parts: Vec<_> = rel.components().collect();
    for (index, part) in parts.iter().enumerate() {
        path.push(part);
        let last = index + 1 == parts.len();
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                bail!("{} is a symlink inside the sandbox", rel.display())
            }
            Ok(meta) if last && is_file && !meta.is_file() => {
                bail!("{} exists and is not a file", rel.display())
            }
            Ok(meta) if !(meta.is_dir() || last && is_file) => {
                bail!("{} exists and is not a directory", rel.display())
            }
            Ok(_) => {}
            Err(_) if last && is_file => {
                fs::write(&path, b"")?;
                chown_to(&path, idmap)?;
            }
            Err(_) => mkdir(&path, 0o755, idmap)?,
        }
    }
    Ok(path)
}

/// Assembles the root file system; returns its host path.
pub fn assemble(
    req: &StartRequest,
    layout: &Layout,
    template_root: &Path,
    image: Option<&Path>,
    agent_binary: &Path,
    idmap: Option<&IdMap<'_>>,
    etc_inputs: &EtcInputs<'_>,
) -> anyhow::Result<PathBuf> {
    let rootfs = layout.rootfs();
    mkdir(&rootfs, 0o755, idmap)?;
    fs::create_dir_all(layout.layers())?;
    match image {
        Some(image) => {
            if !image.join("usr").is_dir() {
                bail!("image {} has no usr directory", image.display());
            }
            overlay(image, &rootfs, &layout.layers().join("root"), idmap)?;
            make_shared(&rootfs)?;
            let etc = rootfs.join("etc");
            if fs::symlink_metadata(&etc).map(|m| m.is_dir()).unwrap_or(false) {
                write_identity(&etc, &req.id, etc_inputs, idmap)?;
            } else {
                write_generated_etc(&etc, &req.id, etc_inputs, idmap)?;
            }
        }
        None => {
            // A plain directory (it is this sandbox's own) with the host's usrmerge symlinks
            // copied as they are, and one overlay per real host directory.
            make_shared(&rootfs)?;
            for name in ["tmp", "var/tmp"] {
                if name == "var/tmp" {
                    mkdir(&rootfs.join("var"), 0o755, idmap)?;
                }
                mkdir(&rootfs.join(name), 0o1777, idmap)?;
            }
            for name in ["proc", "sys", "dev", "root", "home", "run", "mnt", "opt", "var/lib", "var/cache", "var/log"] {
                mkdir(&rootfs.join(name), 0o755, idmap)?;
            }
            fs::set_permissions(rootfs.join("root"), fs::Permissions::from_mode(0o700))?;
            let etc = rootfs.join("etc");
            mkdir(&etc, 0o755, idmap)?;
            overlay(&etc_template(template_root)?, &etc, &layout.layers().join("etc"), idmap)?;
            write_identity(&etc, &req.id, etc_inputs, idmap)?;
            for name in HOST_DIRS {
                let host = Path::new("/").join(name);
                let Ok(meta) = fs::symlink_metadata(&host) else { continue };
                let target = rootfs.join(name);
                if meta.file_type().is_symlink() {
                    let link = fs::read_link(&host)?;
                    remove_restored(&target)?;
                    symlink(&link, &target)?;
                    chown_to(&target, idmap)?;
                } else if meta.is_dir() {
                    mkdir(&target, 0o755, idmap)?;
                    overlay(&host, &target, &layout.layers().join(name), idmap)?;
                }
            }
        }
    }
    for name in ["proc", "sys", "dev", "tmp"] {
        make_mountpoint(&rootfs, Path::new(name), false, idmap)?;
    }
    let workspace = make_mountpoint(&rootfs, Path::new("workspace"), false, idmap)?;
    let workspace_dir = req.workspace_dir.as_deref().ok_or_else(|| anyhow::anyhow!("no workspace directory"))?;
    bind(workspace_dir, &workspace, false, idmap).context("cannot mount the workspace")?;
    let agent = make_mountpoint(&rootfs, Path::new(".cloudterm/agent"), true, idmap)?;
    bind(agent_binary, &agent, true, idmap).context("cannot mount the agent")?;
    for m in &req.mounts {
        let rel = relative_target(&m.target)?;
        if !m.host_path.is_dir() {
            bail!("mount source {} is not a directory", m.host_path.display());
        }
        let target = make_mountpoint(&rootfs, &rel, false, idmap)?;
        bind(&m.host_path, &target, m.read_only, idmap)?;
    }
    Ok(rootfs)
}

/// Removes what a restored writable layer left where the helper puts a host link (a
/// sandbox may have replaced `/bin` with its own directory). Nothing is mounted under the
/// rootfs yet, and `remove_dir_all` does not follow symlinks.
fn remove_restored(path: &Path) -> anyhow::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path)?,
        Ok(_) => fs::remove_file(path)?,
        Err(_) => {}
    }
    Ok(())
}

/// Moves a snapshot's writable layer (unpacked, owners already mapped) into a new sandbox's
/// state directory, before anything is mounted: its plain root part becomes the rootfs
/// directory and each overlay part becomes the upper directory of that overlay. A part this
/// image has no place for is refused (a layer of a default-image sandbox cannot start a
/// configured image, and the other way round), and so is anything that is not a directory.
pub fn place_layer(layer: &Path, layout: &Layout, configured_image: bool) -> anyhow::Result<()> {
    let meta = fs::symlink_metadata(layer).with_context(|| format!("no layer at {}", layer.display()))?;
    if !meta.is_dir() {
        bail!("{} is not a directory", layer.display());
    }
    let rootfs = layout.rootfs();
    if fs::symlink_metadata(&rootfs).is_ok() {
        bail!("the sandbox's root already exists");
    }
    let mut parts: Vec<(String, PathBuf)> = Vec::new();
    for entry in fs::read_dir(layer)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !entry.file_type()?.is_dir() {
            bail!("layer part {name:?} is not a directory");
        }
        let fits = if configured_image {
            name == "root"
        } else {
            name == crate::protocol::ROOTFS_LAYER
                || name == "etc"
                || HOST_DIRS.contains(&name.as_str())
                    && fs::symlink_metadata(Path::new("/").join(&name)).is_ok_and(|m| m.is_dir())
        };
        if !fits {
            bail!("layer part {name:?} does not fit this image (a snapshot of a sandbox with another image?)");
        }
        parts.push((name, entry.path()));
    }
    fs::create_dir_all(layout.layers())?;
    for (name, path) in parts {
        let target = if name == crate::protocol::ROOTFS_LAYER {
            rootfs.clone()
        } else {
            let dir = layout.layers().join(&name);
            fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            dir.join("upper")
        };
        fs::rename(&path, &target)
            .with_context(|| format!("cannot move layer part {name:?} to {}", target.display()))?;
    }
    fs::remove_dir(layer).with_context(|| format!("cannot remove {}", layer.display()))?;
    Ok(())
}

/// Makes the rootfs a shared mount point (before anything is mounted under it), so mounts the
/// helper adds under it later propagate into the sandbox, whose copy is a slave: nothing
/// propagates back.
fn make_shared(rootfs: &Path) -> anyhow::Result<()> {
    if !is_mountpoint(rootfs)? {
        mount(Some(rootfs), rootfs, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .context("cannot bind the rootfs onto itself")?;
    }
    mount(None::<&str>, rootfs, None::<&str>, MsFlags::MS_SHARED, None::<&str>)
        .context("cannot make the rootfs shared")?;
    Ok(())
}

/// Decodes the octal escapes of a `/proc/self/mountinfo` path.
fn unescape(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b)) {
            let value = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(value);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    use std::os::unix::ffi::OsStringExt;
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// Every mount point of the helper's mount namespace at or under `dir`, deepest first.
pub fn mounts_under(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let text = fs::read_to_string("/proc/self/mountinfo")?;
    let mut found: Vec<PathBuf> = text
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape)
        .filter(|point| point.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    Ok(found)
}

fn is_mountpoint(path: &Path) -> anyhow::Result<bool> {
    let text = fs::read_to_string("/proc/self/mountinfo")?;
    Ok(text.lines().filter_map(|line| line.split(' ').nth(4)).any(|p| unescape(p) == path))
}

/// Detaches every mount under `dir`; fails if any is left.
pub fn unmount_all(dir: &Path) -> anyhow::Result<()> {
    for _ in 0..4 {
        let points = mounts_under(dir)?;
        if points.is_empty() {
            return Ok(());
        }
        for point in points {
            let _ = umount2(&point, MntFlags::MNT_DETACH);
        }
    }
    let left = mounts_under(dir)?;
    if left.is_empty() {
        Ok(())
    } else {
        bail!("mounts left under {}: {left:?}", dir.display())
    }
}

/// Removes `dir` after making sure nothing is mounted under it: a recursive delete through a
/// mounted workspace would erase the user's files.
pub fn remove_tree(dir: &Path) -> anyhow::Result<()> {
    if fs::symlink_metadata(dir).is_err() {
        return Ok(());
    }
    unmount_all(dir)?;
    if !mounts_under(dir)?.is_empty() {
        bail!("refusing to delete {}: something is still mounted under it", dir.display());
    }
    fs::remove_dir_all(dir).with_context(|| format!("cannot remove {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_must_be_absolute_and_plain() {
        assert_eq!(relative_target(Path::new("/mnt/data")).ok(), Some(PathBuf::from("mnt/data")));
        assert!(relative_target(Path::new("mnt/data")).is_err());
        assert!(relative_target(Path::new("/mnt/../etc")).is_err());
        assert!(relative_target(Path::new("/")).is_err());
    }

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape("/a\\040b\\011c"), PathBuf::from("/a b\tc"));
        assert_eq!(unescape("/plain\\"), PathBuf::from("/plain\\"));
    }

    #[test]
    fn mountpoints_refuse_symlinks() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::os::unix::fs::symlink("/etc", dir.path().join("evil")).expect("symlink");
        assert!(make_mountpoint(dir.path(), Path::new("evil/x"), false, None).is_err());
        let made = make_mountpoint(dir.path(), Path::new("a/b"), false, None).expect("mkdir");
        assert!(made.is_dir());
        let file = make_mountpoint(dir.path(), Path::new("c/agent"), true, None).expect("file");
        assert!(file.is_file());
    }
}
