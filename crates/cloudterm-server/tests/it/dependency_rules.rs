//! The one-way dependency rules of ARCHITECTURE.md, enforced: a crate may depend on the
//! cloudterm crates its row allows and on no other.

use std::collections::BTreeMap;
use std::path::Path;

/// Normal (non-dev) dependencies each crate may have on other cloudterm crates.
const ALLOWED: &[(&str, &[&str])] = &[
    ("cloudterm-api-types", &[]),
    ("cloudterm-agent-protocol", &[]),
    ("cloudterm-blobstore", &[]),
    ("cloudterm-archive", &[]),
    ("cloudterm-store", &[]),
    ("cloudterm-identity", &[]),
    ("cloudterm-volumes", &[]),
    ("cloudterm-agent", &["cloudterm-agent-protocol"]),
    ("cloudterm-runtime", &["cloudterm-agent-protocol"]),
    ("cloudterm-terminal", &["cloudterm-agent-protocol"]),
    ("cloudterm-runtime-linux", &["cloudterm-runtime", "cloudterm-agent-protocol"]),
    ("cloudterm-runtime-firecracker", &["cloudterm-runtime", "cloudterm-blobstore"]),
    (
        "cloudterm-domain",
        &[
            "cloudterm-runtime",
            "cloudterm-store",
            "cloudterm-blobstore",
            "cloudterm-agent-protocol",
            "cloudterm-archive",
            "cloudterm-volumes",
        ],
    ),
    (
        "cloudterm-server",
        &[
            "cloudterm-api-types",
            "cloudterm-domain",
            "cloudterm-store",
            "cloudterm-blobstore",
            "cloudterm-runtime",
            "cloudterm-runtime-linux",
            "cloudterm-runtime-firecracker",
            "cloudterm-identity",
            "cloudterm-agent-protocol",
            "cloudterm-terminal",
            "cloudterm-volumes",
        ],
    ),
    ("cloudterm-bench", &[]),
    (
        "cloudterm",
        &[
            "cloudterm-server",
            "cloudterm-api-types",
            "cloudterm-identity",
            "cloudterm-runtime-linux",
            "cloudterm-runtime-firecracker",
        ],
    ),
    (
        "cloudterm-test-support",
        &[
            "cloudterm-server",
            "cloudterm-identity",
            "cloudterm-runtime",
            "cloudterm-store",
            "cloudterm-api-types",
            "cloudterm-blobstore",
        ],
    ),
];

/// Crates that must never see HTTP-framework types.
const NO_AXUM: &[&str] = &[
    "cloudterm-domain",
    "cloudterm-store",
    "cloudterm-blobstore",
    "cloudterm-runtime",
    "cloudterm-runtime-firecracker",
    "cloudterm-api-types",
    "cloudterm-terminal",
    "cloudterm-volumes",
];

fn manifests() -> BTreeMap<String, toml::Table> {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("crates dir");
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(crates).expect("read crates").flatten() {
        let manifest = entry.path().join("Cargo.toml");
        if let Ok(text) = std::fs::read_to_string(&manifest) {
            let table: toml::Table = toml::from_str(&text).expect("manifest parses");
            let name = table["package"]["name"].as_str().expect("name").to_string();
            assert_eq!(entry.file_name().to_string_lossy(), name, "folder name must equal package name");
            out.insert(name, table);
        }
    }
    out
}

#[test]
fn crates_depend_only_along_the_documented_edges() {
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    for (name, manifest) in manifests() {
        let rule = allowed
            .get(name.as_str())
            .unwrap_or_else(|| panic!("{name} has no row in ARCHITECTURE.md's table (and ALLOWED)"));
        let Some(deps) = manifest.get("dependencies").and_then(|d| d.as_table()) else {
            continue;
        };
        for dep in deps.keys().filter(|dep| dep.starts_with("cloudterm")) {
            assert!(rule.contains(&dep.as_str()), "{name} must not depend on {dep}");
        }
        if NO_AXUM.contains(&name.as_str()) {
            for banned in ["axum", "tower", "tower-http", "hyper", "sqlx"] {
                // The agent client and Firecracker's API client speak HTTP/1.1 over Unix sockets.
                let allowed_here = (banned == "sqlx" && name == "cloudterm-store")
                    || (banned == "hyper" && (name == "cloudterm-runtime" || name == "cloudterm-runtime-firecracker"));
                assert!(allowed_here || !deps.contains_key(banned), "{name} must not depend on {banned}");
            }
        }
    }
}
