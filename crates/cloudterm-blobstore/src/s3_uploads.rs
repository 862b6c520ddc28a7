//! Finding and aborting multipart uploads a crashed server left behind: S3's
//! `ListMultipartUploads` and `AbortMultipartUpload`, which `object_store` does not offer.
//!
//! Why signed requests and not a bucket lifecycle rule (`AbortIncompleteMultipartUpload`): Garage
//! and AWS both support that rule, but it needs bucket-owner rights cloudterm's key should not
//! have, works in whole days, and runs on the service's schedule, so nothing could prove in a test
//! that an upload is gone. Here the requests go through `object_store`'s own SigV4 signer
//! (`AwsAuthorizer`), credential provider and HTTP client, so they authenticate exactly like every
//! other request; no second S3 client is needed. Operators may still add the lifecycle rule as a
//! second net (docs/operations.md).

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, StatusCode};
use object_store::aws::AwsAuthorizer;
use object_store::client::HttpRequestBody;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::Deserialize;

use crate::s3::S3Store;
use crate::{BlobStoreError, IncompleteUpload};

/// RFC 3986 unreserved characters stay; everything else is percent-encoded, as SigV4 expects.
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');
/// Pages of 1000 uploads; a bound so a misbehaving service cannot keep us looping.
const MAX_PAGES: usize = 1000;
/// Attempts of one request on a connection error or a 5xx answer.
const ATTEMPTS: u32 = 4;

/// The parts of S3's `ListMultipartUploadsResult` we use.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListMultipartUploadsResult {
    #[serde(default)]
    is_truncated: bool,
    #[serde(default)]
    next_key_marker: Option<String>,
    #[serde(default)]
    next_upload_id_marker: Option<String>,
    #[serde(default, rename = "Upload")]
    uploads: Vec<UploadEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct UploadEntry {
    key: String,
    upload_id: String,
    #[serde(default)]
    initiated: Option<String>,
}

fn encode(text: &str) -> String {
    utf8_percent_encode(text, UNRESERVED).to_string()
}

fn encode_path(key: &str) -> String {
    key.split('/').map(encode).collect::<Vec<_>>().join("/")
}

impl S3Store {
    pub(crate) async fn incomplete_uploads(&self) -> Result<Vec<IncompleteUpload>, BlobStoreError> {
        let prefix = if self.prefix.is_empty() { String::new() } else { format!("{}/", self.prefix) };
        let mut out = Vec::new();
        let mut marker: Option<(String, String)> = None;
        for _ in 0..MAX_PAGES {
            let mut url = format!("{}?uploads=&prefix={}", self.bucket_url, encode(&prefix));
            if let Some((key, id)) = &marker {
                url.push_str(&format!("&key-marker={}&upload-id-marker={}", encode(key), encode(id)));
            }
            let (status, body) = self.signed(Method::GET, &url).await?;
            if !status.is_success() {
                return Err(answer_error("listing multipart uploads", status, &body));
            }
            let text = String::from_utf8_lossy(&body);
            let page: ListMultipartUploadsResult = quick_xml::de::from_str(&text)
                .map_err(|err| BlobStoreError::Unavailable(format!("unreadable ListMultipartUploads answer: {err}")))?;
            for upload in page.uploads {
                let Some(key) = self.store_key(&upload.key) else {
                    continue;
                };
                out.push(IncompleteUpload {
                    key: key.to_string(),
                    initiated: initiated(&upload),
                    upload_id: upload.upload_id,
                });
            }
            let next = (page.next_key_marker.unwrap_or_default(), page.next_upload_id_marker.unwrap_or_default());
            if !page.is_truncated || (next.0.is_empty() && next.1.is_empty()) || marker.as_ref() == Some(&next) {
                return Ok(out);
            }
            marker = Some(next);
        }
        Err(BlobStoreError::Unavailable(format!("more than {MAX_PAGES} pages of multipart uploads")))
    }

    pub(crate) async fn abort_upload(&self, upload: &IncompleteUpload) -> Result<(), BlobStoreError> {
        let url = format!(
            "{}/{}?uploadId={}",
            self.bucket_url,
            encode_path(&self.full_key(&upload.key)),
            encode(&upload.upload_id)
        );
        let (status, body) = self.signed(Method::DELETE, &url).await?;
        // 404: someone (the upload's own error path, another sweep) aborted it first.
        if status.is_success() || status == StatusCode::NOT_FOUND {
            Ok(())
        } else {
            Err(answer_error("aborting a multipart upload", status, &body))
        }
    }

    /// Sends a body-less request signed like `object_store`'s own, retrying connection errors and
    /// 5xx answers with jittered exponential backoff; returns the final status and body.
    async fn signed(&self, method: Method, url: &str) -> Result<(StatusCode, Bytes), BlobStoreError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let outcome = self.send_signed(method.clone(), url).await;
            let transient = match &outcome {
                Ok((status, _)) => status.is_server_error(),
                Err(SendError::Transport(_)) => true,
                Err(SendError::Fatal(_)) => false,
            };
            if !transient || attempt >= ATTEMPTS {
                return match outcome {
                    Ok(answer) => Ok(answer),
                    Err(SendError::Transport(message) | SendError::Fatal(message)) => {
                        Err(BlobStoreError::Unavailable(format!("{method} {url}: {message}")))
                    }
                };
            }
            tokio::time::sleep(backoff(attempt)).await;
        }
    }

    async fn send_signed(&self, method: Method, url: &str) -> Result<(StatusCode, Bytes), SendError> {
        let credential = self
            .store
            .credentials()
            .get_credential()
            .await
            .map_err(|err| SendError::Fatal(format!("no s3 credentials: {err}")))?;
        let mut request = http::Request::builder()
            .method(method)
            .uri(url)
            .body(HttpRequestBody::empty())
            .map_err(|err| SendError::Fatal(format!("bad request: {err}")))?;
        AwsAuthorizer::new(&credential, "s3", &self.region)
            .try_authorize(&mut request, None)
            .map_err(|err| SendError::Fatal(format!("cannot sign: {err}")))?;
        let response = self.http.execute(request).await.map_err(|err| SendError::Transport(err.to_string()))?;
        let status = response.status();
        let body = response.into_body().bytes().await.map_err(|err| SendError::Transport(err.to_string()))?;
        Ok((status, body))
    }
}

enum SendError {
    /// The request may not have arrived: worth another try.
    Transport(String),
    /// Retrying cannot help.
    Fatal(String),
}

/// Full jitter over 100 ms · 2^(attempt-1), at most 2 s: three retries stay within a few seconds.
fn backoff(attempt: u32) -> Duration {
    let ceiling_ms = (100u64 << attempt.saturating_sub(1).min(5)).min(2000);
    // A v4 uuid is 122 random bits from the OS, enough for a jitter without another dependency.
    let random = uuid::Uuid::new_v4().as_u128() as u64;
    Duration::from_millis(random % (ceiling_ms + 1))
}

/// When the upload started. An upload whose date cannot be read counts as just started, so the
/// sweep never aborts an upload on a guess.
fn initiated(upload: &UploadEntry) -> SystemTime {
    match upload.initiated.as_deref().map(chrono::DateTime::parse_from_rfc3339) {
        Some(Ok(date)) => SystemTime::from(date),
        _ => {
            tracing::warn!(key = %upload.key, initiated = ?upload.initiated, "multipart upload without a readable date; not treated as stale");
            SystemTime::now()
        }
    }
}

fn answer_error(what: &str, status: StatusCode, body: &[u8]) -> BlobStoreError {
    let text = String::from_utf8_lossy(body);
    let text: String = text.chars().take(300).collect();
    BlobStoreError::Unavailable(format!("{what}: the service answered {status}: {text}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_encoded_per_segment() {
        assert_eq!(encode_path("a b/c+d/é~x"), "a%20b/c%2Bd/%C3%A9~x");
        assert_eq!(encode("p/"), "p%2F");
    }

    #[test]
    fn the_listing_answer_parses() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListMultipartUploadsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Bucket>b</Bucket><KeyMarker></KeyMarker><UploadIdMarker></UploadIdMarker>
  <NextKeyMarker>p/k2</NextKeyMarker><NextUploadIdMarker>id2</NextUploadIdMarker>
  <Prefix>p/</Prefix><MaxUploads>1000</MaxUploads><IsTruncated>true</IsTruncated>
  <Upload><Key>p/k1</Key><UploadId>id1</UploadId><Initiated>2024-01-02T03:04:05.000Z</Initiated></Upload>
  <Upload><Key>p/k2</Key><UploadId>id2</UploadId><Initiated>2024-01-02T03:04:06Z</Initiated></Upload>
</ListMultipartUploadsResult>"#;
        let page: ListMultipartUploadsResult = quick_xml::de::from_str(xml).expect("parses");
        assert!(page.is_truncated);
        assert_eq!(page.uploads.len(), 2);
        assert_eq!(page.next_upload_id_marker.as_deref(), Some("id2"));
        let when = initiated(&page.uploads[0]);
        assert_eq!(when.duration_since(SystemTime::UNIX_EPOCH).expect("after epoch").as_secs(), 1_704_164_645);
        let empty: ListMultipartUploadsResult = quick_xml::de::from_str(
            "<ListMultipartUploadsResult><IsTruncated>false</IsTruncated></ListMultipartUploadsResult>",
        )
        .expect("parses");
        assert!(empty.uploads.is_empty());
    }

    #[test]
    fn backoff_stays_bounded() {
        for attempt in 1..10 {
            assert!(backoff(attempt) <= Duration::from_secs(2));
        }
    }
}
