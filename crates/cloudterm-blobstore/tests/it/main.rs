//! Integration tests of cloudterm-blobstore: one behavioural suite run against local disk and a
//! real S3 service (Garage), plus what only S3 has (an endpoint that does not answer).

mod body;
mod suite;
mod unreachable;
