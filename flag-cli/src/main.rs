//! flagctl: the command-line client (not yet implemented; see the CLI issue).

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!("flagctl is not implemented yet: see the CLI issue in the tracker");
    ExitCode::from(2)
}
