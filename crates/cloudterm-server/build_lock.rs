//! Whether `web/node_modules` holds the versions `web/package-lock.json` pins. Shared by
//! `build.rs`, which runs `npm ci` when it does not (a `node_modules` left from before a lock
//! change would otherwise be embedded silently), and by a test in `tests/it/console.rs`.
//!
//! Versions, not a stamp of our own: they answer the question whoever installed
//! `node_modules` (this script, `npm ci` by hand, CI), and npm versions are immutable, so the
//! same version is the same files.

/// What is wrong with the installed `packages`, one line each (empty when every one is the
/// version the lock pins). `lock` is the text of `package-lock.json`; `installed(name)` is the
/// text of `node_modules/NAME/package.json`, `None` when missing. An error when the lock cannot
/// be read as one or does not pin a package (then `npm ci` cannot help either).
pub fn stale_packages(
    lock: &str,
    packages: &[&str],
    installed: impl Fn(&str) -> Option<String>,
) -> Result<Vec<String>, String> {
    let lock: serde_json::Value =
        serde_json::from_str(lock).map_err(|err| format!("web/package-lock.json is not JSON: {err}"))?;
    let mut stale = Vec::new();
    for package in packages {
        let pinned = lock["packages"][format!("node_modules/{package}")]["version"]
            .as_str()
            .ok_or_else(|| format!("web/package-lock.json does not pin {package}"))?;
        match installed(package).as_deref().and_then(version_of) {
            Some(version) if version == pinned => {}
            Some(version) => stale.push(format!("{package} is {version}, the lock pins {pinned}")),
            None => stale.push(format!("{package} is not installed")),
        }
    }
    Ok(stale)
}

/// The `version` of a `package.json`.
fn version_of(package_json: &str) -> Option<String> {
    let json: serde_json::Value = serde_json::from_str(package_json).ok()?;
    json["version"].as_str().map(str::to_string)
}

/// The npm package a path under `node_modules` belongs to (`@scope/name` or `name`).
pub fn package_of(path: &str) -> &str {
    let parts = if path.starts_with('@') { 2 } else { 1 };
    match path.match_indices('/').nth(parts - 1) {
        Some((end, _)) => &path[..end],
        None => path,
    }
}
