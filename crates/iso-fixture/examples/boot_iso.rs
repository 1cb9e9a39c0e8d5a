//! Boot an ISO in QEMU and print what the fixture's `/init` saw, as JSON.
//!
//! `cargo run -p diskforge-iso-fixture --example boot_iso -- ISO FIRMWARE [TIMEOUT_SECS]`
//! with FIRMWARE one of `seabios-cdrom`, `seabios-hard-disk`, `ovmf`, `ovmf-hard-disk`.
//! Exit status 0 when the fixture booted, found its medium and finished; 1 otherwise (the
//! serial log's tail goes to stderr).

use std::process::ExitCode;
use std::time::Duration;

use diskforge_iso_fixture::boot::{Firmware, boot};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(iso), Some(fw)) = (
        args.first(),
        args.get(1).and_then(|f| Firmware::from_name(f)),
    ) else {
        eprintln!(
            "usage: boot_iso ISO seabios-cdrom|seabios-hard-disk|ovmf|ovmf-hard-disk [TIMEOUT_SECS]"
        );
        return ExitCode::from(2);
    };
    let timeout = args.get(2).and_then(|t| t.parse().ok()).unwrap_or(120);
    match boot(iso.as_ref(), fw, Duration::from_secs(timeout)) {
        Ok(r) => {
            println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
            if r.ok() {
                ExitCode::SUCCESS
            } else {
                eprintln!(
                    "boot_iso: the fixture did not finish; serial log tail:\n{}",
                    r.log_tail(40)
                );
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("boot_iso: {e}");
            ExitCode::FAILURE
        }
    }
}
