//! Boot the host's kernel with a busybox initramfs that prints a marker, and show the report.
//!
//! `sudo cargo run -p diskforge-vm --example boot_kernel -- [TIMEOUT_SECS]` (reading
//! `/boot/vmlinuz-*` needs root on Debian). Prints the accelerator, the time to the marker
//! and the serial log's tail; exit 1 with the error (QEMU's stderr, the serial tail) otherwise.

use std::process::ExitCode;
use std::time::Duration;

use diskforge_vm::{Expect, Initramfs, Kernel, KernelBoot, Vm, boot_to_marker};

const INIT: &str = "#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
for m in $(cat /etc/diskforge-modules); do insmod \"$m\"; done
echo \"HELLO-FROM-THE-GUEST $(uname -r) $(cut -d' ' -f1 /proc/modules | tr '\\n' ' ')\"
poweroff -f
";

fn run(timeout: u64) -> Result<(), diskforge_vm::Error> {
    let kernel = Kernel::host()?;
    let dir = std::env::temp_dir().join("diskforge-vm-example");
    std::fs::create_dir_all(&dir).map_err(|source| diskforge_vm::Error::Io {
        action: "creating",
        path: dir.clone(),
        source,
    })?;
    let initrd = dir.join("initramfs.cpio");
    let written = Initramfs::new(INIT)
        .modules(&kernel.modules_dir, &["loop"])
        .write(&initrd)?;
    println!(
        "initramfs {} with modules {:?}",
        initrd.display(),
        written.modules
    );
    let vm = Vm::kernel(KernelBoot {
        kernel: kernel.vmlinux(&dir)?,
        initrd,
        cmdline: "quiet".into(),
    });
    let r = boot_to_marker(
        &vm,
        &Expect::marker("HELLO-FROM-THE-GUEST", Duration::from_secs(timeout)),
    )?;
    println!(
        "{} ({:?}): marker after {:.1} s, QEMU ended after {:.1} s",
        r.accel,
        r.accel_source,
        r.done_after.unwrap_or_default(),
        r.seconds
    );
    println!("{}", r.log_tail(3));
    Ok(())
}

fn main() -> ExitCode {
    let timeout = std::env::args()
        .nth(1)
        .and_then(|t| t.parse().ok())
        .unwrap_or(120);
    match run(timeout) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("boot_kernel: {e}");
            ExitCode::FAILURE
        }
    }
}
