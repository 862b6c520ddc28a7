//! A throughput sanity check: packs a directory into an archive file, unpacks it into a fresh
//! directory, and prints sizes, times and rates. Numbers for the README, not a benchmark suite.
//!
//! `cargo run --release -p cloudterm-archive --example throughput -- DIR [--level N] [--threads N] [--encrypt]`

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::PathBuf;
use std::time::Instant;

use cloudterm_archive::{pack, unpack, Key, PackOptions, UnpackOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut source = None;
    let mut options = PackOptions::default();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--level" => options.level = args.next().ok_or("--level needs a value")?.parse()?,
            "--threads" => options.threads = args.next().ok_or("--threads needs a value")?.parse()?,
            "--encrypt" => options.key = Some(Key::from_bytes([7; 32])),
            _ => source = Some(PathBuf::from(arg)),
        }
    }
    let source = source.ok_or("usage: throughput DIR [--level N] [--threads N] [--encrypt]")?;
    let work = tempfile::tempdir()?;
    let archive = work.path().join("snapshot");

    let started = Instant::now();
    let packed = pack(&source, BufWriter::new(File::create(&archive)?), &options)?;
    let pack_time = started.elapsed().as_secs_f64();

    let dest = work.path().join("restored");
    std::fs::create_dir(&dest)?;
    let unpack_options = UnpackOptions {
        key: options.key.clone(),
        expected_sha256: Some(packed.sha256_hex.clone()),
        ..UnpackOptions::default()
    };
    let started = Instant::now();
    let unpacked = unpack(BufReader::new(File::open(&archive)?), &dest, &unpack_options)?;
    let unpack_time = started.elapsed().as_secs_f64();

    let mib = |bytes: u64| bytes as f64 / (1 << 20) as f64;
    println!(
        "{} files, {:.1} MiB -> {:.1} MiB stored (level {}, {} threads, {})",
        packed.file_count,
        mib(packed.size_bytes),
        mib(packed.stored_bytes),
        options.level,
        options.threads,
        if options.key.is_some() { "encrypted" } else { "plain" }
    );
    println!("pack:   {pack_time:.2} s, {:.0} MiB/s of file data", mib(packed.size_bytes) / pack_time);
    println!("unpack: {unpack_time:.2} s, {:.0} MiB/s of file data", mib(unpacked.size_bytes) / unpack_time);
    Ok(())
}
