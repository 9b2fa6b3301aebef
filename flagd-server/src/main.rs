//! flagd-server: the flag server (not yet implemented; see the server issue).

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!("flagd-server is not implemented yet: see the server issue in the tracker");
    ExitCode::from(2)
}
