//! The writable-layer half of a snapshot: its object key beside the workspace archive, packing
//! a running sandbox's layer with owners made relative to its user namespace, and unpacking
//! one for a new sandbox with owners mapped into the runtime's range.

use std::path::Path;

use cloudterm_archive::{OwnerMap, PackOptions, RestoreWhiteouts, Source, UnpackOptions, UnpackStats};
use cloudterm_blobstore::BlobStore;
use cloudterm_runtime::WritableLayer;
use cloudterm_store::SnapshotLayerRecord;

use crate::error::DomainError;
use crate::snapshots::transfer::{self, storage_error};

/// What the layer object's name adds to the workspace object's: `<id>.layer.tar.zst[.sealed]`.
const LAYER_INFIX: &str = ".layer";

/// The layer object's key for a snapshot whose workspace archive is `object_key`
/// (`snapshots/<owner>/<id>.tar.zst[.sealed]` → `snapshots/<owner>/<id>.layer.tar.zst[.sealed]`).
pub(crate) fn layer_key(object_key: &str) -> String {
    match object_key.find(".tar.zst") {
        Some(at) => format!("{}{LAYER_INFIX}{}", &object_key[..at], &object_key[at..]),
        None => format!("{object_key}{LAYER_INFIX}"),
    }
}

/// `<id>.layer` → `<id>`: the snapshot a layer object's file stem belongs to.
pub(crate) fn strip_layer_infix(stem: &str) -> &str {
    stem.strip_suffix(LAYER_INFIX).unwrap_or(stem)
}

/// Packs a running (frozen) sandbox's writable layer and stores it under `key`. Returns the
/// record to keep with the snapshot. Fails without leaving an object under `key`.
pub(crate) async fn pack_layer(
    blobs: &BlobStore,
    layer: WritableLayer,
    image: Option<String>,
    key: &str,
    mut options: PackOptions,
) -> Result<SnapshotLayerRecord, DomainError> {
    options.owners = Some(OwnerMap { host_base: layer.owner_base, count: layer.owner_count });
    let overlays: Vec<String> = layer.trees.iter().filter(|t| t.overlay_upper).map(|t| t.name.clone()).collect();
    let sources = layer
        .trees
        .into_iter()
        .map(|tree| {
            if tree.overlay_upper {
                Source::overlay_layer(tree.name, tree.path)
            } else {
                Source::dir(tree.name, tree.path)
            }
        })
        .collect();
    let (stats, outcome) = transfer::pack_sources_to_store(blobs, sources, layer.hold, key, options).await?;
    if stats.skipped_count > 0 {
        tracing::info!(key = %key, skipped = stats.skipped_count, first = ?stats.skipped.first(), "layer snapshot left out special files");
    }
    Ok(SnapshotLayerRecord {
        object_key: key.to_string(),
        image,
        size_bytes: i64::try_from(stats.size_bytes).unwrap_or(i64::MAX),
        stored_bytes: i64::try_from(outcome.size_bytes).unwrap_or(i64::MAX),
        file_count: i64::try_from(stats.file_count).unwrap_or(i64::MAX),
        sha256: outcome.sha256_hex,
        overlays,
    })
}

/// Extracts a snapshot's layer into the fresh directory `dest`, verified against its checksum,
/// whiteouts restored in its overlay parts, files owned by `owners` (the runtime's range).
pub(crate) async fn unpack_layer(
    blobs: &BlobStore,
    layer: &SnapshotLayerRecord,
    dest: &Path,
    mut options: UnpackOptions,
    owners: (u32, u32),
) -> Result<UnpackStats, DomainError> {
    options.expected_sha256 = Some(layer.sha256.clone());
    options.owners = Some(OwnerMap { host_base: owners.0, count: owners.1 });
    options.restore_whiteouts = RestoreWhiteouts::Under(layer.overlays.clone());
    let reader = blobs.get_stream(&layer.object_key).await.map_err(storage_error)?;
    transfer::unpack_reader(reader, dest, options).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_keys_sit_beside_workspace_keys() {
        assert_eq!(layer_key("snapshots/alice/snap_1.tar.zst"), "snapshots/alice/snap_1.layer.tar.zst");
        assert_eq!(layer_key("snapshots/alice/snap_1.tar.zst.sealed"), "snapshots/alice/snap_1.layer.tar.zst.sealed");
        assert_eq!(strip_layer_infix("snap_1.layer"), "snap_1");
        assert_eq!(strip_layer_infix("snap_1"), "snap_1");
    }
}
