//! Tests of config loading: precedence, every setting's override, and errors that name the key.

use std::collections::HashMap;
use std::io::Write;

use super::*;

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    move |name| map.get(name).cloned()
}

fn write_file(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(text.as_bytes()).expect("write");
    file
}

#[test]
fn defaults_are_the_embedded_setup() {
    let config = Config::load(None, env_of(&[("CLOUDTERM_DATA_DIR", "/tmp/ct")]), &Overrides::default()).expect("load");
    assert_eq!(config.listen, "127.0.0.1:8000");
    assert_eq!(config.store_url(), "sqlite:///tmp/ct/cloudterm.db");
    assert_eq!(config.local_storage_path(), PathBuf::from("/tmp/ct/snapshots"));
    assert!(!config.uses_external_idp());
    assert_eq!(config.runtime.kind, "auto");
}

#[test]
fn file_then_env_then_flags() {
    let file =
        write_file("listen = \"127.0.0.1:9000\"\ndata_dir = \"/from/file\"\n[auth]\nprincipal_claim = \"email\"\n");
    let env = env_of(&[("CLOUDTERM_LISTEN", "127.0.0.1:9001"), ("CLOUDTERM_AUTH_AUDIENCE", "a, b,,c")]);
    let flags = Overrides { data_dir: Some("/from/flag".into()), listen: None };
    let config = Config::load(Some(file.path()), env, &flags).expect("load");
    assert_eq!(config.listen, "127.0.0.1:9001", "env beats file");
    assert_eq!(config.data_dir, PathBuf::from("/from/flag"), "flag beats file");
    assert_eq!(config.auth.principal_claim, "email", "file beats default");
    assert_eq!(config.auth.audience, vec!["a", "b", "c"]);
}

#[test]
fn every_setting_has_a_working_override() {
    for setting in SETTINGS {
        let value = match setting.key {
            "listen" | "listeners.sandbox" | "listeners.snapshot" | "listeners.workspace" | "listeners.preview" => {
                "127.0.0.1:1234"
            }
            "log.format" => "json",
            "log.level" => "debug",
            "metrics.require_auth" => "true",
            "auth.issuer" | "auth.jwks_url" => "https://idp.example.com/",
            "store.url" => "sqlite:///tmp/x.db",
            "storage.backend" => "local",
            "storage.s3_endpoint" => "https://s3.example.com",
            "storage.s3_path_style" => "false",
            "runtime.kind" => "process",
            "runtime.agent_path" | "runtime.linux_helper_path" | "runtime.images_dir" | "runtime.state_dir" => "/opt/x",
            "sandboxes.mount_allow" => "/srv/data:/mnt/shared",
            "sandboxes.default_memory_mb" => "1024",
            "sandboxes.default_pids" => "64",
            "sandboxes.warm_pool" => "5",
            "sandboxes.network" => "nat",
            "sandboxes.network_range" => "10.99.0.0/16",
            "sandboxes.network_deny" => "10.0.0.0/8",
            "sandboxes.network_dns" => "10.0.0.2,10.0.0.3",
            "snapshots.retention" => "3",
            "snapshots.on_idle" => "false",
            "snapshots.periodic_seconds" => "3600",
            "snapshots.key_file" => "/etc/cloudterm/snapshot.key",
            "preview.base_url" => "https://preview.example.com",
            "preview.secret_file" => "/etc/cloudterm/preview.key",
            "preview.domain" => "preview.example.com",
            "terminal.redraw_wait_ms" | "terminal.redraw_quiet_ms" => "7",
            key if key.ends_with("seconds") || key.ends_with("bytes") || key.starts_with("quotas.") => "7",
            _ => "something",
        };
        let before = Config::load(None, env_of(&[]), &Overrides::default()).expect("defaults");
        let after = Config::load(None, env_of(&[(setting.env, value)]), &Overrides::default())
            .unwrap_or_else(|err| panic!("{} rejected {value:?}: {err}", setting.env));
        // `local` is the default, and `s3` alone fails validation without a bucket.
        if setting.key != "storage.backend" {
            assert_ne!(before, after, "{} changed nothing", setting.env);
        }
        assert!(setting.env.starts_with("CLOUDTERM_"));
    }
}

#[test]
fn unknown_keys_in_the_file_are_named() {
    let file = write_file("[http]\nmax_body_byte = 5\n");
    let err = Config::load(Some(file.path()), env_of(&[]), &Overrides::default()).expect_err("typo must fail");
    assert!(err.to_string().contains("max_body_byte"), "{err}");
}

#[test]
fn wrong_types_in_the_file_are_named() {
    let file = write_file("[http]\nrequest_timeout_seconds = \"soon\"\n");
    let err = Config::load(Some(file.path()), env_of(&[]), &Overrides::default()).expect_err("must fail");
    assert!(err.to_string().contains("request_timeout_seconds"), "{err}");
}

#[test]
fn bad_env_values_name_the_variable_and_key() {
    let err = Config::load(None, env_of(&[("CLOUDTERM_HTTP_MAX_BODY_BYTES", "lots")]), &Overrides::default())
        .expect_err("must fail");
    let text = err.to_string();
    assert!(text.contains("CLOUDTERM_HTTP_MAX_BODY_BYTES") && text.contains("http.max_body_bytes"), "{text}");
}

#[test]
fn validation_names_the_bad_key() {
    let cases = [
        ("CLOUDTERM_LISTEN", "nowhere", "listen"),
        ("CLOUDTERM_LISTEN_PREVIEW", "8003", "listeners.preview"),
        ("CLOUDTERM_LOG_FORMAT", "xml", "log.format"),
        ("CLOUDTERM_RUNTIME", "docker", "runtime.kind"),
        ("CLOUDTERM_STORAGE", "floppy", "storage.backend"),
        ("CLOUDTERM_STORAGE", "s3", "storage.s3_bucket"),
        ("CLOUDTERM_S3_ENDPOINT", "s3.example.com", "storage.s3_endpoint"),
        ("CLOUDTERM_S3_PATH_STYLE", "sometimes", "storage.s3_path_style"),
        ("CLOUDTERM_STORE_URL", "mysql://x", "store.url"),
        ("CLOUDTERM_AUTH_ISSUER", "idp.example.com", "auth.issuer"),
        ("CLOUDTERM_AUTH_LEEWAY_SECONDS", "86400", "auth.leeway_seconds"),
        ("CLOUDTERM_HTTP_REQUEST_TIMEOUT_SECONDS", "0", "http.request_timeout_seconds"),
        ("CLOUDTERM_SANDBOX_NETWORK", "bridge", "sandboxes.network"),
        ("CLOUDTERM_SANDBOX_NETWORK_RANGE", "8.8.0.0/16", "sandboxes.network_range"),
        ("CLOUDTERM_SANDBOX_NETWORK_RANGE", "10.0.0.0/33", "sandboxes.network_range"),
        ("CLOUDTERM_SANDBOX_NETWORK_DENY", "10.0.0.0/8,nowhere", "sandboxes.network_deny"),
        ("CLOUDTERM_SANDBOX_NETWORK_DNS", "one.one.one.one", "sandboxes.network_dns"),
        ("CLOUDTERM_TERMINAL_PING_SECONDS", "0", "terminal.ping_seconds"),
        ("CLOUDTERM_TERMINAL_REDRAW_WAIT_MS", "60000", "terminal.redraw_wait_ms"),
        ("CLOUDTERM_TERMINAL_REDRAW_QUIET_MS", "60000", "terminal.redraw_quiet_ms"),
    ];
    for (var, value, key) in cases {
        let err = Config::load(None, env_of(&[(var, value)]), &Overrides::default()).expect_err(var);
        assert!(err.to_string().contains(key), "{var}={value}: {err}");
    }
}

#[test]
fn an_idp_turns_the_dev_issuer_off() {
    let config =
        Config::load(None, env_of(&[("CLOUDTERM_AUTH_JWKS_URL", "http://127.0.0.1:9/jwks")]), &Overrides::default())
            .expect("load");
    assert!(config.uses_external_idp());
}

#[test]
fn help_lists_every_setting() {
    let help = settings_help();
    for setting in SETTINGS {
        assert!(help.contains(setting.env) && help.contains(setting.key), "{} missing", setting.key);
    }
}

#[test]
fn s3_storage_needs_a_bucket_and_takes_the_rest_from_defaults() {
    let env = env_of(&[
        ("CLOUDTERM_STORAGE", "s3"),
        ("CLOUDTERM_S3_BUCKET", "snapshots"),
        ("CLOUDTERM_S3_ENDPOINT", "http://127.0.0.1:3900"),
        ("CLOUDTERM_S3_REGION", "garage"),
    ]);
    let config = Config::load(None, env, &Overrides::default()).expect("load");
    assert_eq!(config.storage.s3_bucket.as_deref(), Some("snapshots"));
    assert_eq!(config.storage.s3_prefix, "cloudterm");
    assert!(config.storage.s3_path_style);
}

#[test]
fn store_passwords_never_reach_logs_or_errors() {
    assert_eq!(
        redact_url_password("postgres://ct:s3cret@db:5432/ct?sslmode=require"),
        "postgres://ct:***@db:5432/ct?sslmode=require"
    );
    assert_eq!(redact_url_password("postgres://ct@db/ct"), "postgres://ct@db/ct");
    assert_eq!(redact_url_password("sqlite:///tmp/x.db"), "sqlite:///tmp/x.db");
    let err = Config::load(None, env_of(&[("CLOUDTERM_STORE_URL", "mysql://u:hunter2@h/d")]), &Overrides::default())
        .expect_err("mysql is refused");
    assert!(!err.to_string().contains("hunter2"), "{err}");
}

#[test]
fn preview_settings_are_checked() {
    for bad in ["ftp://x", "https://", "https://host/path", "host.example.com"] {
        let err =
            Config::load(None, env_of(&[("CLOUDTERM_PREVIEW_BASE_URL", bad)]), &Overrides::default()).expect_err(bad);
        assert!(err.to_string().contains("preview.base_url"), "{err}");
    }
    for bad in ["0", "604801"] {
        let err = Config::load(None, env_of(&[("CLOUDTERM_PREVIEW_LINK_TTL_SECONDS", bad)]), &Overrides::default())
            .expect_err(bad);
        assert!(err.to_string().contains("preview.link_ttl_seconds"), "{err}");
    }
    let config = Config::load(
        None,
        env_of(&[("CLOUDTERM_PREVIEW_BASE_URL", "https://p.example.com:8443")]),
        &Overrides::default(),
    )
    .expect("load");
    assert_eq!(config.preview.base_url.as_deref(), Some("https://p.example.com:8443"));
    for bad in ["localhost", "preview.example.com:8080", "https://preview.example.com", "*.example.com", "a..b", "-a.b"]
    {
        let err =
            Config::load(None, env_of(&[("CLOUDTERM_PREVIEW_DOMAIN", bad)]), &Overrides::default()).expect_err(bad);
        assert!(err.to_string().contains("preview.domain"), "{err}");
    }
    let config =
        Config::load(None, env_of(&[("CLOUDTERM_PREVIEW_DOMAIN", "preview.example.com.")]), &Overrides::default())
            .expect("load");
    assert_eq!(config.preview.domain.as_deref(), Some("preview.example.com."));
}

#[test]
fn the_storage_quota_comes_from_the_file_with_overrides_and_the_env_wins() {
    let file = write_file(
        "[quotas]\nstorage_mb = 512\n[quotas.principals.ci-bot]\nstorage_mb = 4096\n[quotas.principals.free]\nstorage_mb = 0\n",
    );
    let config = Config::load(Some(file.path()), env_of(&[]), &Overrides::default()).expect("load");
    assert_eq!(config.quotas.storage_mb, 512);
    assert_eq!(config.quotas.principals["ci-bot"].storage_mb, Some(4096));
    assert_eq!(Config::default().quotas.storage_mb, 0, "unlimited unless configured");

    let env = env_of(&[("CLOUDTERM_QUOTA_STORAGE_MB", "64")]);
    let config = Config::load(Some(file.path()), env, &Overrides::default()).expect("load");
    assert_eq!(config.quotas.storage_mb, 64, "env beats file");
    assert_eq!(config.quotas.principals["ci-bot"].storage_mb, Some(4096), "overrides stay");

    let bad = Config::load(None, env_of(&[("CLOUDTERM_QUOTA_STORAGE_MB", "lots")]), &Overrides::default());
    assert!(bad.is_err_and(|err| err.to_string().contains("CLOUDTERM_QUOTA_STORAGE_MB")));
}

#[test]
fn terminal_defaults_are_the_documented_ones() {
    // docs/terminal.md and docs/operations.md quote these.
    let defaults = Config::default();
    assert_eq!(defaults.terminal.idle_session_seconds, 600, "a named session waits 10 minutes for a viewer");
    assert_eq!(defaults.terminal.redraw_wait_ms, 150);
    assert_eq!(defaults.terminal.redraw_quiet_ms, 50);
    assert_eq!(defaults.terminal.ping_seconds, 30);
    let loaded = Config::load(None, env_of(&[]), &Overrides::default()).expect("load");
    assert_eq!(loaded.terminal, defaults.terminal, "nothing but the defaults applies without a file or env");
    let settings = crate::state::terminal_settings(&loaded);
    assert_eq!(settings.idle_session, std::time::Duration::from_secs(600));
    assert_eq!(settings.redraw_wait, std::time::Duration::from_millis(150));
    assert_eq!(settings.redraw_quiet, std::time::Duration::from_millis(50));
}
