//! The Sandbox API end to end, on the real server with the real agent (process runtime here;
//! the isolation suite runs the linux runtime).

use std::time::{Duration, Instant};

use cloudterm_test_support::{freezer_state, sandbox_leftovers, sandbox_processes, TestServer};
use serde_json::{json, Value};

/// A client for one principal.
pub struct Api {
    pub base: String,
    pub token: String,
    client: reqwest::Client,
}

impl Api {
    pub fn new(server: &TestServer, principal: &str) -> Api {
        Api { base: server.url(""), token: server.token(principal), client: reqwest::Client::new() }
    }

    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut request = self.client.request(method, format!("{}{path}", self.base)).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub async fn create(&self, body: Value) -> Value {
        let (status, sandbox) = self.call("POST", "/sandboxes", Some(body)).await;
        assert_eq!(status, 201, "create: {sandbox}");
        sandbox
    }

    pub async fn exec(&self, id: &str, body: Value) -> Value {
        let (status, result) = self.call("POST", &format!("/sandboxes/{id}/exec"), Some(body)).await;
        assert_eq!(status, 200, "exec: {result}");
        result
    }

    pub async fn sh(&self, id: &str, command: &str) -> Value {
        self.exec(id, json!({ "command": command })).await
    }

    /// GET a raw body as bytes.
    pub async fn bytes(&self, path: &str) -> Vec<u8> {
        self.raw(reqwest::Method::GET, path).send().await.expect("get").bytes().await.expect("bytes").to_vec()
    }

    /// GET a raw (non-JSON) body as text.
    pub async fn text(&self, path: &str) -> String {
        self.raw(reqwest::Method::GET, path).send().await.expect("get").text().await.expect("text")
    }

    pub fn raw(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client.request(method, format!("{}{path}", self.base)).bearer_auth(&self.token)
    }
}

fn id_of(sandbox: &Value) -> String {
    sandbox["id"].as_str().expect("id").to_string()
}

async fn eventually(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what} did not happen within {timeout:?}");
}

async fn create_exec_list_delete_and_nothing_is_left(runtime: &str) {
    let Some(server) = TestServer::start_runtime(runtime, |_| {}).await else { return };
    let alice = Api::new(&server, "alice");
    let sandbox = alice.create(json!({"metadata": {"purpose": "test"}})).await;
    assert_eq!(sandbox["state"], "running");
    assert_eq!(sandbox["runtime"], runtime);
    assert!(sandbox["id"].as_str().is_some_and(|id| id.starts_with("sbx_")));
    assert_eq!(sandbox["metadata"]["purpose"], "test");
    assert_eq!(sandbox["timeout_seconds"], 900);
    let id = id_of(&sandbox);

    let result = alice.sh(&id, "echo hello; echo oops >&2; exit 3").await;
    assert_eq!(
        (result["exit_code"].as_i64(), result["stdout"].as_str(), result["stderr"].as_str()),
        (Some(3), Some("hello\n"), Some("oops\n"))
    );

    let (status, listed) = alice.call("GET", "/sandboxes", None).await;
    assert_eq!(status, 200);
    assert_eq!(listed["sandboxes"].as_array().map(Vec::len), Some(1));
    assert_eq!(listed["sandboxes"][0]["created_at"], sandbox["created_at"], "the same time on create and read");

    // The sandbox is real processes on this host; find them to prove they go away.
    alice.call("POST", &format!("/sandboxes/{id}/background"), Some(json!({"command": "sleep 600"}))).await;
    assert!(!sandbox_processes(&id).is_empty(), "no process found for {id}");
    let (status, _) = alice.call("DELETE", &format!("/sandboxes/{id}"), None).await;
    assert_eq!(status, 204);
    assert_eq!(sandbox_leftovers(&id), Vec::<String>::new(), "DELETE left something behind");
    assert!(!server.data_dir().join("sandboxes").join(&id).exists(), "state dir left behind");
    let (status, body) = alice.call("GET", &format!("/sandboxes/{id}"), None).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "not_found");
}

async fn another_principal_gets_404_on_every_route(runtime: &str) {
    let Some(server) = TestServer::start_runtime(runtime, |_| {}).await else { return };
    let alice = Api::new(&server, "alice");
    let mallory = Api::new(&server, "mallory");
    let id = id_of(&alice.create(json!({})).await);
    let routes: Vec<(&str, String, Option<Value>)> = vec![
        ("GET", format!("/sandboxes/{id}"), None),
        ("POST", format!("/sandboxes/{id}/exec"), Some(json!({"command": "id"}))),
        ("POST", format!("/sandboxes/{id}/files"), Some(json!({"path": "x", "content": "pwned"}))),
        ("GET", format!("/sandboxes/{id}/files?path=."), None),
        ("GET", format!("/sandboxes/{id}/files/x"), None),
        ("POST", format!("/sandboxes/{id}/keepalive"), Some(json!({}))),
        ("POST", format!("/sandboxes/{id}/mount"), Some(json!({"host_path": "/tmp", "target": "/mnt/x"}))),
        ("POST", format!("/sandboxes/{id}/background"), Some(json!({"command": "sleep 1"}))),
        ("GET", format!("/sandboxes/{id}/background"), None),
        ("GET", format!("/sandboxes/{id}/background/job_x/logs"), None),
        ("DELETE", format!("/sandboxes/{id}/background/job_x"), None),
        ("DELETE", format!("/sandboxes/{id}"), None),
    ];
    for (method, path, body) in routes {
        let (status, answer) = mallory.call(method, &path, body).await;
        assert_eq!(status, 404, "{method} {path}: {answer}");
        assert_eq!(answer["error"]["code"], "not_found");
    }
    let (status, listed) = mallory.call("GET", "/sandboxes", None).await;
    assert_eq!((status, listed["sandboxes"].as_array().map(Vec::len)), (200, Some(0)));
    // Alice's sandbox is untouched.
    let result = alice.sh(&id, "test -e x && echo exists || echo absent").await;
    assert_eq!(result["stdout"], "absent\n");
}

async fn exec_runs_argv_cwd_env_stdin_and_kills_on_timeout(runtime: &str) {
    let Some(server) = TestServer::start_runtime(runtime, |_| {}).await else { return };
    let api = Api::new(&server, "alice");
    let id = id_of(&api.create(json!({"env": {"GREETING": "hi"}})).await);
    let result = api.exec(&id, json!({"argv": ["printf", "%s-%s", "a b", "c"]})).await;
    assert_eq!(result["stdout"], "a b-c");
    let result = api.exec(&id, json!({"command": "mkdir -p sub && cd sub && pwd"})).await;
    let workspace = result["stdout"].as_str().expect("pwd").trim().trim_end_matches("/sub").to_string();
    let result = api.exec(&id, json!({"command": "pwd", "cwd": "sub"})).await;
    assert_eq!(result["stdout"].as_str().map(str::trim), Some(format!("{workspace}/sub").as_str()));
    let result = api.exec(&id, json!({"command": "echo $GREETING $EXTRA", "env": {"EXTRA": "there"}})).await;
    assert_eq!(result["stdout"], "hi there\n");
    let result = api.exec(&id, json!({"command": "tr a-z A-Z", "stdin": "shout"})).await;
    assert_eq!(result["stdout"], "SHOUT");

    let started = Instant::now();
    let result = api.exec(&id, json!({"command": "sleep 30 & setsid sleep 31 & sleep 32", "timeout_seconds": 1})).await;
    assert_eq!(result["timed_out"], true, "{result}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let survivors = api.sh(&id, "ps -eo args | grep -c '^sleep 3[012]$' || true").await;
    assert_eq!(survivors["stdout"].as_str().map(str::trim), Some("0"), "the timed-out tree survived");

    let result = api.exec(&id, json!({"command": "head -c 5000000 /dev/zero | tr '\\0' x"})).await;
    assert_eq!(result["stdout_truncated"], true);
    assert!(result["stdout"].as_str().expect("stdout").len() <= 1024 * 1024);
}

async fn exec_streams_server_sent_events(runtime: &str) {
    let Some(server) = TestServer::start_runtime(runtime, |_| {}).await else { return };
    let api = Api::new(&server, "alice");
    let id = id_of(&api.create(json!({})).await);
    let response = api
        .raw(reqwest::Method::POST, &format!("/sandboxes/{id}/exec"))
        .header("accept", "text/event-stream")
        .json(&json!({"command": "echo one; echo two >&2; echo three; exit 7"}))
        .send()
        .await
        .expect("sse");
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().expect("ascii").starts_with("text/event-stream"));
    let text = response.text().await.expect("events");
    let mut events: Vec<(String, String)> = Vec::new();
    for block in text.split("\n\n").filter(|b| !b.trim().is_empty()) {
        let mut name = String::new();
        let mut data = Vec::new();
        for line in block.lines() {
            if let Some(value) = line.strip_prefix("event:") {
                name = value.trim().to_string();
            } else if let Some(value) = line.strip_prefix("data:") {
                data.push(value.strip_prefix(' ').unwrap_or(value).to_string());
            }
        }
        if !name.is_empty() {
            events.push((name, data.join("\n")));
        }
    }
    let stdout: String = events.iter().filter(|(n, _)| n == "stdout").map(|(_, d)| d.as_str()).collect();
    assert_eq!(stdout.replace('\n', ""), "onethree");
    assert!(events.iter().any(|(n, d)| n == "stderr" && d.contains("two")));
    let (last, data) = events.last().expect("events");
    assert_eq!(last, "exit");
    let exit: Value = serde_json::from_str(data).expect("exit json");
    assert_eq!(exit["exit_code"], 7);
}

async fn files_round_trip_streamed_and_paths_stay_inside(runtime: &str) {
    let Some(server) = TestServer::start_runtime(runtime, |_| {}).await else { return };
    let api = Api::new(&server, "alice");
    let id = id_of(&api.create(json!({})).await);

    let (status, written) = api
        .call("POST", &format!("/sandboxes/{id}/files"), Some(json!({"path": "notes/a.txt", "content": "hello"})))
        .await;
    assert_eq!(status, 201, "{written}");
    assert_eq!(written["size"], 5);
    let text = api.text(&format!("/sandboxes/{id}/files/notes/a.txt")).await;
    assert_eq!(text, "hello");
    let (status, _) = api
        .call("POST", &format!("/sandboxes/{id}/files"), Some(json!({"path": "bin.dat", "content_base64": "AAEC/w=="})))
        .await;
    assert_eq!(status, 201);
    let bytes = api.bytes(&format!("/sandboxes/{id}/files/bin.dat")).await;
    assert_eq!(bytes, [0u8, 1, 2, 255]);

    // 24 MiB up and down, streamed, byte-identical.
    let big: Vec<u8> = (0..24 * 1024 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let response = api
        .raw(reqwest::Method::PUT, &format!("/sandboxes/{id}/files/big/blob.bin"))
        .body(big.clone())
        .send()
        .await
        .expect("put");
    assert_eq!(response.status(), 201);
    let back = api.bytes(&format!("/sandboxes/{id}/files/big/blob.bin")).await;
    assert!(back == big, "downloaded bytes differ");

    let (status, listing) = api.call("GET", &format!("/sandboxes/{id}/files?path=notes"), None).await;
    assert_eq!(status, 200);
    assert_eq!(listing["entries"][0]["name"], "a.txt");
    assert_eq!(listing["entries"][0]["type"], "file");

    let (status, body) = api.call("GET", &format!("/sandboxes/{id}/files/missing.txt"), None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_found")));
    let (status, _) = api
        .call(
            "POST",
            &format!("/sandboxes/{id}/files"),
            Some(json!({"path": "x", "content": "a", "content_base64": "YQ=="})),
        )
        .await;
    assert_eq!(status, 422);
    let (status, _) =
        api.call("POST", &format!("/sandboxes/{id}/files"), Some(json!({"path": "x", "content_base64": "%%%"}))).await;
    assert_eq!(status, 422);
}

async fn background_jobs_outlive_their_request(runtime: &str) {
    let Some(server) = TestServer::start_runtime(runtime, |_| {}).await else { return };
    let api = Api::new(&server, "alice");
    let id = id_of(&api.create(json!({})).await);
    let (status, job) = api
        .call(
            "POST",
            &format!("/sandboxes/{id}/background"),
            Some(json!({"command": "for i in 1 2 3; do echo tick $i; sleep 0.2; done"})),
        )
        .await;
    assert_eq!(status, 201, "{job}");
    assert_eq!(job["state"], "running");
    let job_id = job["job_id"].as_str().expect("job id").to_string();
    let followed = api.text(&format!("/sandboxes/{id}/background/{job_id}/logs?follow=true")).await;
    assert_eq!(followed, "tick 1\ntick 2\ntick 3\n");
    let (_, jobs) = api.call("GET", &format!("/sandboxes/{id}/background"), None).await;
    assert_eq!(jobs["jobs"][0]["state"], "exited");
    assert_eq!(jobs["jobs"][0]["exit_code"], 0);

    let (_, sleeper) =
        api.call("POST", &format!("/sandboxes/{id}/background"), Some(json!({"argv": ["sleep", "300"]}))).await;
    let sleeper_id = sleeper["job_id"].as_str().expect("job id");
    let (status, _) = api.call("DELETE", &format!("/sandboxes/{id}/background/{sleeper_id}"), None).await;
    assert_eq!(status, 204);
    let (_, jobs) = api.call("GET", &format!("/sandboxes/{id}/background"), None).await;
    let stopped =
        jobs["jobs"].as_array().expect("jobs").iter().find(|j| j["job_id"] == sleeper_id).cloned().expect("job");
    assert_eq!(stopped["state"], "stopped");
    let (status, _) = api.call("GET", &format!("/sandboxes/{id}/background/job_nope/logs"), None).await;
    assert_eq!(status, 404);
}

async fn idle_sandboxes_stop_and_keepalive_holds_them(runtime: &str) {
    let Some(server) = TestServer::start_runtime(runtime, |_| {}).await else { return };
    let api = Api::new(&server, "alice");
    let idle = id_of(&api.create(json!({"timeout_seconds": 2})).await);
    let kept = id_of(&api.create(json!({"timeout_seconds": 2})).await);
    assert!(!sandbox_processes(&idle).is_empty());
    let (status, keepalive) =
        api.call("POST", &format!("/sandboxes/{kept}/keepalive"), Some(json!({"timeout_seconds": 60}))).await;
    assert_eq!(status, 200, "{keepalive}");
    eventually("the idle stop", Duration::from_secs(15), async || {
        api.call("GET", &format!("/sandboxes/{idle}"), None).await.1["state"] == "stopped"
    })
    .await;
    assert_eq!(sandbox_leftovers(&idle), Vec::<String>::new(), "the idle stop left something behind");
    let (status, body) = api.call("POST", &format!("/sandboxes/{idle}/exec"), Some(json!({"command": "true"}))).await;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("conflict")));
    let (_, kept_now) = api.call("GET", &format!("/sandboxes/{kept}"), None).await;
    assert_eq!(kept_now["state"], "running");
    assert_eq!(api.sh(&kept, "echo alive").await["stdout"], "alive\n");
}

async fn bad_input_gets_4xx_with_the_envelope(runtime: &str) {
    let Some(server) = TestServer::start_runtime(runtime, |_| {}).await else { return };
    let api = Api::new(&server, "alice");
    let cases: Vec<(&str, Value, u16)> = vec![
        ("negative memory", json!({"limits": {"memory_mb": -5}}), 422),
        ("absurd memory", json!({"limits": {"memory_mb": 999_999_999u64}}), 422),
        ("zero cpus", json!({"limits": {"cpus": 0}}), 422),
        ("tiny pids", json!({"limits": {"pids": 1}}), 422),
        ("zero timeout", json!({"timeout_seconds": 0}), 422),
        ("huge timeout", json!({"timeout_seconds": 10_000_000}), 422),
        ("unknown field", json!({"memory": 5}), 422),
        ("bad env name", json!({"env": {"A=B": "x"}}), 422),
        ("unknown image", json!({"image": "nope"}), 422),
        ("unknown workspace", json!({"workspace_id": "ws_doesnotexist"}), 404),
    ];
    for (case, body, expected) in cases {
        let (status, answer) = api.call("POST", "/sandboxes", Some(body)).await;
        assert_eq!(status, expected, "{case}: {answer}");
        assert!(answer["error"]["code"].is_string(), "{case}: {answer}");
    }
    let response = api
        .raw(reqwest::Method::POST, "/sandboxes")
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), 400);
    let id = id_of(&api.create(json!({})).await);
    for (case, body) in [
        ("no command", json!({})),
        ("empty command", json!({"command": ""})),
        ("both", json!({"command": "ls", "argv": ["ls"]})),
        ("empty argv", json!({"argv": []})),
        ("negative timeout", json!({"command": "ls", "timeout_seconds": -1})),
    ] {
        let (status, answer) = api.call("POST", &format!("/sandboxes/{id}/exec"), Some(body)).await;
        assert_eq!(status, 422, "{case}: {answer}");
    }
    let (status, _) = api.call("POST", "/sandboxes/sbx_unknown/exec", Some(json!({"command": "ls"}))).await;
    assert_eq!(status, 404);
    let (status, _) = api
        .call("POST", &format!("/sandboxes/{id}/mount"), Some(json!({"host_path": "/etc", "target": "/mnt/etc"})))
        .await;
    assert_eq!(status, 403, "no host path is allowed by default");
    // The sandbox is still healthy after all of that.
    assert_eq!(api.sh(&id, "echo ok").await["stdout"], "ok\n");
}

async fn the_running_sandbox_quota_answers_429(runtime: &str) {
    let Some(server) = TestServer::start_runtime(runtime, |config| config.quotas.max_sandboxes = 2).await else {
        return;
    };
    let api = Api::new(&server, "alice");
    let first = id_of(&api.create(json!({})).await);
    api.create(json!({})).await;
    let response = api.raw(reqwest::Method::POST, "/sandboxes").json(&json!({})).send().await.expect("post");
    assert_eq!(response.status(), 429);
    assert!(response.headers().contains_key("retry-after"));
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "quota_exceeded");
    let (_, me) = api.call("GET", "/me", None).await;
    assert_eq!(me["quota"][0], json!({"kind": "sandboxes", "used": 2, "limit": 2}));
    // Another principal has its own quota; freeing one lets alice create again.
    Api::new(&server, "bob").create(json!({})).await;
    assert_eq!(api.call("DELETE", &format!("/sandboxes/{first}"), None).await.0, 204);
    api.create(json!({})).await;
}

async fn the_token_never_enters_the_sandbox(runtime: &str) {
    let Some(server) = TestServer::start_runtime(runtime, |_| {}).await else { return };
    let api = Api::new(&server, "alice");
    let id = id_of(&api.create(json!({"env": {"VISIBLE": "yes"}})).await);
    let env = api.sh(&id, "env").await["stdout"].as_str().expect("env").to_string();
    assert!(env.contains("VISIBLE=yes"));
    let signature = api.token.rsplit('.').next().expect("signature");
    assert!(!env.contains(signature) && !env.contains("eyJ"), "a token reached the environment");
    let pids = sandbox_processes(&id);
    assert!(!pids.is_empty());
    for pid in pids {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        assert!(!String::from_utf8_lossy(&cmdline).contains("eyJ"), "a token in a sandbox process's arguments");
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        assert!(!String::from_utf8_lossy(&environ).contains("eyJ"), "a token in a sandbox process's environment");
    }
    // Nor any file where a sandbox keeps things: its workspace, and in a linux sandbox its
    // own /tmp and /etc too (in the process runtime those are the host's).
    let places = if runtime == "linux" { "\"$HOME\" /tmp /etc" } else { "\"$HOME\"" };
    let found = api.sh(&id, &format!("grep -rls '{signature}' {places} 2>/dev/null | head -5")).await;
    assert_eq!(found["stdout"], "", "the token is in a file inside the sandbox");
}

async fn sandboxes_survive_a_server_restart(runtime: &str) {
    let Some(server) = TestServer::start_runtime(runtime, |_| {}).await else { return };
    let api = Api::new(&server, "alice");
    let id = id_of(&api.create(json!({})).await);
    let doomed = id_of(&api.create(json!({})).await);
    api.sh(&id, "echo kept > state.txt").await;
    let doomed_pids = sandbox_processes(&doomed);
    assert!(!doomed_pids.is_empty());
    let token = api.token.clone();
    let data_dir = server.stop().await;
    // While the server is down, one sandbox dies.
    for pid in doomed_pids {
        let _ = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
    let kind = runtime.to_string();
    let server = TestServer::restart_on(data_dir, move |config| config.runtime.kind = kind).await;
    let api = Api { base: server.url(""), token, client: reqwest::Client::new() };
    let (_, sandbox) = api.call("GET", &format!("/sandboxes/{id}"), None).await;
    assert_eq!(sandbox["state"], "running");
    assert_eq!(api.sh(&id, "cat state.txt").await["stdout"], "kept\n");
    let (_, gone) = api.call("GET", &format!("/sandboxes/{doomed}"), None).await;
    assert_eq!(gone["state"], "stopped", "a dead sandbox is reported, never a silent zombie");
    assert_eq!(sandbox_leftovers(&doomed), Vec::<String>::new(), "a dead sandbox's remains were not cleaned up");
    let (_, me) = api.call("GET", "/me", None).await;
    assert_eq!(me["quota"][0]["used"], 1);
}

async fn long_execs_are_not_cut_by_the_request_timeout(runtime: &str) {
    let Some(server) = TestServer::start_runtime(runtime, |config| config.http.request_timeout_seconds = 1).await
    else {
        return;
    };
    let api = Api::new(&server, "alice");
    let id = id_of(&api.create(json!({})).await);
    let result = api.exec(&id, json!({"command": "sleep 2; echo done", "timeout_seconds": 10})).await;
    assert_eq!((result["stdout"].as_str(), result["timed_out"].as_bool()), (Some("done\n"), Some(false)));
    // Other routes keep the request timeout (answered quickly here).
    assert_eq!(api.call("GET", &format!("/sandboxes/{id}"), None).await.0, 200);
}

/// The first file called `name` below `dir`.
fn find_file(dir: &std::path::Path, name: &str) -> Option<std::path::PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if entry.file_name() == name {
            return Some(path);
        }
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            if let Some(found) = find_file(&path, name) {
                return Some(found);
            }
        }
    }
    None
}

/// A sandbox whose boundary ends on its own (its agent here; a VM's death on the firecracker
/// runtime, whose report the runtime's own tests check) is recorded failed at once: `GET`
/// says so without any call having tried to reach it, and it no longer counts as running.
#[tokio::test]
async fn a_sandbox_that_ends_on_its_own_is_recorded_failed_without_a_call() {
    let server = TestServer::start().await;
    let api = Api::new(&server, "alice");
    let id = id_of(&api.create(json!({})).await);
    let pid_file = find_file(&server.data_dir().join("sandboxes").join(&id), "agent.pid").expect("agent.pid");
    let pid = std::fs::read_to_string(&pid_file).expect("pid").trim().to_string();
    let killed = std::process::Command::new("kill").args(["-KILL", &pid]).status().expect("kill");
    assert!(killed.success(), "kill the agent {pid}");
    eventually("the sandbox recorded failed", Duration::from_secs(5), async || {
        let (status, sandbox) = api.call("GET", &format!("/sandboxes/{id}"), None).await;
        status == 200 && sandbox["state"] == "failed"
    })
    .await;
    assert!(!server.state().sandboxes.running_ids().contains(&id), "out of the live registry");
    assert!(!server.data_dir().join("sandboxes").join(&id).exists(), "its state is removed");
    let (status, body) = api.call("POST", &format!("/sandboxes/{id}/exec"), Some(json!({"command": "true"}))).await;
    assert_eq!(status, 409, "{body}");
}

async fn pause_freezes_resume_and_the_next_exec_thaw(runtime: &str) {
    let Some(server) = TestServer::start_runtime(runtime, |_| {}).await else { return };
    let api = Api::new(&server, "alice");
    let id = id_of(&api.create(json!({})).await);
    let (status, stranger) = Api::new(&server, "mallory").call("POST", &format!("/sandboxes/{id}/pause"), None).await;
    assert_eq!(status, 404, "a stranger cannot pause: {stranger}");
    if runtime == "process" {
        let (status, body) = api.call("POST", &format!("/sandboxes/{id}/pause"), None).await;
        assert_eq!((status, body["error"]["code"].as_str()), (409, Some("conflict")), "{body}");
        assert!(body["error"]["message"].as_str().unwrap_or_default().contains("pause"), "{body}");
        assert_eq!(api.sh(&id, "echo still").await["stdout"], "still\n");
        return;
    }
    let (status, job) = api
        .call(
            "POST",
            &format!("/sandboxes/{id}/background"),
            Some(json!({"command": "i=0; while true; do i=$((i+1)); echo $i > /workspace/tick; sleep 0.05; done"})),
        )
        .await;
    assert_eq!(status, 201, "{job}");
    let mut tick = None;
    eventually("the ticker writes", Duration::from_secs(10), async || {
        tick = find_file(server.data_dir(), "tick");
        tick.is_some()
    })
    .await;
    let tick = tick.expect("tick file");
    let read_tick = || std::fs::read_to_string(&tick).unwrap_or_default();

    let (status, paused) = api.call("POST", &format!("/sandboxes/{id}/pause"), None).await;
    assert_eq!((status, paused["state"].as_str()), (200, Some("paused")), "{paused}");
    assert_eq!(freezer_state(&id).as_deref(), Some("FROZEN"));
    let frozen_at = read_tick();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(read_tick(), frozen_at, "a paused sandbox runs nothing");
    assert_eq!(api.call("GET", &format!("/sandboxes/{id}"), None).await.1["state"], "paused");
    let (status, again) = api.call("POST", &format!("/sandboxes/{id}/pause"), None).await;
    assert_eq!((status, again["state"].as_str()), (200, Some("paused")), "pausing twice is no error: {again}");

    let (status, resumed) = api.call("POST", &format!("/sandboxes/{id}/resume"), None).await;
    assert_eq!((status, resumed["state"].as_str()), (200, Some("running")), "{resumed}");
    assert_eq!(freezer_state(&id).as_deref(), Some("THAWED"));
    eventually("the ticker runs again", Duration::from_secs(5), async || read_tick() != frozen_at).await;

    // A paused sandbox answers the next command: it resumes first.
    assert_eq!(api.call("POST", &format!("/sandboxes/{id}/pause"), None).await.0, 200);
    assert_eq!(api.sh(&id, "echo awake").await["stdout"], "awake\n");
    assert_eq!(api.call("GET", &format!("/sandboxes/{id}"), None).await.1["state"], "running");

    // Paused across a server restart: still paused after, and a command still wakes it.
    assert_eq!(api.call("POST", &format!("/sandboxes/{id}/pause"), None).await.0, 200);
    let token = api.token.clone();
    let data_dir = server.stop().await;
    let kind = runtime.to_string();
    let server = TestServer::restart_on(data_dir, move |config| config.runtime.kind = kind).await;
    let api = Api { base: server.url(""), token, client: reqwest::Client::new() };
    assert_eq!(api.call("GET", &format!("/sandboxes/{id}"), None).await.1["state"], "paused");
    assert_eq!(freezer_state(&id).as_deref(), Some("FROZEN"));
    assert_eq!(api.sh(&id, "echo after-restart").await["stdout"], "after-restart\n");

    // Deleting a paused sandbox leaves nothing behind.
    assert_eq!(api.call("POST", &format!("/sandboxes/{id}/pause"), None).await.0, 200);
    assert_eq!(api.call("DELETE", &format!("/sandboxes/{id}"), None).await.0, 204);
    assert_eq!(sandbox_leftovers(&id), Vec::<String>::new());
}

async fn an_idle_pause_holds_sandboxes_paused_before_the_stop(runtime: &str) {
    let Some(server) = TestServer::start_runtime(runtime, |config| config.sandboxes.idle_pause_seconds = 3).await
    else {
        return;
    };
    let api = Api::new(&server, "alice");
    let id = id_of(&api.create(json!({"timeout_seconds": 1})).await);
    let state = async || api.call("GET", &format!("/sandboxes/{id}"), None).await.1["state"].clone();
    if runtime == "process" {
        // It cannot pause: it stops at once, as without the setting.
        eventually("the idle stop", Duration::from_secs(15), async || state().await == "stopped").await;
        return;
    }
    eventually("the idle pause", Duration::from_secs(10), async || state().await == "paused").await;
    assert_eq!(freezer_state(&id).as_deref(), Some("FROZEN"));
    assert_eq!(api.sh(&id, "echo woke").await["stdout"], "woke\n", "a command wakes an idle-paused sandbox");
    assert_eq!(state().await, "running");
    // Its own one-second TTL counts again from the wake-up, then the three-second pause.
    eventually("the second idle pause", Duration::from_secs(10), async || state().await == "paused").await;
    let paused_at = Instant::now();
    eventually("the stop after the pause", Duration::from_secs(15), async || state().await == "stopped").await;
    assert!(paused_at.elapsed() >= Duration::from_secs(2), "stopped {:?} after the pause began", paused_at.elapsed());
    assert_eq!(sandbox_leftovers(&id), Vec::<String>::new());
}

on_every_runtime!(
    an_idle_pause_holds_sandboxes_paused_before_the_stop,
    pause_freezes_resume_and_the_next_exec_thaw,
    long_execs_are_not_cut_by_the_request_timeout,
    create_exec_list_delete_and_nothing_is_left,
    another_principal_gets_404_on_every_route,
    exec_runs_argv_cwd_env_stdin_and_kills_on_timeout,
    exec_streams_server_sent_events,
    files_round_trip_streamed_and_paths_stay_inside,
    background_jobs_outlive_their_request,
    idle_sandboxes_stop_and_keepalive_holds_them,
    bad_input_gets_4xx_with_the_envelope,
    the_running_sandbox_quota_answers_429,
    the_token_never_enters_the_sandbox,
    sandboxes_survive_a_server_restart
);
