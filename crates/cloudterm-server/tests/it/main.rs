//! Integration tests of the cloudterm server.
