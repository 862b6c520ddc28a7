//! `cloudterm-linux-helper`: the single-threaded process that does all container work of the
//! linux runtime. It is spawned by the server, never run by hand.

fn main() -> std::process::ExitCode {
    cloudterm_runtime_linux::helper_main()
}
