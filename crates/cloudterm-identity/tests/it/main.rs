//! Integration tests of cloudterm-identity: the dev issuer on a real filesystem, every token
//! attack we refuse, and remote verification against a real JWKS/OIDC server on 127.0.0.1.

#![allow(missing_docs)]

mod attacks;
mod dev_issuer;
mod remote;
mod support;
