//! The Agent Workspace API end to end: workspaces, the permission matrix (every route that
//! touches a workspace or its sandbox × owner, admin, writer, reader, stranger), sharing and
//! its audit trail, exec delegation (started on demand, from the newest snapshot), and the
//! worker marketplace.

use cloudterm_test_support::TestServer;
use serde_json::{json, Value};

use crate::previews::{client as previews_client, free_port, json_of, path_of, register, start_app, APP};
use crate::sandboxes::Api;

/// How much of a quota the principal uses, from `GET /me`.
async fn quota_used(api: &Api, kind: &str) -> u64 {
    let (status, me) = api.call("GET", "/me", None).await;
    assert_eq!(status, 200, "{me}");
    me["quota"]
        .as_array()
        .and_then(|quota| quota.iter().find(|entry| entry["kind"] == kind))
        .and_then(|entry| entry["used"].as_u64())
        .unwrap_or_else(|| panic!("no {kind} quota in {me}"))
}

fn id_of(value: &Value, field: &str) -> String {
    value[field].as_str().unwrap_or_else(|| panic!("no {field} in {value}")).to_string()
}

/// The five roles of the matrix, in the order of each row's expected statuses.
const ROLES: [&str; 5] = ["alice", "adam", "wendy", "rita", "sam"];

struct Crew {
    alice: Api,
}

impl Crew {
    fn api(server: &TestServer, who: &str) -> Api {
        Api::new(server, who)
    }

    /// Alice's workspace `name`, shared with adam (admin), wendy (write) and rita (read).
    async fn shared_workspace(&self, name: &str) -> String {
        let (status, ws) = self.alice.call("POST", "/workspaces", Some(json!({"name": name, "tags": ["team"]}))).await;
        assert_eq!(status, 201, "{ws}");
        let id = id_of(&ws, "id");
        for (agent, permission) in [("adam", "admin"), ("wendy", "write"), ("rita", "read")] {
            let body = json!({"agent_id": agent, "permission": permission});
            let (status, answer) = self.alice.call("POST", &format!("/workspaces/{id}/share"), Some(body)).await;
            assert_eq!(status, 200, "{answer}");
        }
        id
    }

    async fn sandbox_on(&self, workspace: &str) -> String {
        id_of(&self.alice.create(json!({"workspace_id": workspace})).await, "id")
    }

    async fn snapshot_of(&self, workspace: &str) -> String {
        let (status, snap) =
            self.alice.call("POST", "/snapshot/create", Some(json!({"workspace_id": workspace}))).await;
        assert_eq!(status, 201, "{snap}");
        id_of(&snap, "snapshot_id")
    }
}

/// A request of the matrix: method, path, JSON body (or a raw body), expected statuses.
struct Row {
    method: &'static str,
    path: String,
    body: Body,
    expected: [u16; 5],
}

enum Body {
    None,
    Json(Value),
    Raw(&'static [u8]),
}

fn row(method: &'static str, path: String, body: Body, expected: [u16; 5]) -> Row {
    Row { method, path, body, expected }
}

async fn send(api: &Api, row: &Row) -> (u16, Value) {
    match &row.body {
        Body::None => api.call(row.method, &row.path, None).await,
        Body::Json(body) => api.call(row.method, &row.path, Some(body.clone())).await,
        Body::Raw(bytes) => {
            let method = reqwest::Method::from_bytes(row.method.as_bytes()).expect("method");
            let response = api.raw(method, &row.path).body(bytes.to_vec()).send().await.expect("send");
            let status = response.status().as_u16();
            let text = response.text().await.expect("body");
            (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
        }
    }
}

/// Every route that touches a workspace, its sandbox or its snapshots, tried by each role. A
/// stranger gets 404 everywhere (the JSON envelope, `not_found`), a member below the needed
/// level 403 (`forbidden`), everyone else gets past the check. Rows run per role in order, so
/// a role's `share` comes before its `revoke`; destructive routes get a fresh target per role.
#[tokio::test]
async fn every_route_enforces_the_permission_matrix() {
    let allow = tempfile::tempdir().expect("mount dir");
    let allowed = allow.path().to_path_buf();
    let server = TestServer::start_with(move |config| {
        config.sandboxes.mount_allow = vec![allowed];
        config.quotas.max_sandboxes = 20;
    })
    .await;
    let crew = Crew { alice: Crew::api(&server, "alice") };
    let apis: Vec<Api> = ROLES.iter().map(|who| Crew::api(&server, who)).collect();
    let ws = crew.shared_workspace("matrix").await;
    let sbx = crew.sandbox_on(&ws).await;
    crew.alice.call("POST", &format!("/sandboxes/{sbx}/files"), Some(json!({"path": "a.txt", "content": "a"}))).await;
    let (status, job) =
        crew.alice.call("POST", &format!("/sandboxes/{sbx}/background"), Some(json!({"command": "echo hi"}))).await;
    assert_eq!(status, 201, "{job}");
    let job = id_of(&job, "job_id");
    let snap = crew.snapshot_of(&ws).await;
    // A second sandbox on the workspace, as a preview's fallback; and the preview that the
    // link and proxy rows use (nothing listens on its port).
    let fallback = crew.sandbox_on(&ws).await;
    let (status, preview) =
        crew.alice.call("POST", "/preview/register", Some(json!({"sandbox_id": sbx, "port": 8765}))).await;
    assert_eq!(status, 201, "{preview}");
    let (status, worker) = crew
        .alice
        .call(
            "POST",
            "/marketplace/publish",
            Some(json!({"name": "hello", "version": "1.0.0", "command": "echo hello from $CLOUDTERM_WORKER"})),
        )
        .await;
    assert_eq!(status, 201, "{worker}");
    let worker = id_of(&worker, "worker_id");

    let all = [200, 200, 200, 200, 404];
    let write = [200, 200, 200, 403, 404];
    let created = [201, 201, 201, 403, 404];
    let admin = [200, 200, 403, 403, 404];
    let rows = vec![
        // The workspace itself.
        row("GET", format!("/workspaces/{ws}"), Body::None, all),
        row("GET", format!("/workspaces/{ws}/collaborators"), Body::None, all),
        row("GET", format!("/workspaces/{ws}/audit"), Body::None, admin),
        row("POST", format!("/workspaces/{ws}/exec"), Body::Json(json!({"command": "true"})), write),
        row(
            "POST",
            format!("/workspaces/{ws}/share"),
            Body::Json(json!({"agent_id": "extra", "permission": "read"})),
            admin,
        ),
        row("DELETE", format!("/workspaces/{ws}/share/extra"), Body::None, [204, 204, 403, 403, 404]),
        row("POST", format!("/workspaces/{ws}/workers/{worker}/run"), Body::None, write),
        // Its sandbox.
        row("GET", format!("/sandboxes/{sbx}"), Body::None, all),
        row("POST", format!("/sandboxes/{sbx}/exec"), Body::Json(json!({"command": "true"})), write),
        row("POST", format!("/sandboxes/{sbx}/files"), Body::Json(json!({"path": "w.txt", "content": "w"})), created),
        row("PUT", format!("/sandboxes/{sbx}/files/raw.txt"), Body::Raw(b"raw"), created),
        row("GET", format!("/sandboxes/{sbx}/files?path=."), Body::None, all),
        row("GET", format!("/sandboxes/{sbx}/files/a.txt"), Body::None, all),
        row("POST", format!("/sandboxes/{sbx}/keepalive"), Body::Json(json!({})), write),
        // Past the check the process runtime cannot pause (409); resuming a running sandbox
        // changes nothing.
        row("POST", format!("/sandboxes/{sbx}/pause"), Body::None, [409, 409, 409, 403, 404]),
        row("POST", format!("/sandboxes/{sbx}/resume"), Body::None, write),
        // Past the permission check the process runtime cannot mount (409).
        row(
            "POST",
            format!("/sandboxes/{sbx}/mount"),
            Body::Json(json!({"host_path": allow.path(), "target": "/mnt/x"})),
            [409, 409, 409, 403, 404],
        ),
        row("POST", format!("/sandboxes/{sbx}/background"), Body::Json(json!({"command": "true"})), created),
        row("GET", format!("/sandboxes/{sbx}/background"), Body::None, all),
        row("GET", format!("/sandboxes/{sbx}/background/{job}/logs"), Body::None, all),
        row("DELETE", format!("/sandboxes/{sbx}/background/{job}"), Body::None, [204, 204, 204, 403, 404]),
        // The terminal: past the checks a plain GET is refused as not a WebSocket (400); a
        // reader may watch, not type.
        row("GET", format!("/sandboxes/{sbx}/terminal"), Body::None, [400, 400, 400, 400, 404]),
        row("GET", format!("/sandboxes/{sbx}/terminal?mode=write"), Body::None, [400, 400, 400, 403, 404]),
        // New sandboxes on the workspace, and from its snapshot (restored into it).
        row("POST", "/sandboxes".into(), Body::Json(json!({"workspace_id": ws})), created),
        row("POST", "/sandboxes".into(), Body::Json(json!({"snapshot_id": snap})), created),
        // Its snapshots.
        row("GET", format!("/snapshot/list?workspace_id={ws}"), Body::None, all),
        row("GET", format!("/snapshot/{snap}"), Body::None, all),
        row("GET", format!("/snapshot/{snap}/download"), Body::None, all),
        row("POST", format!("/snapshot/{snap}/pin"), Body::Json(json!({"pinned": true})), write),
        row("POST", "/snapshot/create".into(), Body::Json(json!({"workspace_id": ws})), created),
        row("POST", "/snapshot/create".into(), Body::Json(json!({"sandbox_id": sbx})), created),
        row("POST", "/snapshot/restore".into(), Body::Json(json!({"snapshot_id": snap})), write),
        row("POST", "/snapshot/restore".into(), Body::Json(json!({"snapshot_id": snap, "sandbox_id": sbx})), write),
        row("POST", "/snapshot/restore".into(), Body::Json(json!({"snapshot_id": snap, "workspace_id": ws})), write),
        // Past the check, a body that is not an archive is refused (422).
        row("POST", format!("/snapshot/import?workspace_id={ws}"), Body::Raw(b"not a tar"), [422, 422, 422, 403, 404]),
        // Previews of the workspace's sandbox: exposing a port is a write; members may reach a
        // private one with their token (nothing listens there: 502 past the check).
        row("POST", format!("/sandboxes/{sbx}/preview"), Body::Json(json!({"port": 8765})), write),
        row("POST", "/preview/register".into(), Body::Json(json!({"sandbox_id": sbx, "port": 8766})), created),
        row(
            "POST",
            "/preview/register".into(),
            Body::Json(json!({"sandbox_id": sbx, "port": 8767, "fallback_sandbox_id": fallback})),
            created,
        ),
        row("POST", "/preview/link".into(), Body::Json(json!({"sandbox_id": sbx, "port": 8765})), write),
        row("GET", format!("/preview/{sbx}/8765/"), Body::None, [502, 502, 502, 502, 404]),
        row("POST", format!("/preview/{sbx}/8765/deep/path?x=1"), Body::Json(json!({})), [502, 502, 502, 502, 404]),
        // The bare form answers 308 to the slash form for anyone (it reveals nothing); the
        // client follows it into the check.
        row("GET", format!("/preview/{sbx}/8765"), Body::None, [502, 502, 502, 502, 404]),
    ];
    let mut failures = Vec::new();
    for (role, api) in ROLES.iter().zip(&apis) {
        for (index, row) in rows.iter().enumerate() {
            let (status, body) = send(api, row).await;
            let expected = row.expected[index_of(role)];
            if status != expected {
                failures.push(format!("{role}: {} {} → {status}, expected {expected}: {body}", row.method, row.path));
            }
            let code = match status {
                403 => Some("forbidden"),
                404 => Some("not_found"),
                _ => None,
            };
            if let Some(code) = code {
                if body["error"]["code"] != code {
                    failures.push(format!("{role}: row {index}: {status} without the {code} envelope: {body}"));
                }
            }
        }
    }

    // Destructive routes, each role on a fresh target of its own.
    for (port, (role, api)) in (9001u16..).zip(ROLES.iter().zip(&apis)) {
        let expected = |statuses: [u16; 5]| statuses[index_of(role)];
        let key = json!({"sandbox_id": sbx, "port": port});
        let (status, body) = crew.alice.call("POST", "/preview/register", Some(key.clone())).await;
        assert_eq!(status, 201, "{body}");
        let (status, body) = api.call("POST", "/preview/unregister", Some(key.clone())).await;
        if status != expected([204, 204, 204, 403, 404]) {
            failures.push(format!("{role}: POST /preview/unregister → {status}: {body}"));
        }
        crew.alice.call("POST", "/preview/unregister", Some(key)).await;
        // A fallback is checked on its own: the role's own sandbox as the primary, the
        // workspace's as the fallback.
        let own = id_of(&api.create(json!({})).await, "id");
        let body = json!({"sandbox_id": own, "port": port, "fallback_sandbox_id": sbx});
        let (status, answer) = api.call("POST", "/preview/register", Some(body)).await;
        if status != expected(created) {
            failures.push(format!("{role}: POST /preview/register with the fallback → {status}: {answer}"));
        }
        api.call("DELETE", &format!("/sandboxes/{own}"), None).await;
        let fresh = crew.snapshot_of(&ws).await;
        let (status, body) = api.call("DELETE", &format!("/snapshot/{fresh}"), None).await;
        if status != expected([204, 204, 403, 403, 404]) {
            failures.push(format!("{role}: DELETE /snapshot/{{id}} → {status}: {body}"));
        }
        let fresh = crew.sandbox_on(&ws).await;
        let (status, body) = api.call("DELETE", &format!("/sandboxes/{fresh}"), None).await;
        if status != expected([204, 204, 204, 403, 404]) {
            failures.push(format!("{role}: DELETE /sandboxes/{{id}} → {status}: {body}"));
        }
        crew.alice.call("DELETE", &format!("/sandboxes/{fresh}"), None).await;
        let fresh = crew.shared_workspace(&format!("doomed-{role}")).await;
        let (status, body) = api.call("DELETE", &format!("/workspaces/{fresh}"), None).await;
        if status != expected([204, 204, 403, 403, 404]) {
            failures.push(format!("{role}: DELETE /workspaces/{{id}} → {status}: {body}"));
        }
    }
    for sandbox in [&sbx, &fallback] {
        crew.alice.call("DELETE", &format!("/sandboxes/{sandbox}"), None).await;
    }
    assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n"));
}

fn index_of(role: &str) -> usize {
    ROLES.iter().position(|r| *r == role).expect("role")
}

#[tokio::test]
async fn workspaces_are_created_listed_by_tag_and_shared_with_their_permission() {
    let server = TestServer::start().await;
    let alice = Api::new(&server, "alice");
    let bob = Api::new(&server, "bob");
    let (status, ml) = alice
        .call("POST", "/workspaces", Some(json!({"name": "ml", "tags": ["gpu", "team"], "description": "models"})))
        .await;
    assert_eq!(status, 201, "{ml}");
    assert_eq!((ml["owner"].as_str(), ml["permission"].as_str()), (Some("alice"), Some("owner")));
    assert!(ml["id"].as_str().is_some_and(|id| id.starts_with("ws_")));
    let created_at = ml["created_at"].clone();
    let ml = id_of(&ml, "id");
    let (status, _) = alice.call("POST", "/workspaces", Some(json!({"name": "web", "tags": ["team"]}))).await;
    assert_eq!(status, 201);
    let (status, dup) = alice.call("POST", "/workspaces", Some(json!({"name": "ml"}))).await;
    assert_eq!((status, dup["error"]["code"].as_str()), (409, Some("conflict")), "{dup}");

    let names = |list: &Value| -> Vec<String> {
        list["workspaces"].as_array().expect("list").iter().map(|w| id_of(w, "name")).collect()
    };
    let (_, all) = alice.call("GET", "/workspaces", None).await;
    assert_eq!(names(&all), ["home", "ml", "web"], "{all}");
    assert_eq!(all["workspaces"][0]["is_home"], true);
    let (_, gpu) = alice.call("GET", "/workspaces?tag=gpu", None).await;
    assert_eq!(names(&gpu), ["ml"]);

    // Bob sees Alice's workspace only once it is shared, and only with include_shared.
    let (status, _) = bob.call("GET", &format!("/workspaces/{ml}"), None).await;
    assert_eq!(status, 404);
    let grant = json!({"agent_id": "bob", "permission": "write"});
    let (status, granted) = alice.call("POST", &format!("/workspaces/{ml}/share"), Some(grant)).await;
    assert_eq!((status, granted), (200, json!({"agent_id": "bob", "permission": "write"})));
    let (_, own) = bob.call("GET", "/workspaces", None).await;
    assert_eq!(names(&own), ["home"]);
    let (_, shared) = bob.call("GET", "/workspaces?include_shared=true", None).await;
    assert_eq!(names(&shared), ["home", "ml"]);
    assert_eq!(shared["workspaces"][1]["permission"], "write");
    assert_eq!(shared["workspaces"][1]["owner"], "alice");
    let (_, shared_gpu) = bob.call("GET", "/workspaces?include_shared=true&tag=gpu", None).await;
    assert_eq!(names(&shared_gpu), ["ml"]);
    let (status, seen) = bob.call("GET", &format!("/workspaces/{ml}"), None).await;
    assert_eq!((status, seen["permission"].as_str()), (200, Some("write")));
    // Times are recorded at the store's precision: the create's answer and every read agree.
    assert_eq!(seen["created_at"], created_at, "{seen}");
    let (_, collaborators) = bob.call("GET", &format!("/workspaces/{ml}/collaborators"), None).await;
    assert_eq!(collaborators["owner"], "alice");
    assert_eq!(collaborators["collaborators"][0]["agent_id"], "bob");
    assert_eq!(collaborators["collaborators"][0]["granted_by"], "alice");

    // Bad input: the JSON envelope, never a 500.
    for (body, expected) in [
        (json!({"name": ""}), 422),
        (json!({"name": "a b"}), 422),
        (json!({"name": "../x"}), 422),
        (json!({"name": "ok", "tags": [""]}), 422),
        (json!({"name": "ok", "unknown": 1}), 422),
        (json!({"tags": []}), 422),
    ] {
        let (status, answer) = alice.call("POST", "/workspaces", Some(body.clone())).await;
        assert_eq!(status, expected, "{body}: {answer}");
        assert!(answer["error"]["message"].is_string(), "{answer}");
    }
    for (body, expected) in [
        (json!({"agent_id": "carol", "permission": "owner"}), 422),
        (json!({"agent_id": "carol", "permission": "superuser"}), 422),
        (json!({"agent_id": "", "permission": "read"}), 422),
        (json!({"agent_id": "alice", "permission": "read"}), 422),
        (json!({"agent_id": "carol"}), 422),
    ] {
        let (status, answer) = alice.call("POST", &format!("/workspaces/{ml}/share"), Some(body.clone())).await;
        assert_eq!(status, expected, "{body}: {answer}");
    }
    let (status, _) = alice.call("GET", "/workspaces?include_shared=maybe", None).await;
    assert_eq!(status, 400);
    let (status, _) = alice.call("GET", "/workspaces/ws_nope", None).await;
    assert_eq!(status, 404);
    // The home workspace stays.
    let home = id_of(&all["workspaces"][0], "id");
    let (status, answer) = alice.call("DELETE", &format!("/workspaces/{home}"), None).await;
    assert_eq!(status, 409, "{answer}");
}

/// Sharing changes take effect on the next request, everywhere: revoking a writer also ends
/// the previews she registered (her token, a link she signed before, its cookie) and stops the
/// sandbox she started on the workspace; owner and admins see and unregister collaborators'
/// previews.
#[tokio::test]
async fn grants_and_revocations_are_enforced_at_once_and_audited() {
    let server = TestServer::start().await;
    let alice = Api::new(&server, "alice");
    let adam = Api::new(&server, "adam");
    let wendy = Api::new(&server, "wendy");
    let rita = Api::new(&server, "rita");
    let crew = Crew { alice: Api::new(&server, "alice") };
    let ws = crew.shared_workspace("team").await;
    let sbx = crew.sandbox_on(&ws).await;
    let (status, out) =
        wendy.call("POST", &format!("/sandboxes/{sbx}/exec"), Some(json!({"command": "echo hi"}))).await;
    assert_eq!((status, out["stdout"].as_str()), (200, Some("hi\n")), "{out}");

    // A writer cannot grant, not even to themselves; an admin can, and can revoke.
    let (status, _) = wendy
        .call("POST", &format!("/workspaces/{ws}/share"), Some(json!({"agent_id": "wendy", "permission": "admin"})))
        .await;
    assert_eq!(status, 403);
    let (status, _) = wendy.call("DELETE", &format!("/workspaces/{ws}/share/rita"), None).await;
    assert_eq!(status, 403);

    // Before the revocation, wendy exposes alice's sandbox: an app she starts there, a private
    // preview of it, a signed link; and a sandbox of her own on the workspace.
    let port = free_port();
    let (status, body) = wendy
        .call("POST", &format!("/sandboxes/{sbx}/files"), Some(json!({"path": "preview_app.py", "content": APP})))
        .await;
    assert_eq!(status, 201, "{body}");
    start_app(&wendy, &sbx, port, "team").await;
    let preview = register(&wendy, json!({"sandbox_id": sbx, "port": port})).await;
    assert_eq!(preview["registered_by"], "wendy", "{preview}");
    let through = format!("/preview/{sbx}/{port}/echo");
    let (status, echo) = wendy.call("GET", &through, None).await;
    assert_eq!(status, 200, "her token reaches her preview: {echo}");
    let (status, link) = wendy.call("POST", "/preview/link", Some(json!({"sandbox_id": sbx, "port": port}))).await;
    assert_eq!(status, 200, "{link}");
    let link = path_of(link["url"].as_str().expect("url"));
    let anonymous = previews_client();
    let open_link = async |path: &str, cookie: Option<&str>| {
        let mut request = anonymous.get(server.url(path));
        if let Some(cookie) = cookie {
            request = request.header("cookie", cookie);
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        let cookie = response
            .headers()
            .get("set-cookie")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split(';').next())
            .map(str::to_string);
        (status, cookie, json_of(response).await)
    };
    let (status, cookie, _) = open_link(&link, None).await;
    assert_eq!(status, 303, "the link works before the revocation");
    let cookie = cookie.expect("the link sets its cookie");
    let (status, _, _) = open_link(&through, Some(&cookie)).await;
    assert_eq!(status, 200, "and so does its cookie");
    // A second preview of hers (nothing listens): the owner sees both and can take one down.
    register(&wendy, json!({"sandbox_id": sbx, "port": port + 1})).await;
    let (_, listed) = alice.call("GET", "/preview/list", None).await;
    let seen: Vec<(u64, String)> = listed["previews"]
        .as_array()
        .expect("previews")
        .iter()
        .map(|p| (p["port"].as_u64().unwrap_or(0), id_of(p, "registered_by")))
        .collect();
    assert_eq!(seen, [(u64::from(port), "wendy".into()), (u64::from(port) + 1, "wendy".into())], "{listed}");
    let (_, listed) = adam.call("GET", "/preview/list", None).await;
    assert_eq!(listed["previews"].as_array().map(Vec::len), Some(2), "an admin oversees them too: {listed}");
    let (_, listed) = rita.call("GET", "/preview/list", None).await;
    assert_eq!(listed["previews"], json!([]), "a reader does not: {listed}");
    let key = json!({"sandbox_id": sbx, "port": port + 1});
    let (status, body) = rita.call("POST", "/preview/unregister", Some(key.clone())).await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("forbidden")), "{body}");
    let (status, body) = alice.call("POST", "/preview/unregister", Some(key)).await;
    assert_eq!(status, 204, "the owner unregisters a collaborator's preview: {body}");
    let (_, mine) = wendy.call("GET", "/preview/list", None).await;
    assert_eq!(mine["previews"].as_array().map(Vec::len), Some(1), "{mine}");
    let (status, own) = wendy.call("POST", "/sandboxes", Some(json!({"workspace_id": ws}))).await;
    assert_eq!(status, 201, "{own}");
    let own = id_of(&own, "id");
    let (_, listed) = alice.call("GET", "/sandboxes?include_shared=true", None).await;
    let entry = listed["sandboxes"].as_array().expect("list").iter().find(|s| s["id"] == own.as_str()).cloned();
    assert_eq!(
        entry.map(|s| (s["workspace_id"].clone(), s["permission"].clone())),
        Some((json!(ws), json!("owner"))),
        "the owner sees a collaborator's sandbox on her workspace: {listed}"
    );
    assert_eq!(quota_used(&wendy, "sandboxes").await, 1);

    let (status, _) = adam.call("DELETE", &format!("/workspaces/{ws}/share/wendy"), None).await;
    assert_eq!(status, 204);
    // Revoked: the running sandbox is gone for her at once.
    let (status, out) =
        wendy.call("POST", &format!("/sandboxes/{sbx}/exec"), Some(json!({"command": "echo hi"}))).await;
    assert_eq!((status, out["error"]["code"].as_str()), (404, Some("not_found")), "{out}");
    let (status, _) = wendy.call("GET", &format!("/workspaces/{ws}"), None).await;
    assert_eq!(status, 404);
    // And so is everything she exposed: her token, her link and its cookie reach nothing,
    // she cannot sign a new link, and the preview is gone from the owner's list.
    let (status, body) = wendy.call("GET", &through, None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_found")), "{body}");
    let (status, _, body) = open_link(&link, None).await;
    assert_eq!(status, 404, "a link signed before the revocation: {body}");
    let (status, _, body) = open_link(&through, Some(&cookie)).await;
    assert_eq!(status, 404, "its cookie: {body}");
    let (status, body) = wendy.call("POST", "/preview/link", Some(json!({"sandbox_id": sbx, "port": port}))).await;
    assert_eq!(status, 404, "{body}");
    let (_, listed) = alice.call("GET", "/preview/list", None).await;
    assert_eq!(listed["previews"], json!([]), "{listed}");
    // Her sandbox on the workspace was snapshotted and stopped: it no longer runs there or
    // counts against her quota, and the owner finds the `idle` snapshot it left.
    let (status, stopped) = alice.call("GET", &format!("/sandboxes/{own}"), None).await;
    assert_eq!((status, stopped["state"].as_str()), (200, Some("stopped")), "{stopped}");
    assert_eq!(quota_used(&wendy, "sandboxes").await, 0);
    let (_, snapshots) = alice.call("GET", &format!("/snapshot/list?workspace_id={ws}"), None).await;
    let kinds: Vec<&Value> = snapshots["snapshots"].as_array().expect("list").iter().map(|s| &s["kind"]).collect();
    assert_eq!(kinds, [&json!("idle")], "{snapshots}");
    // Alice's own sandbox keeps running and serving the workspace.
    let (status, out) =
        alice.call("POST", &format!("/workspaces/{ws}/exec"), Some(json!({"command": "echo ok"}))).await;
    assert_eq!((status, out["stdout"].as_str()), (200, Some("ok\n")), "{out}");
    alice.call("DELETE", &format!("/sandboxes/{own}"), None).await;
    // Nobody revokes the owner; a grant that does not exist is 404.
    let (status, answer) = adam.call("DELETE", &format!("/workspaces/{ws}/share/alice"), None).await;
    assert_eq!(status, 403, "{answer}");
    let (status, _) = adam.call("DELETE", &format!("/workspaces/{ws}/share/nobody"), None).await;
    assert_eq!(status, 404);
    // An admin downgrading another admin (here: itself) takes effect too.
    let (status, _) = alice
        .call("POST", &format!("/workspaces/{ws}/share"), Some(json!({"agent_id": "adam", "permission": "read"})))
        .await;
    assert_eq!(status, 200);
    let (status, _) = adam.call("GET", &format!("/workspaces/{ws}/audit"), None).await;
    assert_eq!(status, 403);

    let (status, audit) = alice.call("GET", &format!("/workspaces/{ws}/audit"), None).await;
    assert_eq!(status, 200, "{audit}");
    let trail: Vec<(String, String, String, Value)> = audit["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| (id_of(e, "actor"), id_of(e, "action"), id_of(e, "subject"), e["permission"].clone()))
        .collect();
    let expected = vec![
        ("alice".to_string(), "share".to_string(), "adam".to_string(), json!("admin")),
        ("alice".into(), "share".into(), "wendy".into(), json!("write")),
        ("alice".into(), "share".into(), "rita".into(), json!("read")),
        ("adam".into(), "revoke".into(), "wendy".into(), Value::Null),
        ("alice".into(), "share".into(), "adam".into(), json!("read")),
    ];
    assert_eq!(trail, expected, "{audit}");
    assert!(audit["entries"][0]["at"].as_str().is_some_and(|at| at.ends_with('Z')), "{audit}");

    // A reader reaches the owner's private preview with her own token, request after request
    // (the proxy remembers memberships for a second), and not once more after her revocation.
    register(&alice, json!({"sandbox_id": sbx, "port": port})).await;
    for _ in 0..3 {
        let (status, echo) = rita.call("GET", &through, None).await;
        assert_eq!(status, 200, "a member's token reaches a private preview: {echo}");
    }
    let (status, _) = alice.call("DELETE", &format!("/workspaces/{ws}/share/rita"), None).await;
    assert_eq!(status, 204);
    let (status, body) = rita.call("GET", &through, None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_found")), "at once: {body}");
}

/// `POST /workspaces/{id}/exec` starts the workspace's sandbox on demand, reuses it, and after
/// the sandbox is gone starts a new one from the newest snapshot: on the linux runtime what
/// was installed outside `/workspace` comes back; files written after the snapshot are kept.
async fn workspace_exec_starts_a_sandbox_on_demand_and_resumes_from_the_newest_snapshot(runtime: &str) {
    let Some(server) = TestServer::start_runtime(runtime, |_| {}).await else { return };
    let alice = Api::new(&server, "alice");
    let (_, ws) = alice.call("POST", "/workspaces", Some(json!({"name": "build"}))).await;
    let ws = id_of(&ws, "id");
    let exec = |command: &str| json!({ "command": command });
    let (status, out) =
        alice.call("POST", &format!("/workspaces/{ws}/exec"), Some(exec("echo v1 > kept.txt; echo ok"))).await;
    assert_eq!((status, out["stdout"].as_str()), (200, Some("ok\n")), "{out}");
    let (_, sandboxes) = alice.call("GET", "/sandboxes", None).await;
    let list = sandboxes["sandboxes"].as_array().expect("list");
    assert_eq!(list.len(), 1, "{sandboxes}");
    assert_eq!(list[0]["workspace_id"], ws.as_str());
    let first = id_of(&list[0], "id");
    // A second exec reuses the running sandbox.
    alice.call("POST", &format!("/workspaces/{ws}/exec"), Some(exec("true"))).await;
    let (_, sandboxes) = alice.call("GET", "/sandboxes", None).await;
    assert_eq!(sandboxes["sandboxes"].as_array().map(Vec::len), Some(1));

    if runtime == "linux" {
        let (status, out) = alice
            .call("POST", &format!("/sandboxes/{first}/exec"), Some(exec("echo installed > /etc/tool.conf")))
            .await;
        assert_eq!((status, out["exit_code"].as_i64()), (200, Some(0)), "{out}");
    }
    let (status, snap) = alice.call("POST", "/snapshot/create", Some(json!({"sandbox_id": first}))).await;
    assert_eq!(status, 201, "{snap}");
    // Written after the snapshot: a resume must not roll it back.
    alice.call("POST", &format!("/sandboxes/{first}/exec"), Some(exec("echo v2 > kept.txt"))).await;
    let (status, _) = alice.call("DELETE", &format!("/sandboxes/{first}"), None).await;
    assert_eq!(status, 204);

    let (status, out) = alice
        .call(
            "POST",
            &format!("/workspaces/{ws}/exec"),
            Some(exec("cat kept.txt; cat /etc/tool.conf 2>/dev/null || echo none")),
        )
        .await;
    assert_eq!(status, 200, "{out}");
    let expected = if runtime == "linux" { "v2\ninstalled\n" } else { "v2\nnone\n" };
    assert_eq!(out["stdout"], expected, "{out}");
    let (_, sandboxes) = alice.call("GET", "/sandboxes", None).await;
    let running: Vec<&Value> =
        sandboxes["sandboxes"].as_array().expect("list").iter().filter(|s| s["state"] == "running").collect();
    assert_eq!(running.len(), 1, "{sandboxes}");
    assert_ne!(id_of(running[0], "id"), first);

    // A workspace with a running sandbox cannot be deleted; then it can, files and all.
    let (status, _) = alice.call("DELETE", &format!("/workspaces/{ws}"), None).await;
    assert_eq!(status, 409);
    alice.call("DELETE", &format!("/sandboxes/{}", id_of(running[0], "id")), None).await;
    let (status, _) = alice.call("DELETE", &format!("/workspaces/{ws}"), None).await;
    assert_eq!(status, 204);
    let (status, _) = alice.call("GET", &format!("/snapshot/{}", id_of(&snap, "snapshot_id")), None).await;
    assert_eq!(status, 404, "the workspace's snapshots go with it");
    let (status, _) = alice.call("POST", &format!("/workspaces/{ws}/exec"), Some(exec("true"))).await;
    assert_eq!(status, 404);
}

/// The idle path end to end for a workspace: the sandbox a workspace exec started idles out,
/// is snapshotted (`kind: idle`, with its writable layer) and stopped by the reaper; the next
/// workspace exec starts a new sandbox from that snapshot (on the linux runtime what was
/// installed outside `/workspace` comes back, which only the snapshot's layer can bring).
async fn an_idle_workspace_sandbox_is_snapshotted_and_the_next_exec_resumes_from_it(runtime: &str) {
    let Some(server) = TestServer::start_runtime(runtime, |config| {
        config.sandboxes.default_timeout_seconds = 2;
        config.sandboxes.warm_pool = 0;
        config.snapshots.on_idle = true;
    })
    .await
    else {
        return;
    };
    let alice = Api::new(&server, "alice");
    let (status, ws) = alice.call("POST", "/workspaces", Some(json!({"name": "napping"}))).await;
    assert_eq!(status, 201, "{ws}");
    let ws = id_of(&ws, "id");
    let exec = |command: &str| json!({ "command": command });
    let setup =
        if runtime == "linux" { "echo v1 > kept.txt; echo installed > /etc/tool.conf" } else { "echo v1 > kept.txt" };
    let (status, out) = alice.call("POST", &format!("/workspaces/{ws}/exec"), Some(exec(setup))).await;
    assert_eq!((status, out["exit_code"].as_i64()), (200, Some(0)), "{out}");
    let (_, sandboxes) = alice.call("GET", "/sandboxes", None).await;
    let first = id_of(&sandboxes["sandboxes"][0], "id");
    let stopped = async |id: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let (_, sandbox) = alice.call("GET", &format!("/sandboxes/{id}"), None).await;
            if sandbox["state"] == "stopped" {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "{id} did not idle out: {sandbox}");
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    };
    stopped(&first).await;
    let (_, snapshots) = alice.call("GET", &format!("/snapshot/list?workspace_id={ws}"), None).await;
    let kinds: Vec<&Value> = snapshots["snapshots"].as_array().expect("list").iter().map(|s| &s["kind"]).collect();
    assert_eq!(kinds, [&json!("idle")], "the idle stop left one idle snapshot: {snapshots}");

    let (status, out) = alice
        .call(
            "POST",
            &format!("/workspaces/{ws}/exec"),
            Some(exec("cat kept.txt; cat /etc/tool.conf 2>/dev/null || echo none")),
        )
        .await;
    assert_eq!(status, 200, "{out}");
    let expected = if runtime == "linux" { "v1\ninstalled\n" } else { "v1\nnone\n" };
    assert_eq!(out["stdout"], expected, "{out}");
    let (_, sandboxes) = alice.call("GET", "/sandboxes", None).await;
    let running: Vec<String> = sandboxes["sandboxes"]
        .as_array()
        .expect("list")
        .iter()
        .filter(|s| s["state"] == "running")
        .map(|s| id_of(s, "id"))
        .collect();
    assert_eq!(running.len(), 1, "{sandboxes}");
    assert_ne!(running[0], first, "a new sandbox serves the workspace");

    // Let the second one idle out too (so no idle snapshot is being taken), then clean up.
    stopped(&running[0]).await;
    for id in [&first, &running[0]] {
        alice.call("DELETE", &format!("/sandboxes/{id}"), None).await;
    }
    let (status, body) = alice.call("DELETE", &format!("/workspaces/{ws}"), None).await;
    assert_eq!(status, 204, "{body}");
}

on_every_runtime!(
    workspace_exec_starts_a_sandbox_on_demand_and_resumes_from_the_newest_snapshot,
    an_idle_workspace_sandbox_is_snapshotted_and_the_next_exec_resumes_from_it,
);

#[tokio::test]
async fn the_marketplace_publishes_immutable_versions_searches_and_runs_workers() {
    let server = TestServer::start().await;
    let alice = Api::new(&server, "alice");
    let bob = Api::new(&server, "bob");
    let publish = |name: &str, version: &str, description: &str, tags: Value| {
        json!({
            "name": name, "version": version, "description": description, "tags": tags,
            "command": "sh \"$CLOUDTERM_WORKER_DIR/run.sh\" \"$CLOUDTERM_WORKER_VERSION\"",
            "files": [
                {"path": "run.sh", "content": "printf 'quoted %s: ' \"$1\"; cat \"$CLOUDTERM_WORKER_DIR/lib/data.txt\"\n"},
                {"path": "lib/data.txt", "content_base64": "c2hhcmVkIGRhdGEK", "mode": 384},
            ],
        })
    };
    let (status, quoter) = alice
        .call(
            "POST",
            "/marketplace/publish",
            Some(publish("quoter", "1.0.0", "adds shell quoting to arguments", json!(["shell", "text"]))),
        )
        .await;
    assert_eq!(status, 201, "{quoter}");
    assert_eq!(
        (quoter["name"].as_str(), quoter["version"].as_str(), quoter["author"].as_str()),
        (Some("quoter"), Some("1.0.0"), Some("alice"))
    );
    let quoter = id_of(&quoter, "worker_id");
    assert!(quoter.starts_with("wkr_"));
    let (status, other) = alice
        .call("POST", "/marketplace/publish", Some(publish("csv-tools", "0.1.0", "convert tables", json!(["data"]))))
        .await;
    assert_eq!(status, 201, "{other}");

    // Versions are immutable; only the author publishes more.
    let (status, answer) =
        alice.call("POST", "/marketplace/publish", Some(publish("quoter", "1.0.0", "changed", json!([])))).await;
    assert_eq!((status, answer["error"]["code"].as_str()), (409, Some("conflict")), "{answer}");
    let (status, answer) =
        bob.call("POST", "/marketplace/publish", Some(publish("quoter", "9.0.0", "hijack", json!([])))).await;
    assert_eq!((status, answer["error"]["code"].as_str()), (403, Some("forbidden")), "{answer}");
    let (status, _) = alice
        .call(
            "POST",
            "/marketplace/publish",
            Some(publish("quoter", "1.1.0", "adds shell quoting, faster", json!(["shell"]))),
        )
        .await;
    assert_eq!(status, 201);
    // Build metadata does not make another version: 1.1.0+build2 is refused (semver
    // precedence ignores it, so it would be a second 1.1.0).
    let (status, answer) =
        alice.call("POST", "/marketplace/publish", Some(publish("quoter", "1.1.0+build2", "sneaky", json!([])))).await;
    assert_eq!((status, answer["error"]["code"].as_str()), (422, Some("validation_failed")), "{answer}");
    // A backport published after 1.1.0 does not become the latest: the highest version is.
    let (status, answer) = alice
        .call("POST", "/marketplace/publish", Some(publish("quoter", "1.0.1", "backported fix", json!(["shell"]))))
        .await;
    assert_eq!(status, 201, "{answer}");
    // Mentions quoting once, deep in a long description: found, ranked below quoter.
    let (status, answer) = alice
        .call(
            "POST",
            "/marketplace/publish",
            Some(publish(
                "table-fmt",
                "1.0.0",
                "formats tables of numbers and text into aligned columns, with widths, padding, \
                 borders, headers, footers, colours and, for cells holding separators, quoting",
                json!(["data"]),
            )),
        )
        .await;
    assert_eq!(status, 201, "{answer}");

    // Bad input: 4xx with the envelope.
    for body in [
        publish("", "1.0.0", "x", json!([])),
        publish("Bad Name", "1.0.0", "x", json!([])),
        publish("ok", "1.0", "x", json!([])),
        publish("ok", "latest", "x", json!([])),
        publish("ok", "1.0.0", "x", json!(["bad tag"])),
        json!({"name": "ok", "version": "1.0.0", "command": ""}),
        json!({"name": "ok", "version": "1.0.0", "command": "x", "files": [{"path": "../escape", "content": "x"}]}),
        json!({"name": "ok", "version": "1.0.0", "command": "x", "files": [{"path": "/etc/passwd", "content": "x"}]}),
        json!({"name": "ok", "version": "1.0.0", "command": "x", "files": [{"path": "a", "content": "x", "content_base64": "eA=="}]}),
        json!({"name": "ok", "version": "1.0.0"}),
    ] {
        let (status, answer) = alice.call("POST", "/marketplace/publish", Some(body.clone())).await;
        assert_eq!(status, 422, "{body}: {answer}");
        assert!(answer["error"]["message"].is_string(), "{answer}");
    }

    // Search: stemmed full text (quoting ↔ quote), tags, limits.
    let (status, found) = bob.call("GET", "/marketplace/search?q=quote", None).await;
    assert_eq!(status, 200, "{found}");
    let hits = found["workers"].as_array().expect("workers");
    let named: Vec<&str> = hits.iter().filter_map(|hit| hit["name"].as_str()).collect();
    assert_eq!(named, ["quoter", "table-fmt"], "{found}");
    assert_eq!((hits[0]["name"].as_str(), hits[0]["version"].as_str()), (Some("quoter"), Some("1.1.0")));
    // The example: q=quoting finds the worker whose description mentions quoting,
    // best match first (name and description) with a strictly higher score.
    let (status, found) = bob.call("GET", "/marketplace/search?q=quoting", None).await;
    assert_eq!(status, 200, "{found}");
    let hits = found["workers"].as_array().expect("workers");
    let named: Vec<&str> = hits.iter().filter_map(|hit| hit["name"].as_str()).collect();
    assert_eq!(named, ["quoter", "table-fmt"], "{found}");
    let scores: Vec<f64> = hits.iter().filter_map(|hit| hit["score"].as_f64()).collect();
    assert!(scores.len() == 2 && scores[0] > scores[1] && scores[1] > 0.0, "ranked by relevance: {found}");
    assert_eq!(hits[0]["version"], "1.1.0", "the latest is the highest version, not the backport: {found}");
    let (_, tagged) = bob.call("GET", "/marketplace/search?tag=data", None).await;
    let named: Vec<&str> =
        tagged["workers"].as_array().expect("workers").iter().filter_map(|hit| hit["name"].as_str()).collect();
    assert_eq!(named, ["table-fmt", "csv-tools"], "the most recent first without q: {tagged}");
    let (_, all) = bob.call("GET", "/marketplace/search?limit=1", None).await;
    assert_eq!(all["workers"].as_array().map(Vec::len), Some(1));
    let (_, nothing) = bob.call("GET", "/marketplace/search?q=%22NEAR(%20*", None).await;
    assert_eq!(nothing["workers"].as_array().map(Vec::len), Some(0), "query syntax is not interpreted: {nothing}");
    for (query, expected) in [("limit=0", 422), ("limit=101", 422), ("limit=x", 400), ("tag=a%20b", 422)] {
        let (status, answer) = bob.call("GET", &format!("/marketplace/search?{query}"), None).await;
        assert_eq!(status, expected, "{query}: {answer}");
    }
    let (status, shown) = bob.call("GET", &format!("/marketplace/{quoter}"), None).await;
    assert_eq!(status, 200, "{shown}");
    let versions: Vec<&str> =
        shown["versions"].as_array().expect("versions").iter().filter_map(|v| v["version"].as_str()).collect();
    assert_eq!(versions, ["1.1.0", "1.0.1", "1.0.0"], "highest first, whenever published");
    assert_eq!(
        (shown["latest_version"].as_str(), shown["versions"][0]["has_files"].as_bool()),
        (Some("1.1.0"), Some(true))
    );
    let (status, _) = bob.call("GET", "/marketplace/wkr_nope", None).await;
    assert_eq!(status, 404);

    // Run: the files are installed into the workspace and the command runs there.
    let (_, ws) = bob.call("POST", "/workspaces", Some(json!({"name": "scratch"}))).await;
    let ws = id_of(&ws, "id");
    let (status, run) =
        bob.call("POST", &format!("/workspaces/{ws}/workers/{quoter}/run"), Some(json!({"version": "1.0.0"}))).await;
    assert_eq!(status, 200, "{run}");
    assert_eq!(
        (run["exit_code"].as_i64(), run["stdout"].as_str()),
        (Some(0), Some("quoted 1.0.0: shared data\n")),
        "{run}"
    );
    assert_eq!((run["version"].as_str(), run["installed_files"].as_u64()), (Some("1.0.0"), Some(2)));
    let (status, latest) = bob.call("POST", &format!("/workspaces/{ws}/workers/{quoter}/run"), None).await;
    assert_eq!((status, latest["version"].as_str()), (200, Some("1.1.0")), "{latest}");
    let (_, listing) = bob
        .call(
            "POST",
            &format!("/workspaces/{ws}/exec"),
            Some(json!({"command": "stat -c '%a %n' .workers/quoter/lib/data.txt .workers/quoter/run.sh"})),
        )
        .await;
    assert_eq!(listing["stdout"], "600 .workers/quoter/lib/data.txt\n644 .workers/quoter/run.sh\n", "{listing}");
    for (path, body, expected) in [
        (format!("/workspaces/{ws}/workers/wkr_nope/run"), json!({}), 404),
        (format!("/workspaces/{ws}/workers/{quoter}/run"), json!({"version": "7.7.7"}), 404),
        (format!("/workspaces/{ws}/workers/{quoter}/run"), json!({"version": "seven"}), 422),
        (format!("/workspaces/{ws}/workers/{quoter}/run"), json!({"bogus": true}), 422),
        // Alice's workspace is not Bob's to run anything in.
        (
            format!(
                "/workspaces/{}/workers/{quoter}/run",
                id_of(&alice.call("GET", "/workspaces", None).await.1["workspaces"][0], "id")
            ),
            json!({}),
            404,
        ),
    ] {
        let (status, answer) = bob.call("POST", &path, Some(body.clone())).await;
        assert_eq!(status, expected, "{path} {body}: {answer}");
    }
}

/// `GET /sandboxes?include_shared=true` adds the running sandboxes on workspaces shared with the
/// caller, with the caller's permission; without it, or for a stranger, they stay out.
#[tokio::test]
async fn shared_sandboxes_are_listed_only_when_asked_and_only_to_members() {
    let server = TestServer::start().await;
    let crew = Crew { alice: Crew::api(&server, "alice") };
    let ws = crew.shared_workspace("pair").await;
    let sandbox = crew.sandbox_on(&ws).await;
    let ids = |list: &Value| -> Vec<String> {
        list["sandboxes"].as_array().expect("list").iter().map(|s| id_of(s, "id")).collect()
    };
    let wendy = Crew::api(&server, "wendy");
    let own_sandbox = id_of(&wendy.create(json!({})).await, "id");
    let (_, plain) = wendy.call("GET", "/sandboxes", None).await;
    assert_eq!(ids(&plain), std::slice::from_ref(&own_sandbox), "{plain}");
    assert!(plain["sandboxes"][0].get("permission").is_none(), "{plain}");
    let (status, listed) = wendy.call("GET", "/sandboxes?include_shared=true", None).await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(ids(&listed), [own_sandbox, sandbox.clone()], "{listed}");
    assert_eq!(listed["sandboxes"][0]["permission"], "owner");
    assert_eq!(
        (listed["sandboxes"][1]["permission"].as_str(), listed["sandboxes"][1]["workspace_id"].as_str()),
        (Some("write"), Some(&*ws))
    );
    let (_, rita) = Crew::api(&server, "rita").call("GET", "/sandboxes?include_shared=true", None).await;
    assert_eq!((ids(&rita), rita["sandboxes"][0]["permission"].as_str()), (vec![sandbox.clone()], Some("read")));
    let (_, sam) = Crew::api(&server, "sam").call("GET", "/sandboxes?include_shared=true", None).await;
    assert_eq!(ids(&sam), Vec::<String>::new(), "a stranger sees nothing: {sam}");
    // Once it is deleted it leaves every list.
    let (status, _) = crew.alice.call("DELETE", &format!("/sandboxes/{sandbox}"), None).await;
    assert_eq!(status, 204);
    let (_, after) = Crew::api(&server, "rita").call("GET", "/sandboxes?include_shared=true", None).await;
    assert_eq!(ids(&after), Vec::<String>::new(), "{after}");
    let (status, bad) = wendy.call("GET", "/sandboxes?include_shared=maybe", None).await;
    assert_eq!((status, bad["error"]["code"].as_str()), (400, Some("bad_request")), "{bad}");
}
