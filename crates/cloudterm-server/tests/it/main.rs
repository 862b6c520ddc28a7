//! Integration tests of the cloudterm server: a real server on 127.0.0.1:0, real HTTP.

// First, so its macros are in scope in every module below.
#[macro_use]
mod support;
mod auth_dev;
mod auth_idp;
mod console;
mod dependency_rules;
mod egress;
mod health;
mod isolation;
mod listeners;
mod metrics;
mod plumbing;
mod preview_subdomains;
mod previews;
mod quotas;
mod sandboxes;
mod snapshot_layers;
mod snapshots;
mod spec;
mod storage_quota;
mod terminal;
mod warm_pool;
mod workspaces;
