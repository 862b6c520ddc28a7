//! Client commands (`cloudterm sandbox …`, `cloudterm exec …`, `cloudterm snapshot …`, and the
//! connection details of `cloudterm attach`): a thin
//! HTTP client of a running server, configured by `CLOUDTERM_URL` and `CLOUDTERM_TOKEN`.

use anyhow::{bail, Context};
use reqwest::{StatusCode, Url};
use serde_json::{json, Value};

/// A server and the token to talk to it with.
pub struct Client {
    url: String,
    token: String,
    http: reqwest::blocking::Client,
}

impl Client {
    /// From `--url`/`CLOUDTERM_URL` and `CLOUDTERM_TOKEN`.
    pub fn new(url: String, token: Option<String>) -> anyhow::Result<Client> {
        let token = token
            .filter(|t| !t.is_empty())
            .context("no token: set CLOUDTERM_TOKEN (e.g. export CLOUDTERM_TOKEN=$(cloudterm token alice))")?;
        let http = reqwest::blocking::Client::builder().timeout(None).build()?;
        Ok(Client { url: url.trim_end_matches('/').to_string(), token, http })
    }

    /// The server URL, as given.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// The bearer token.
    pub fn token(&self) -> &str {
        &self.token
    }

    fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let url = Url::parse(&format!("{}{path}", self.url)).with_context(|| format!("{} is not a URL", self.url))?;
        self.call_url(method, url, body)
    }

    /// A JSON call to `url` (made by [`Client::endpoint`]); a failure carries the server's message.
    pub fn call_url(&self, method: reqwest::Method, url: Url, body: Option<Value>) -> anyhow::Result<Value> {
        let mut request = self.http.request(method, url).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().with_context(|| format!("cannot reach {}", self.url))?;
        let status = response.status();
        let value = parse_body(response.text()?);
        if !status.is_success() {
            bail!(failure(status, &value));
        }
        Ok(value)
    }

    /// The URL of `segments` below the server URL, each percent-encoded as one path segment (so an
    /// id typed by a user cannot climb to another route), with the query pairs that have a value.
    pub fn endpoint(&self, segments: &[&str], query: &[(&str, Option<&str>)]) -> anyhow::Result<Url> {
        let mut url = Url::parse(&self.url).with_context(|| format!("{} is not a URL", self.url))?;
        url.path_segments_mut()
            .map_err(|()| anyhow::anyhow!("{} cannot be a base URL", self.url))?
            .pop_if_empty()
            .extend(segments);
        for (name, value) in query {
            if let Some(value) = value {
                url.query_pairs_mut().append_pair(name, value);
            }
        }
        Ok(url)
    }

    /// A `GET` whose body the caller reads as a stream (`Read`), so a large download is never
    /// held in memory. Only a successful answer is returned; an error answer becomes the error.
    pub fn get_stream(&self, url: Url) -> anyhow::Result<reqwest::blocking::Response> {
        let response =
            self.http.get(url).bearer_auth(&self.token).send().with_context(|| format!("cannot reach {}", self.url))?;
        let status = response.status();
        if !status.is_success() {
            bail!(failure(status, &parse_body(response.text()?)));
        }
        Ok(response)
    }

    /// A `POST` of a streamed `body` with an async client: reqwest's blocking client cannot take
    /// an async stream, and a tokio file is what streams a large upload without holding it. Run
    /// it on a runtime of its own: the blocking client must not be used inside one.
    pub async fn post_stream(&self, url: Url, body: reqwest::Body, content_type: &str) -> anyhow::Result<Value> {
        let http = reqwest::Client::builder().build()?;
        let response = http
            .post(url)
            .bearer_auth(&self.token)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body)
            .send()
            .await
            .with_context(|| format!("cannot upload to {}", self.url))?;
        let status = response.status();
        let value = parse_body(response.text().await?);
        if !status.is_success() {
            bail!(failure(status, &value));
        }
        Ok(value)
    }

    /// `POST /sandboxes`; returns the new sandbox.
    pub fn create(&self, body: Value) -> anyhow::Result<Value> {
        self.call(reqwest::Method::POST, "/sandboxes", Some(body))
    }

    /// `GET /sandboxes`.
    pub fn list(&self) -> anyhow::Result<Vec<Value>> {
        let listed = self.call(reqwest::Method::GET, "/sandboxes", None)?;
        Ok(listed["sandboxes"].as_array().cloned().unwrap_or_default())
    }

    /// `DELETE /sandboxes/{id}`.
    pub fn delete(&self, id: &str) -> anyhow::Result<()> {
        self.call(reqwest::Method::DELETE, &format!("/sandboxes/{id}"), None).map(|_| ())
    }

    /// `POST /sandboxes/{id}/pause` or `/resume` (`action`); returns the sandbox.
    pub fn pause_or_resume(&self, id: &str, action: &str) -> anyhow::Result<Value> {
        let url = self.endpoint(&["sandboxes", id, action], &[])?;
        self.call_url(reqwest::Method::POST, url, None)
    }

    /// `POST /sandboxes/{id}/exec` with `argv`; returns the result.
    pub fn exec(&self, id: &str, argv: &[String], timeout_seconds: Option<f64>) -> anyhow::Result<Value> {
        let mut body = json!({ "argv": argv });
        if let Some(timeout) = timeout_seconds {
            body["timeout_seconds"] = json!(timeout);
        }
        self.call(reqwest::Method::POST, &format!("/sandboxes/{id}/exec"), Some(body))
    }
}

/// A body as JSON when it is JSON, else as the text it is (a proxy's HTML error page, say).
fn parse_body(text: String) -> Value {
    if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    }
}

/// What a failed call says: the status and the envelope's `error.message`, else the whole body.
fn failure(status: StatusCode, body: &Value) -> String {
    let message = body["error"]["message"].as_str().map(str::to_string).unwrap_or_else(|| body.to_string());
    format!("{status}: {message}")
}
