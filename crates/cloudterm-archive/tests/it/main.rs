//! Integration tests of cloudterm-archive: real trees in temporary directories, archives
//! crafted byte by byte to attack the extractor, and the system's `tar` as an outside reader.

mod attacks;
mod integrity;
mod limits;
mod owners;
mod roundtrip;
mod support;
mod whiteouts;
