//! Unit tests of the protocol crate: path matching, framing, query encoding, and the check
//! that `docs/agent-protocol.md` documents every endpoint.

use super::*;

#[test]
fn every_endpoint_is_documented() {
    let doc_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/agent-protocol.md");
    let doc = std::fs::read_to_string(doc_path).expect("docs/agent-protocol.md exists");
    let mut missing = Vec::new();
    for (method, path) in ENDPOINTS {
        let needle = format!("`{method} {path}`");
        if !doc.contains(&needle) {
            missing.push(needle);
        }
    }
    assert!(missing.is_empty(), "docs/agent-protocol.md lacks {missing:?}");
    assert!(doc.contains(&format!("PROTOCOL_VERSION = {PROTOCOL_VERSION}")), "doc states the version");
}

#[test]
fn endpoints_are_unique() {
    let mut seen = std::collections::HashSet::new();
    for e in ENDPOINTS {
        assert!(seen.insert(e), "duplicate endpoint {e:?}");
    }
}

#[test]
fn path_templates_match() {
    assert_eq!(match_path(PATH_JOB_LOGS, "/v1/jobs/job_1/logs"), Some(vec!["job_1".to_owned()]));
    assert_eq!(match_path(PATH_JOB_LOGS, "/v1/jobs//logs"), None);
    assert_eq!(match_path(PATH_JOB, "/v1/jobs/a/b"), None);
    assert_eq!(match_path(PATH_INFO, "/v1/info"), Some(vec![]));
    assert_eq!(match_path(PATH_INFO, "/v1/info/"), None);
}

#[test]
fn frames_roundtrip_across_split_reads() {
    let mut wire = frame::encode(frame::KIND_DATA, b"hello");
    wire.extend(frame::encode(frame::KIND_EXIT, br#"{"code":3}"#));
    let mut dec = frame::FrameDecoder::default();
    let mut out = Vec::new();
    for b in &wire {
        dec.push(std::slice::from_ref(b));
        while let Some(f) = dec.next_frame().expect("valid frames") {
            out.push(f);
        }
    }
    assert_eq!(out, vec![(frame::KIND_DATA, b"hello".to_vec()), (frame::KIND_EXIT, br#"{"code":3}"#.to_vec())]);
}

#[test]
fn oversized_frame_is_rejected() {
    let mut dec = frame::FrameDecoder::default();
    let mut hdr = vec![frame::KIND_DATA];
    hdr.extend_from_slice(&(frame::MAX_FRAME_LEN + 1).to_be_bytes());
    dec.push(&hdr);
    assert!(dec.next_frame().is_err());
}

#[test]
fn query_roundtrip() {
    let q = query::encode(&[("path", "a b/ü&c=d%"), ("argv", "-c")]);
    assert_eq!(q, "path=a%20b%2F%C3%BC%26c%3Dd%25&argv=-c");
    let parsed = query::parse(&q);
    assert_eq!(parsed, vec![("path".to_owned(), "a b/ü&c=d%".to_owned()), ("argv".to_owned(), "-c".to_owned())]);
    assert_eq!(query::parse("a=1+2&b"), vec![("a".to_owned(), "1 2".to_owned()), ("b".to_owned(), String::new())]);
}

#[test]
fn exec_event_wire_format() {
    let ev = ExecEvent::Exit { exit_code: Some(3), signal: None, timed_out: false, duration_ms: 7 };
    let s = serde_json::to_string(&ev).expect("serializes");
    assert_eq!(s, r#"{"type":"exit","exit_code":3,"signal":null,"timed_out":false,"duration_ms":7}"#);
    let ev: ExecEvent = serde_json::from_str(r#"{"type":"stdout","data":"aGk="}"#).expect("parses");
    assert_eq!(ev, ExecEvent::Stdout { data: "aGk=".to_owned() });
}
