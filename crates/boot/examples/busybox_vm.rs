//! Build a bootable busybox disk image offline and boot it, the `busybox vm` way:
//!
//! ```text
//! cargo run -p diskforge-boot --example busybox_vm -- CONFIG.yaml OUT_DIR [SIZE_MIB] [--boot [--verbose] [--virtio]] [--shell] [--cmdline=ARGS] [--fs-type=T]
//! ```
//!
//! busybox root tree → block-device plan (diskforge-blockdev, root = the tree) → grub.cfg and
//! `BOOTX64.EFI` (when the layout has an ESP at `/boot/efi`) into the tree → offline create
//! → GRUB for BIOS into the image → with `--boot`, a boot under SeaBIOS (and OVMF with an
//! ESP) to the marker. Prints each step's time. No root, no loop device, no mount.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use diskforge_blockdev::{CreateOptions, PlanOptions, create, plan_text};
use diskforge_boot::{
    BusyboxOptions, GrubConfig, busybox_root, install_bios, install_efi, write_grub_cfg,
};
use diskforge_vm::{Drive, Expect, Firmware, Format, Vm, boot_to_marker};

const MARKER: &str = "diskforge-example-booted";

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let boot = args.iter().any(|a| a == "--boot");
    let verbose = args.iter().any(|a| a == "--verbose");
    let virtio = args.iter().any(|a| a == "--virtio");
    let fs_type = args
        .iter()
        .find_map(|a| a.strip_prefix("--fs-type="))
        .map(str::to_owned);
    let cmdline = args
        .iter()
        .find_map(|a| a.strip_prefix("--cmdline="))
        .unwrap_or("panic=-1");
    let pos: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let (Some(config), Some(out)) = (pos.first(), pos.get(1)) else {
        bail!(
            "usage: busybox_vm CONFIG.yaml OUT_DIR [SIZE_MIB] [--boot [--verbose] [--virtio]] [--shell] [--cmdline=ARGS] [--fs-type=T]"
        );
    };
    let size_mib: u64 = pos
        .get(2)
        .map_or(Ok(128), |s| s.parse())
        .context("SIZE_MIB")?;
    let out = PathBuf::from(out);
    let tree = out.join("root");
    let t = Instant::now();
    let root = busybox_root(
        &tree,
        &BusyboxOptions {
            marker: MARKER.into(),
            poweroff: !args.iter().any(|a| a == "--shell"),
            extra_modules: fs_type
                .iter()
                .filter(|t| !t.starts_with("ext"))
                .cloned()
                .collect(),
            source_date_epoch: Some(1_700_000_000),
            ..BusyboxOptions::default()
        },
    )?;
    println!(
        "busybox root: kernel {} ({:.2} s)",
        root.kernel_release,
        t.elapsed().as_secs_f64()
    );

    let text = std::fs::read_to_string(config).with_context(|| config.to_string())?;
    let mut popts = PlanOptions {
        image_size: Some(size_mib << 20),
        image_dir: out.join("images"),
        root: Some(tree.clone()),
        uuid_seed: Some("busybox-vm-example".into()),
        source_date_epoch: Some(1_700_000_000),
        root_fs_type: fs_type.clone(),
        ..PlanOptions::default()
    };
    let cfg = diskforge_blockdev::load(&text, &popts)?;
    popts.content = diskforge_blockdev::measure_tree(&tree, &cfg)?;
    let plan = plan_text(&text, &popts)?;
    let root_fs = plan
        .filesystems
        .iter()
        .find(|f| f.mount_point.as_deref() == Some("/"))
        .context("the config mounts nothing at /")?;
    let esp = plan
        .filesystems
        .iter()
        .find(|f| f.mount_point.as_deref() == Some("/boot/efi"));
    let grub = GrubConfig {
        source_date_epoch: Some(1_700_000_000),
        ..GrubConfig::for_root_fs(&root.kernel, Some(root.initrd.clone()), root_fs, cmdline)
    };
    let t = Instant::now();
    write_grub_cfg(&tree, &grub)?;
    if esp.is_some() {
        install_efi(&tree.join("boot/efi"), &grub)?;
    }
    create(
        &plan,
        &out.join("state"),
        &CreateOptions::default(),
        &mut |_| {},
    )?;
    let disk = &plan.disks[0];
    let bios = install_bios(&disk.path, disk, root_fs, &grub)?;
    println!(
        "{}: core.img {} sectors at {} ({:?}); {:.2} s",
        disk.path.display(),
        bios.core_sectors,
        bios.core_sector,
        bios.area,
        t.elapsed().as_secs_f64()
    );
    if boot {
        let mut firmwares = vec![Firmware::SeaBios];
        if esp.is_some() {
            firmwares.push(Firmware::Ovmf);
        }
        for fw in firmwares {
            let mut vm = Vm::disk(Drive::ide_disk(&disk.path, Format::Raw), fw);
            if virtio {
                vm.drives = vec![Drive::virtio(
                    &disk.path,
                    Format::Raw,
                    diskforge_vm::Access::Snapshot,
                )];
                vm.boot_from = Some(diskforge_vm::BootDevice::Disk);
            }
            let start = Instant::now();
            let r = if verbose {
                diskforge_vm::run(
                    &vm,
                    &Expect::marker(MARKER, Duration::from_secs(120)),
                    |l| {
                        println!("{:6.2} {l}", start.elapsed().as_secs_f64());
                    },
                )?
            } else {
                boot_to_marker(&vm, &Expect::marker(MARKER, Duration::from_secs(120)))?
            };
            println!(
                "{fw:?}: marker after {:.1} s ({})",
                r.done_after.unwrap_or_default(),
                r.accel
            );
        }
    }
    Ok(())
}
