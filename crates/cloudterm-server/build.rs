//! Puts the browser console's third-party files (xterm.js and its fit addon, from npm) into the
//! server binary, so `cloudterm serve` serves a console that needs no internet and no files
//! beside the binary.
//!
//! Why this shape:
//! - Nothing built or fetched is committed: `web/package-lock.json` pins the exact versions and
//!   this script runs `npm ci` in `web/` when the files it needs are missing or their packages
//!   are not the versions the lock pins (`build_lock.rs`: a `node_modules` from before a lock
//!   change is replaced, not embedded), so the README's
//!   `cargo build --release --bins` gives a working console on a fresh clone. `npm ci` runs in
//!   `web/` (not in `OUT_DIR`) so the build and the browser test share one `node_modules`, and
//!   a fresh target directory does not mean another download. The crate is never packaged
//!   (`publish = false`), so writing beside the sources breaks no `cargo package` check.
//! - Files are embedded with `include_bytes!` from a generated table (`OUT_DIR/console_vendor.rs`)
//!   rather than the `rust-embed` crate: five files need no dependency, and rustc then tracks
//!   each embedded file itself.
//! - Without npm (or with `CLOUDTERM_CONSOLE_NPM=0`, or when `npm ci` fails) the build still
//!   succeeds: the table holds the reason instead, `/` answers 503 with a page saying how to
//!   build the console, and cargo prints a warning. The API never depends on the console.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

#[path = "build_lock.rs"]
mod build_lock;

/// The third-party files the console loads: path under `web/node_modules`, the name it is
/// served under (`/console/NAME`), and its content type.
const VENDOR: &[(&str, &str, &str)] = &[
    ("@xterm/xterm/lib/xterm.mjs", "xterm.mjs", "text/javascript; charset=utf-8"),
    ("@xterm/xterm/css/xterm.css", "xterm.css", "text/css; charset=utf-8"),
    ("@xterm/xterm/LICENSE", "xterm.LICENSE.txt", "text/plain; charset=utf-8"),
    ("@xterm/addon-fit/lib/addon-fit.mjs", "addon-fit.mjs", "text/javascript; charset=utf-8"),
    ("@xterm/addon-fit/LICENSE", "addon-fit.LICENSE.txt", "text/plain; charset=utf-8"),
];

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let web = manifest.join("../../web");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    println!("cargo:rerun-if-env-changed=CLOUDTERM_CONSOLE_NPM");
    for watched in ["package.json", "package-lock.json", "src"] {
        println!("cargo:rerun-if-changed={}", web.join(watched).display());
    }
    let modules = web.join("node_modules");
    let vendored = ensure_vendored(&web, &modules);
    // Watch what was embedded, or, while it is missing, the folder an `npm ci` run by hand
    // would fill (a missing path would make cargo rerun this script on every build).
    match &vendored {
        Ok(()) => {
            VENDOR.iter().for_each(|(path, _, _)| println!("cargo:rerun-if-changed={}", modules.join(path).display()));
            // A package replaced by hand (another version) shows in its package.json.
            for package in packages() {
                println!("cargo:rerun-if-changed={}", modules.join(package).join("package.json").display());
            }
        }
        Err(_) => println!("cargo:rerun-if-changed={}", web.display()),
    }
    if let Err(why) = &vendored {
        println!("cargo:warning=the browser console is built without xterm.js ({why}); `/` will say how to fix it");
    }
    let code = generate(&modules, vendored);
    std::fs::write(out.join("console_vendor.rs"), code).expect("write OUT_DIR/console_vendor.rs");
}

/// The npm packages the [`VENDOR`] files come from.
fn packages() -> Vec<&'static str> {
    let mut packages: Vec<&str> = VENDOR.iter().map(|(path, _, _)| build_lock::package_of(path)).collect();
    packages.dedup();
    packages
}

/// What is wrong with `web/node_modules` for the console: nothing (`Ok`), or why it needs an
/// `npm ci` (a file missing, a package not at the locked version).
fn check_vendored(web: &Path, modules: &Path) -> Result<(), String> {
    if let Some((path, _, _)) = VENDOR.iter().find(|(path, _, _)| !modules.join(path).is_file()) {
        return Err(format!("web/node_modules lacks {path}"));
    }
    let lock = std::fs::read_to_string(web.join("package-lock.json"))
        .map_err(|err| format!("cannot read web/package-lock.json: {err}"))?;
    let installed = |package: &str| std::fs::read_to_string(modules.join(package).join("package.json")).ok();
    let stale = build_lock::stale_packages(&lock, &packages(), installed)?;
    if stale.is_empty() {
        Ok(())
    } else {
        Err(format!("web/node_modules is not what web/package-lock.json pins: {}", stale.join("; ")))
    }
}

/// Makes sure every [`VENDOR`] file is in `web/node_modules` at the locked version, running
/// `npm ci` if not.
fn ensure_vendored(web: &Path, modules: &Path) -> Result<(), String> {
    let Err(why) = check_vendored(web, modules) else { return Ok(()) };
    if std::env::var_os("CLOUDTERM_CONSOLE_NPM").is_some_and(|value| value == "0") {
        return Err(format!("CLOUDTERM_CONSOLE_NPM=0 and {why}"));
    }
    let ran = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(web)
        .output()
        .map_err(|err| format!("cannot run npm: {err}"))?;
    if !ran.status.success() {
        let stderr = String::from_utf8_lossy(&ran.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
        return Err(format!(
            "npm ci in web/ failed ({}): {}",
            ran.status,
            tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
        ));
    }
    check_vendored(web, modules).map_err(|why| format!("npm ci in web/ succeeded, but {why}"))
}

/// The generated table: `VENDOR: Result<&[VendorFile], &str>`.
fn generate(modules: &Path, vendored: Result<(), String>) -> String {
    let mut code = String::from("// Generated by build.rs: the console's third-party files.\n");
    match vendored {
        Ok(()) => {
            code.push_str("pub(crate) static VENDOR: Result<&[VendorFile], &str> = Ok(&[\n");
            for (path, name, content_type) in VENDOR {
                let file = modules.join(path);
                let _ = writeln!(
                    code,
                    "    VendorFile {{ name: {name:?}, content_type: {content_type:?}, bytes: include_bytes!({:?}) }},",
                    file.display().to_string()
                );
            }
            code.push_str("]);\n");
        }
        Err(why) => {
            let _ = writeln!(code, "pub(crate) static VENDOR: Result<&[VendorFile], &str> = Err({why:?});");
        }
    }
    code
}
