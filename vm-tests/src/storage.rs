//! VM tests for storage: what the host kernel cannot do (device-mapper/LVM, vfat mounts).
//!
//! - `storage::lvm_two_lvs_formatted_and_mounted`: a VG on a loop device with two LVs
//!   (`lvm2-cmd`, udev-less config), one extended, both formatted with `diskforge-mkfs`
//!   (ext4 populated rootless, vfat populated with mcopy), mounted and read back, then every
//!   LV, the VG, the PV label and the loop device removed — checked with `dmsetup ls`, `pvs`
//!   ("Failed to find physical volume") and the label sector (no `LABELONE` left).
//! - `storage::vfat_populated_image_mounts`: a rootless-populated vfat image mounts and holds
//!   the tree.

use std::path::Path;

use anyhow::{Context, Result, ensure};
use diskforge_cmd::Cmd;
use diskforge_mkfs::{FsType, MkfsOptions, Target};
use libtest_mimic::Trial;
use lvm2_cmd::{LvCreate, LvSize, Lvm, VolumeGroup};

use crate::trial;

/// This module's tests.
pub fn tests() -> Vec<Trial> {
    vec![
        trial(
            "storage::lvm_two_lvs_formatted_and_mounted",
            lvm_two_lvs_formatted_and_mounted,
        ),
        trial(
            "storage::vfat_populated_image_mounts",
            vfat_populated_image_mounts,
        ),
    ]
}

const VG: &str = "dfstorage";

fn tree(root: &Path) -> Result<std::path::PathBuf> {
    let t = root.join("tree");
    std::fs::create_dir_all(t.join("EFI/BOOT"))?;
    std::fs::write(t.join("EFI/BOOT/grub.cfg"), "set timeout=0\n")?;
    std::fs::write(t.join("hello.txt"), "hello from diskforge\n")?;
    Ok(t)
}

/// Mount `dev` on a fresh dir under `dir`, run `check` on it, always unmount and rmdir.
fn with_mount(
    dev: &Path,
    fs: &str,
    dir: &Path,
    check: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    let mnt = dir.join(format!("mnt-{fs}"));
    std::fs::create_dir(&mnt)?;
    Cmd::new("mount")
        .args(["-t", fs])
        .arg(dev)
        .arg(&mnt)
        .run()?;
    let res = check(&mnt);
    Cmd::new("umount").arg(&mnt).run()?;
    std::fs::remove_dir(&mnt)?;
    res
}

fn same_tree(t: &Path, mnt: &Path) -> Result<()> {
    for f in ["hello.txt", "EFI/BOOT/grub.cfg"] {
        ensure!(
            std::fs::read(t.join(f))?
                == std::fs::read(mnt.join(f)).with_context(|| format!("reading {f}"))?,
            "{f} differs"
        );
    }
    Ok(())
}

/// Wait for a device node; without udev, lvm creates nodes itself, `vgmknodes` repairs.
fn ensure_node(lvm: &Lvm, path: &Path) -> Result<()> {
    if !path.exists() {
        lvm.vgmknodes(VG)?;
    }
    ensure!(path.exists(), "{} missing after vgmknodes", path.display());
    Ok(())
}

/// Whether one of the first four sectors of `dev` holds an LVM2 label (`LABELONE` at the
/// sector's start, where `pvcreate` writes it and `pvremove` wipes it).
fn has_lvm_label(dev: &Path) -> Result<bool> {
    use std::io::Read;
    let mut head = [0u8; 2048];
    std::fs::File::open(dev)
        .and_then(|mut f| f.read_exact(&mut head))
        .with_context(|| format!("reading {}", dev.display()))?;
    Ok(head.chunks(512).any(|s| s.starts_with(b"LABELONE")))
}

fn lvm_two_lvs_formatted_and_mounted() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let t = tree(dir.path())?;
    let img = dir.path().join("pv.img");
    std::fs::File::create(&img)?.set_len(128 << 20)?;
    let dev = Cmd::new("losetup")
        .args(["--find", "--show"])
        .arg(&img)
        .read()?;
    let devp = Path::new(&dev);
    let lvm = Lvm::without_udev().only_devices(&[devp]);
    let res = (|| -> Result<()> {
        let vg = VolumeGroup::create(&lvm, VG, &[devp], Some(4 << 20))?;
        let body = (|| -> Result<()> {
            let root = vg.create_lv(&LvCreate::new("root", "32M".parse()?))?;
            root.extend(LvSize::Extents(4), true, false)?;
            let data = vg.create_lv(&LvCreate::new("data", "100%FREE".parse()?))?;
            let lvs = lvm.lvs(Some(VG))?;
            ensure!(
                lvs.len() == 2 && lvs.iter().all(|l| l.is_active()),
                "lvs: {lvs:?}"
            );
            let root_row = root.report()?.context("root not in lvs")?;
            ensure!(
                root_row.lv_size == 48 << 20,
                "root is {} bytes",
                root_row.lv_size
            );
            let vg_row = vg.report()?.context("vg not in vgs")?;
            ensure!(
                vg_row.lv_count == 2 && vg_row.vg_free_count == 0,
                "vgs: {vg_row:?}"
            );
            let pvs = lvm.pvs(&[devp])?;
            ensure!(
                pvs.len() == 1 && pvs[0].vg_name.as_deref() == Some(VG),
                "pvs: {pvs:?}"
            );
            ensure!(has_lvm_label(devp)?, "no LABELONE on the PV {dev}");

            ensure_node(&lvm, &root.path())?;
            ensure_node(&lvm, &data.path())?;
            let mut o = MkfsOptions::new(FsType::Ext4);
            o.label = Some("lvroot".into());
            o.populate_from = Some(t.clone());
            let r = diskforge_mkfs::mkfs(&o, &Target::Device { path: root.path() })?;
            ensure!(r.detected.and_then(|d| d.label).as_deref() == Some("lvroot"));
            let mut o = MkfsOptions::new(FsType::Vfat);
            o.label = Some("LVDATA".into());
            o.populate_from = Some(t.clone());
            diskforge_mkfs::mkfs(&o, &Target::Device { path: data.path() })?;
            with_mount(&root.path(), "ext4", dir.path(), |m| same_tree(&t, m))?;
            with_mount(&data.path(), "vfat", dir.path(), |m| same_tree(&t, m))?;
            data.teardown()?;
            root.teardown()?;
            ensure!(lvm.lvs(Some(VG))?.is_empty(), "LVs left after teardown");
            Ok(())
        })();
        let down = vg.teardown();
        body?;
        down?;
        let dm = Cmd::new("dmsetup")
            .arg("ls")
            .env("DM_DISABLE_UDEV", "1")
            .read()?;
        ensure!(!dm.contains(VG), "device-mapper still has: {dm}");
        // The PV label is gone: lvm no longer finds a PV there (it says so; any other failure
        // is not proof), and the label sector no longer reads LABELONE.
        match lvm.pvs(&[devp]) {
            Ok(pvs) => ensure!(pvs.is_empty(), "PV label left on {dev}: pvs {pvs:?}"),
            Err(lvm2_cmd::Error::Run { source, .. })
                if source
                    .to_string()
                    .contains(&format!("Failed to find physical volume \"{dev}\"")) => {}
            Err(e) => return Err(anyhow::Error::new(e).context("pvs after pvremove")),
        }
        ensure!(
            !has_lvm_label(devp)?,
            "LABELONE still on {dev} after pvremove"
        );
        Ok(())
    })();
    Cmd::new("losetup").args(["-d", &dev]).run()?;
    res
}

fn vfat_populated_image_mounts() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let t = tree(dir.path())?;
    let img = dir.path().join("esp.img");
    let mut o = MkfsOptions::new(FsType::Vfat);
    o.label = Some("ESP".into());
    o.populate_from = Some(t.clone());
    o.source_date_epoch = Some(1_700_000_000);
    diskforge_mkfs::mkfs(
        &o,
        &Target::File {
            path: img.clone(),
            size: Some(32 << 20),
        },
    )?;
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt)?;
    Cmd::new("mount")
        .args(["-t", "vfat", "-o", "loop,ro"])
        .arg(&img)
        .arg(&mnt)
        .run()?;
    let res = same_tree(&t, &mnt);
    Cmd::new("umount").arg(&mnt).run()?;
    res
}
