//! The browser console's files, carried in the binary: ours from `web/src/`, xterm.js and its
//! fit addon from `web/node_modules/` through the table `build.rs` generates.
//!
//! **Invariant:** the console loads nothing from another host and nothing from the disk at run
//! time: every file it needs is in [`file`], so a single binary on a machine without internet
//! serves a complete console. A build without the npm files still serves the API; the console
//! then reports why it is missing ([`vendor_missing`]).

/// One file of the console, served at `/console/{name}`.
pub struct ConsoleFile {
    /// The name under `/console/`.
    pub name: &'static str,
    /// Its `Content-Type`.
    pub content_type: &'static str,
    /// Its bytes.
    pub bytes: &'static [u8],
}

/// The generated table's element type (see build.rs).
type VendorFile = ConsoleFile;

include!(concat!(env!("OUT_DIR"), "/console_vendor.rs"));

/// The console page itself, served at `/`.
pub const INDEX_HTML: &str = include_str!("../../../web/src/index.html");

/// Our own files besides the page.
const OWN: &[ConsoleFile] = &[
    ConsoleFile {
        name: "console.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../../web/src/console.js"),
    },
    ConsoleFile {
        name: "console.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("../../../web/src/console.css"),
    },
];

/// The file served as `/console/{name}`, if there is one.
pub fn file(name: &str) -> Option<&'static ConsoleFile> {
    let vendor: &[ConsoleFile] = VENDOR.unwrap_or(&[]);
    OWN.iter().chain(vendor).find(|file| file.name == name)
}

/// Why the build has no xterm.js (so no working console), or `None` when it has.
pub fn vendor_missing() -> Option<&'static str> {
    VENDOR.err()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_only_loads_files_the_binary_carries() {
        let mut referenced = 0;
        for part in INDEX_HTML.split("/console/").skip(1) {
            let name: String = part.chars().take_while(|c| !matches!(c, '"' | '\'' | '?' | '#')).collect();
            referenced += 1;
            if vendor_missing().is_none() || OWN.iter().any(|own| own.name == name) {
                assert!(file(&name).is_some(), "index.html loads /console/{name}, which the binary lacks");
            }
        }
        assert!(referenced >= 2, "index.html should load its script and styles from /console/");
        assert!(!INDEX_HTML.contains("src=\"http") && !INDEX_HTML.contains("href=\"http"), "a third-party host");
    }

    #[test]
    fn the_script_imports_only_files_the_binary_carries() {
        let script = std::str::from_utf8(file("console.js").expect("console.js").bytes).expect("utf-8");
        let imports: Vec<&str> = script
            .lines()
            .filter_map(|line| line.trim().strip_prefix("import "))
            .filter_map(|line| line.split(['"', '\'']).nth(1))
            .collect();
        assert!(!imports.is_empty(), "console.js imports xterm.js");
        for import in imports {
            let name = import.strip_prefix("./").unwrap_or_else(|| panic!("a non-local import: {import}"));
            if vendor_missing().is_none() {
                assert!(file(name).is_some(), "console.js imports {import}, which the binary lacks");
            }
        }
    }
}
