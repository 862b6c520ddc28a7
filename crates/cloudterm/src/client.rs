//! Client commands (`cloudterm sandbox …`, `cloudterm exec …`): a thin HTTP client of a
//! running server, configured by `CLOUDTERM_URL` and `CLOUDTERM_TOKEN`.

use anyhow::{bail, Context};
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

    fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let mut request = self.http.request(method, format!("{}{path}", self.url)).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().with_context(|| format!("cannot reach {}", self.url))?;
        let status = response.status();
        let text = response.text()?;
        let value: Value =
            if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        if !status.is_success() {
            let message = value["error"]["message"].as_str().map(str::to_string).unwrap_or_else(|| value.to_string());
            bail!("{status}: {message}");
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

    /// `POST /sandboxes/{id}/exec` with `argv`; returns the result.
    pub fn exec(&self, id: &str, argv: &[String], timeout_seconds: Option<f64>) -> anyhow::Result<Value> {
        let mut body = json!({ "argv": argv });
        if let Some(timeout) = timeout_seconds {
            body["timeout_seconds"] = json!(timeout);
        }
        self.call(reqwest::Method::POST, &format!("/sandboxes/{id}/exec"), Some(body))
    }
}
