//! File endpoints: streamed download and upload, list, stat, mkdir, remove, rename.
//!
//! Uploads stream into a temporary file in the target's directory, are fsynced, then renamed
//! over the target, so a reader never sees a half-written file. Downloads stream in chunks.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use cloudterm_agent_protocol::{
    FileInfo, FileType, ListResponse, MkdirRequest, PathResponse, RemoveRequest, RenameRequest, WriteFileResponse,
};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Response, StatusCode};
use tokio::io::AsyncReadExt;

use crate::paths::resolve;
use crate::util::{json_response, query_param, rfc3339, ApiError, ChannelBody, RespBody};
use crate::State;

fn path_param(state: &State, q: &[(String, String)], name: &str) -> Result<PathBuf, ApiError> {
    let p = query_param(q, name).ok_or_else(|| {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_path", format!("query parameter `{name}` is required"))
    })?;
    resolve(&state.spawner.workspace, p)
}

/// Metadata of `path` (symbolic links not followed).
pub fn info(path: &Path) -> Result<FileInfo, ApiError> {
    let md = std::fs::symlink_metadata(path).map_err(|e| ApiError::io(&e, path))?;
    let ft = md.file_type();
    let file_type = if ft.is_symlink() {
        FileType::Symlink
    } else if ft.is_dir() {
        FileType::Dir
    } else if ft.is_file() {
        FileType::File
    } else {
        FileType::Other
    };
    Ok(FileInfo {
        name: path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "/".into()),
        path: path.display().to_string(),
        file_type,
        size: md.len(),
        mode: md.mode() & 0o7777,
        modified_at: rfc3339(md.modified().unwrap_or(std::time::UNIX_EPOCH)),
    })
}

/// `GET /v1/files?path=`: the file's bytes, streamed.
pub async fn download(state: Arc<State>, q: Vec<(String, String)>) -> Result<Response<RespBody>, ApiError> {
    let path = path_param(&state, &q, "path")?;
    let mut file = tokio::fs::File::open(&path).await.map_err(|e| ApiError::io(&e, &path))?;
    let md = file.metadata().await.map_err(|e| ApiError::io(&e, &path))?;
    if md.is_dir() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "is_a_directory",
            format!("{} is a directory", path.display()),
        ));
    }
    let (tx, body) = ChannelBody::channel(4);
    tokio::spawn(async move {
        loop {
            let mut buf = vec![0u8; 256 * 1024];
            match file.read(&mut buf).await {
                Ok(0) => return,
                Ok(n) => {
                    buf.truncate(n);
                    if tx.send(Ok(Bytes::from(buf))).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
        }
    });
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/octet-stream"));
    h.insert(hyper::header::CONTENT_LENGTH, hyper::header::HeaderValue::from(md.len()));
    Ok(r)
}

/// `PUT /v1/files?path=&mode=`: streams the body to a temp file, fsyncs, renames.
pub async fn upload(
    state: Arc<State>,
    q: Vec<(String, String)>,
    mut body: Incoming,
) -> Result<Response<RespBody>, ApiError> {
    let path = path_param(&state, &q, "path")?;
    let mode = match query_param(&q, "mode") {
        Some(m) => u32::from_str_radix(m.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o7777)
            .ok_or_else(|| ApiError::bad_request(format!("mode `{m}` is not an octal permission")))?,
        None => 0o644,
    };
    if path == Path::new("/") {
        return Err(ApiError::new(StatusCode::CONFLICT, "is_a_directory", "/ is a directory"));
    }
    if path.is_dir() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "is_a_directory",
            format!("{} is a directory", path.display()),
        ));
    }
    let dir = path.parent().unwrap_or(Path::new("/")).to_path_buf();
    tokio::fs::create_dir_all(&dir).await.map_err(|e| ApiError::io(&e, &dir))?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.cloudterm-upload-{}", crate::procs::random_hex(6)));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| ApiError::io(&e, &tmp))?;
    let mut size = 0u64;
    let result: Result<(), ApiError> = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ApiError::bad_request(format!("reading the body: {e}")))?;
            if let Ok(data) = frame.into_data() {
                // Local writes land in the page cache; blocking briefly here is cheaper than
                // a hop to the blocking pool per chunk.
                file.write_all(&data).map_err(|e| ApiError::io(&e, &tmp))?;
                size += data.len() as u64;
            }
        }
        file.sync_all().map_err(|e| ApiError::io(&e, &tmp))?;
        // The umask may have narrowed the mode given at creation.
        file.set_permissions(std::fs::Permissions::from_mode(mode)).map_err(|e| ApiError::io(&e, &tmp))?;
        std::fs::rename(&tmp, &path).map_err(|e| ApiError::io(&e, &path))?;
        Ok(())
    }
    .await;
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        // Read the rest of the body before answering: a client still sending (a write that hit
        // ENOSPC half-way) would otherwise see a broken connection instead of this answer.
        while let Some(Ok(_)) = body.frame().await {}
        return Err(e);
    }
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(json_response(StatusCode::CREATED, &WriteFileResponse { path: path.display().to_string(), size }))
}

/// `GET /v1/files/list?path=`.
pub async fn list(state: Arc<State>, q: Vec<(String, String)>) -> Result<Response<RespBody>, ApiError> {
    let path = path_param(&state, &q, "path")?;
    let md = std::fs::metadata(&path).map_err(|e| ApiError::io(&e, &path))?;
    if !md.is_dir() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_a_directory",
            format!("{} is not a directory", path.display()),
        ));
    }
    let mut entries = Vec::new();
    for e in std::fs::read_dir(&path).map_err(|e| ApiError::io(&e, &path))? {
        let e = e.map_err(|e| ApiError::io(&e, &path))?;
        // An entry removed while listing is skipped.
        if let Ok(i) = info(&e.path()) {
            entries.push(i);
        }
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(json_response(StatusCode::OK, &ListResponse { path: path.display().to_string(), entries }))
}

/// `GET /v1/files/stat?path=`.
pub async fn stat(state: Arc<State>, q: Vec<(String, String)>) -> Result<Response<RespBody>, ApiError> {
    let path = path_param(&state, &q, "path")?;
    Ok(json_response(StatusCode::OK, &info(&path)?))
}

/// `POST /v1/files/mkdir`.
pub async fn mkdir(state: Arc<State>, req: MkdirRequest) -> Result<Response<RespBody>, ApiError> {
    let path = resolve(&state.spawner.workspace, &req.path)?;
    let r = if req.parents { std::fs::create_dir_all(&path) } else { std::fs::create_dir(&path) };
    r.map_err(|e| ApiError::io(&e, &path))?;
    Ok(json_response(StatusCode::CREATED, &PathResponse { path: path.display().to_string() }))
}

/// `POST /v1/files/remove`.
pub async fn remove(state: Arc<State>, req: RemoveRequest) -> Result<Response<RespBody>, ApiError> {
    let path = resolve(&state.spawner.workspace, &req.path)?;
    if path == Path::new("/") || path == state.spawner.workspace {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_path",
            format!("refusing to remove {}", path.display()),
        ));
    }
    let md = std::fs::symlink_metadata(&path).map_err(|e| ApiError::io(&e, &path))?;
    let r = if !md.is_dir() {
        std::fs::remove_file(&path)
    } else if req.recursive {
        let p = path.clone();
        tokio::task::spawn_blocking(move || std::fs::remove_dir_all(p))
            .await
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
    } else {
        std::fs::remove_dir(&path)
    };
    r.map_err(|e| ApiError::io(&e, &path))?;
    Ok(json_response(StatusCode::OK, &PathResponse { path: path.display().to_string() }))
}

/// `POST /v1/files/rename`.
pub async fn rename(state: Arc<State>, req: RenameRequest) -> Result<Response<RespBody>, ApiError> {
    let from = resolve(&state.spawner.workspace, &req.from)?;
    let to = resolve(&state.spawner.workspace, &req.to)?;
    std::fs::symlink_metadata(&from).map_err(|e| ApiError::io(&e, &from))?;
    std::fs::rename(&from, &to).map_err(|e| ApiError::io(&e, &to))?;
    Ok(json_response(StatusCode::OK, &PathResponse { path: to.display().to_string() }))
}
