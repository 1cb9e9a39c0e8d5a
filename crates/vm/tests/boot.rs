//! Real boots under QEMU with TCG: the host's kernel with an initramfs built here.
//!
//! - kernel + initramfs to a marker: the `/init` loads a module (with its dependencies from
//!   `modules.dep`) and reports `/proc/modules` and an extra file, so the report proves the
//!   archive's layout, the module order and the launcher's marker handling;
//! - a marker that never comes: the timeout ends QEMU and the error carries the serial tail;
//! - QEMU failing (a missing disk image): the error shows QEMU's own stderr;
//! - a stale cached "kvm" answer: the boot under it fails, the launcher probes again and
//!   boots under TCG, and the cache file is corrected (on a host where KVM works, the boot
//!   simply succeeds under KVM).
//!
//! The first and the last need root (`/boot/vmlinuz-*` is mode 0600 on Debian). Not covered: KVM (it
//! hangs on this machine; the probe and its cache are unit-tested), OVMF (the ISO fixture's
//! boot tests boot OVMF through this crate).

use std::time::{Duration, Instant};

use diskforge_vm::{
    AccelPolicy, Drive, Error, Expect, Firmware, Format, Initramfs, Kernel, KernelBoot, Vm,
    boot_to_marker,
};

const BOOTED: &str = "VMTEST-BOOTED";
const DONE: &str = "VMTEST-DONE";

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
echo VMTEST-BOOTED
for m in $(cat /etc/diskforge-modules); do insmod "$m" || echo "VMTEST-INSMOD-FAILED $m"; done
echo "VMTEST-MODULES $(cut -d' ' -f1 /proc/modules | sort | tr '\n' ' ')"
echo "VMTEST-FILE $(cat /etc/vmtest.conf)"
echo VMTEST-DONE
poweroff -f
"#;

#[test]
#[ignore = "needs root"]
fn kernel_and_initramfs_boot_to_marker_under_tcg() {
    diskforge_testutil::require_root();
    let dir = tempfile::tempdir().unwrap();
    let kernel = Kernel::host().unwrap();
    let initrd = dir.path().join("initramfs.cpio");
    // isofs needs cdrom: the order must load cdrom first.
    let written = Initramfs::new(INIT)
        .modules(&kernel.modules_dir, &["isofs"])
        .file("etc/vmtest.conf", 0o644, "from the host")
        .write(&initrd)
        .unwrap();
    let names: Vec<String> = written
        .modules
        .iter()
        .map(|m| diskforge_vm::modules::module_name(m))
        .collect();
    assert_eq!(names.last().map(String::as_str), Some("isofs"), "{names:?}");
    assert!(names.contains(&"cdrom".to_owned()), "{names:?}");

    // The uncompressed kernel (PVH entry) saves the in-guest decompression under TCG.
    let vmlinux = kernel
        .vmlinux(std::path::Path::new(env!("CARGO_TARGET_TMPDIR")))
        .unwrap();
    assert!(std::fs::read(&vmlinux).unwrap().starts_with(b"\x7fELF"));
    let mut vm = Vm::kernel(KernelBoot {
        kernel: vmlinux,
        initrd,
        cmdline: "quiet rdinit=/init".into(),
    });
    vm.accel = AccelPolicy::Tcg;
    let mut seen = Vec::new();
    let expect = Expect::marker(DONE, Duration::from_secs(120)).booted(BOOTED);
    let r = diskforge_vm::run(&vm, &expect, |l| seen.push(l.to_owned())).unwrap();
    eprintln!(
        "booted after {:?} s, done after {:?} s, total {:.1} s ({})",
        r.booted_after, r.done_after, r.seconds, r.accel
    );
    assert!(r.done(), "serial tail:\n{}", r.log_tail(40));
    assert_eq!(r.accel, diskforge_vm::Accel::Tcg);
    assert!(r.booted_after.unwrap() <= r.done_after.unwrap());
    assert!(!r.timed_out && !r.reprobed);
    assert_eq!(seen, r.log, "the callback saw every line");
    let line = |p: &str| r.log.iter().find_map(|l| l.strip_prefix(p)).map(str::trim);
    let loaded: Vec<&str> = line("VMTEST-MODULES").unwrap().split(' ').collect();
    for m in &names {
        assert!(loaded.contains(&m.as_str()), "{m} not loaded: {loaded:?}");
    }
    assert_eq!(line("VMTEST-FILE"), Some("from the host"));
    assert!(!r.log.iter().any(|l| l.contains("VMTEST-INSMOD-FAILED")));
    // The guest powered off within the grace period: QEMU exited by itself, status 0.
    assert_eq!(r.exit_code, Some(0));
}

/// A cache file claiming KVM works (as an older probe or another host could have left it).
/// Here KVM hangs on a real kernel, so the first attempt reaches no marker; the launcher
/// must re-probe, find TCG, boot again under it and correct the cache.
#[test]
#[ignore = "needs root"]
fn stale_cached_kvm_is_reprobed() {
    diskforge_testutil::require_root();
    let dir = tempfile::tempdir().unwrap();
    let kernel = Kernel::host().unwrap();
    let initrd = dir.path().join("initramfs.cpio");
    Initramfs::new(INIT).write(&initrd).unwrap();
    let cache_dir = dir.path().join("cache");
    std::fs::create_dir(&cache_dir).unwrap();
    let cache_file = cache_dir.join(format!("accel-{}", kernel.release));
    std::fs::write(&cache_file, "kvm").unwrap();
    let mut vm = Vm::kernel(KernelBoot {
        kernel: kernel
            .vmlinux(std::path::Path::new(env!("CARGO_TARGET_TMPDIR")))
            .unwrap(),
        initrd,
        cmdline: "quiet rdinit=/init".into(),
    });
    vm.accel_cache_dir = Some(cache_dir);
    let expect = Expect::marker(DONE, Duration::from_secs(45)).booted(BOOTED);
    let r = diskforge_vm::run(&vm, &expect, |_| {}).unwrap();
    eprintln!(
        "accel {} ({:?}), reprobed {}, {:.1} s",
        r.accel, r.accel_source, r.reprobed, r.seconds
    );
    assert!(r.done(), "serial tail:\n{}", r.log_tail(40));
    match r.accel {
        diskforge_vm::Accel::Tcg => {
            assert!(r.reprobed, "a cached kvm that failed must be re-probed");
            assert_eq!(std::fs::read_to_string(&cache_file).unwrap(), "tcg");
        }
        diskforge_vm::Accel::Kvm => {
            assert!(!r.reprobed, "KVM worked: nothing to re-probe");
            assert_eq!(std::fs::read_to_string(&cache_file).unwrap(), "kvm");
        }
    }
}

/// A disk with no boot sector: SeaBIOS never boots anything, the timeout ends QEMU.
#[test]
fn missing_marker_times_out_with_the_serial_tail() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("blank.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let mut vm = Vm::disk(Drive::ide_disk(&disk, Format::Raw), Firmware::SeaBios);
    vm.accel = AccelPolicy::Tcg;
    let start = Instant::now();
    let err = boot_to_marker(&vm, &Expect::marker("NEVER", Duration::from_secs(3))).unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(20));
    match &err {
        Error::MarkerNotSeen { marker, how, .. } => {
            assert_eq!(marker, "NEVER");
            assert_eq!(how, "within 3s");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(
        err.to_string()
            .contains("no NEVER on the serial console within 3s (tcg)"),
        "{err}"
    );
}

/// QEMU refuses to start: its own stderr is in the error.
#[test]
fn qemu_failure_shows_its_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let mut vm = Vm::disk(
        Drive::ide_disk(dir.path().join("no-such.qcow2"), Format::Qcow2),
        Firmware::SeaBios,
    );
    vm.accel = AccelPolicy::Tcg;
    let err = boot_to_marker(&vm, &Expect::marker("X", Duration::from_secs(30))).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Qemu { .. }), "{msg}");
    assert!(
        msg.contains("no-such.qcow2") && msg.contains("No such file"),
        "{msg}"
    );
}
