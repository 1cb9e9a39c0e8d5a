//! Builds a small installer-like hybrid ISO for tests and demos, and boots ISOs in QEMU to
//! check what the booted system saw.
//!
//! [`build`] lays out a tree shaped like a Fedora/RHEL installer (lorax) ISO and assembles it
//! with `xorriso -as mkisofs`, without downloads and without root:
//! - `images/pxeboot/vmlinuz`: Debian's kernel from `/boot` (package `linux-image-amd64`);
//! - `images/pxeboot/initrd.img`: busybox-static plus the modules that find the boot medium
//!   (from `/lib/modules/VERSION`, dependencies from `modules.dep`); its `/init` prints
//!   [`markers`] on the serial console: booted, the kernel command line, the kickstart named by
//!   `inst.ks=` and any `/diskforge-*` file read from the medium, then powers off;
//! - BIOS: isolinux (`isolinux/isolinux.cfg`), El Torito no-emulation, isohybrid MBR;
//! - UEFI: a FAT `efiboot.img` made with `mkfs.vfat` + mtools holding GRUB
//!   (`grub-mkimage -O x86_64-efi`, prefix `/EFI/BOOT`) and `EFI/BOOT/grub.cfg`, as the El
//!   Torito EFI entry; either on the tree as `images/efiboot.img` and marked in the isohybrid
//!   GPT (classic lorax, [`EspLayout::InTree`]) or only as appended GPT partition 2 (the
//!   El Torito entry points into it, [`EspLayout::Appended`]). `EFI/BOOT/grub.cfg` and
//!   `boot/grub/grub.cfg` also sit on the ISO tree.
//!
//! Which config each boot reads (measured with QEMU 7.2, OVMF 2022.11, GRUB 2.06):
//! SeaBIOS CD and hard disk: `isolinux/isolinux.cfg`; OVMF CD: the tree's
//! `EFI/BOOT/grub.cfg` (GRUB sees the whole ISO 9660 volume); OVMF hard disk: the tree's
//! `EFI/BOOT/grub.cfg` with [`EspLayout::InTree`] (OVMF boots the El Torito image), but
//! `EFI/BOOT/grub.cfg` inside the FAT image with [`EspLayout::Appended`] (OVMF boots the GPT
//! ESP and GRUB reads its own partition) — the USB/UEFI case remaster tools get wrong.
//!
//! [`sample::build_sample`] makes a lighter image from the same helpers for remaster tests:
//! placeholder kernel and initrd, no GRUB binary, optionally the ESP appended as MBR
//! partition 2; `diskforge-iso`'s tests, examples and benchmark use it.
//!
//! [`boot::boot`] runs `qemu-system-x86_64` with SeaBIOS (the ISO as a CD, or as a hard disk:
//! the USB-stick case) or OVMF, and parses the markers into a [`boot::BootReport`].
//!
//! It does not remaster anything (that is `diskforge-iso`), does not verify the ISO 9660
//! structures itself (tests use `xorriso -report_el_torito`, `sfdisk`, `mdir`), and does not
//! make a real installer: the initrd only reports and powers off. Layout references: lorax's
//! `templates.d/99-generic/x86.tmpl`, xorrisofs(1), El Torito 1.0, syslinux's isolinux docs,
//! GRUB manual ("search", "linux").

pub mod boot;
pub mod configs;
pub mod initrd;
pub mod sample;

use std::path::{Path, PathBuf};

use diskforge_cmd::Cmd;
use serde::Serialize;

/// Marker lines the fixture's `/init` prints on the serial console (each at a line start,
/// followed by a space and the value where there is one).
pub mod markers {
    /// `/init` started.
    pub const BOOTED: &str = "DISKFORGE-FIXTURE-BOOTED";
    /// Followed by `/proc/cmdline`.
    pub const CMDLINE: &str = "DISKFORGE-CMDLINE:";
    /// Followed by the device the ISO 9660 medium was mounted from.
    pub const MEDIUM: &str = "DISKFORGE-MEDIUM:";
    /// No ISO 9660 medium found; followed by the `/dev` listing.
    pub const NO_MEDIUM: &str = "DISKFORGE-NO-MEDIUM:";
    /// Followed by the value of `inst.ks=` (or `ks=`).
    pub const KS_ARG: &str = "DISKFORGE-KS-ARG:";
    /// Followed by the first line of the kickstart read from the medium.
    pub const KS: &str = "DISKFORGE-KS:";
    /// The kickstart named on the command line is not on the medium; followed by its path.
    pub const KS_MISSING: &str = "DISKFORGE-KS-MISSING:";
    /// Followed by the value of `preseed/file=` (or `file=/cdrom/…`).
    pub const PRESEED_ARG: &str = "DISKFORGE-PRESEED-ARG:";
    /// Followed by the first line of the preseed file read from the medium.
    pub const PRESEED: &str = "DISKFORGE-PRESEED:";
    /// The preseed file is not on the medium; followed by its path.
    pub const PRESEED_MISSING: &str = "DISKFORGE-PRESEED-MISSING:";
    /// Followed by `/diskforge-NAME: first line` for each such file at the medium's root.
    pub const FILE: &str = "DISKFORGE-FILE:";
    /// `/init` is about to power off.
    pub const DONE: &str = "DISKFORGE-FIXTURE-DONE";
}

/// Errors from building a fixture or booting an ISO.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A host file the fixture is made from is missing.
    #[error("{what}: {} missing (install {package})", path.display())]
    MissingInput {
        /// What it is (`kernel`, `isolinux.bin` …).
        what: &'static str,
        /// Where it was looked for.
        path: PathBuf,
        /// The Debian package that ships it.
        package: &'static str,
    },
    /// A kernel module the initrd needs is not in `modules.dep`.
    #[error("kernel module {module} not in {}/modules.dep", dir.display())]
    ModuleNotFound {
        /// The module name.
        module: String,
        /// The modules directory.
        dir: PathBuf,
    },
    /// The spec cannot be built.
    #[error("invalid fixture spec: {0}")]
    Spec(String),
    /// A file operation failed.
    #[error("{action} {}", path.display())]
    Io {
        /// What we were doing (`reading`, `writing`, `copying to` …).
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An external program failed.
    #[error("{step}")]
    Tool {
        /// The step (`assembling the ISO with xorriso` …).
        step: &'static str,
        /// The runner's error (program, args, stderr tail).
        #[source]
        source: diskforge_cmd::Error,
    },
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What to build. [`FixtureSpec::new`] gives the defaults each field names.
#[derive(Debug, Clone)]
pub struct FixtureSpec {
    /// Directory the ISO is written to (created if missing). No default.
    pub dir: PathBuf,
    /// File name of the ISO inside `dir`. Default `fixture.iso`.
    pub iso_name: String,
    /// Volume id (at most 32 characters). Default `Diskforge-Fixture-x86_64`.
    pub volid: String,
    /// Include UEFI boot (`images/efiboot.img`, El Torito EFI entry, GPT). Default true.
    pub uefi: bool,
    /// Where the UEFI FAT image lives (only with `uefi`). Default [`EspLayout::InTree`].
    pub esp: EspLayout,
    /// Total bytes of filler files under `Packages/` (pseudo-random, deterministic). Default 0.
    pub filler_bytes: u64,
    /// Number of filler files (`filler_bytes` is split evenly). Default 0.
    pub filler_files: u64,
    /// Kernel to boot; default the newest `/boot/vmlinuz-*` whose `/lib/modules/VERSION`
    /// exists. Its modules come from `/lib/modules/VERSION`.
    pub kernel: Option<PathBuf>,
    /// Keep the staging tree in `dir/tree` after assembling. Default false.
    pub keep_tree: bool,
    /// Extra files: path on the ISO tree (relative, `/`-separated) → content. Default none.
    pub extra_files: Vec<(String, Vec<u8>)>,
    /// Extra kernel arguments appended to every boot entry (as a remaster tool would add
    /// `inst.ks=…`). Default empty.
    pub extra_args: String,
    /// Build a config into `BOOTX64.EFI` (`grub-mkimage -c`) that finds the medium by its
    /// label (`search --label VOLID`, then `prefix=($root)/EFI/BOOT`), and leave
    /// `grub.cfg` out of the FAT image, as distributions whose GRUB has its search built
    /// in do: UEFI boot then depends on the label inside the binary. Default false.
    pub grub_embedded_search: bool,
    /// Every timestamp in the ISO and the FAT image (seconds since 1970), so the same spec
    /// gives the same bytes. Default `$SOURCE_DATE_EPOCH`, else [`DEFAULT_EPOCH`].
    pub source_date_epoch: u64,
}

/// The fixture's timestamps when `SOURCE_DATE_EPOCH` is not set (2023-11-14 22:13:20 UTC).
pub const DEFAULT_EPOCH: u64 = 1_700_000_000;

impl FixtureSpec {
    /// The defaults, writing to `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        FixtureSpec {
            dir: dir.into(),
            iso_name: "fixture.iso".into(),
            volid: "Diskforge-Fixture-x86_64".into(),
            uefi: true,
            esp: EspLayout::InTree,
            filler_bytes: 0,
            filler_files: 0,
            kernel: None,
            keep_tree: false,
            extra_files: Vec::new(),
            extra_args: String::new(),
            grub_embedded_search: false,
            source_date_epoch: std::env::var("SOURCE_DATE_EPOCH")
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(DEFAULT_EPOCH),
        }
    }
}

/// Where the El Torito EFI boot image (the FAT `efiboot.img`) lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EspLayout {
    /// `images/efiboot.img` on the ISO tree, El Torito `-e images/efiboot.img`,
    /// `-isohybrid-gpt-basdat` (lorax for Fedora ≤ 36, RHEL 8/9).
    InTree,
    /// Not on the tree: appended as GPT partition 2 (ESP type), El Torito entry
    /// `--interval:appended_partition_2:all::`, `-appended_part_as_gpt`.
    Appended,
}

/// What was built, with the paths a remaster test needs.
#[derive(Debug, Clone, Serialize)]
pub struct Fixture {
    /// The ISO.
    pub iso: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// Its volume id.
    pub volid: String,
    /// Whether it boots with UEFI.
    pub uefi: bool,
    /// Where the EFI image lives (meaningful when `uefi`).
    pub esp: EspLayout,
    /// The host kernel it boots.
    pub kernel_source: PathBuf,
    /// That kernel's version (`/lib/modules/VERSION`).
    pub kernel_version: String,
    /// Kernel path on the ISO tree (`images/pxeboot/vmlinuz`).
    pub kernel: String,
    /// Initrd path on the ISO tree (`images/pxeboot/initrd.img`).
    pub initrd: String,
    /// Boot configs on the ISO tree, each with [`Fixture::boot_entries`] entries.
    pub tree_configs: Vec<String>,
    /// The El Torito EFI image on the tree (`images/efiboot.img`), when UEFI and
    /// [`EspLayout::InTree`].
    pub efiboot: Option<String>,
    /// The partition number of the appended ESP, when [`EspLayout::Appended`].
    pub esp_partition: Option<u32>,
    /// Boot configs inside the EFI image (`EFI/BOOT/grub.cfg`), when UEFI (wherever it lives).
    pub efiboot_configs: Vec<String>,
    /// Boot entries per config file.
    pub boot_entries: usize,
    /// Kernel arguments every entry has.
    pub kernel_args: String,
    /// Modules the initrd loads, in order.
    pub modules: Vec<String>,
    /// Number of filler files.
    pub filler_files: u64,
    /// Bytes of filler.
    pub filler_bytes: u64,
    /// The line the initrd prints once it runs ([`markers::BOOTED`]; the others are in
    /// [`markers`]).
    pub marker: String,
}

/// Progress of [`build_with_progress`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Writing the initrd.
    Initrd,
    /// Making `efiboot.img`.
    EfiImage,
    /// Writing filler: bytes done of total.
    Filler {
        /// Bytes written so far.
        done: u64,
        /// Bytes to write.
        total: u64,
    },
    /// Running xorriso.
    Assemble,
}

/// Host files the fixture is made from.
mod host {
    /// isolinux's El Torito loader.
    pub const ISOLINUX_BIN: &str = "/usr/lib/ISOLINUX/isolinux.bin";
    /// isolinux's MBR for isohybrid images.
    pub const ISOHDPFX: &str = "/usr/lib/ISOLINUX/isohdpfx.bin";
    /// The syslinux core module isolinux loads.
    pub const LDLINUX_C32: &str = "/usr/lib/syslinux/modules/bios/ldlinux.c32";
    /// GRUB's EFI modules.
    pub const GRUB_EFI_DIR: &str = "/usr/lib/grub/x86_64-efi";
    /// busybox-static.
    pub const BUSYBOX: &str = "/bin/busybox";
}

/// The GPT type of an EFI system partition.
const ESP_TYPE_GUID: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";

/// GRUB modules built into `BOOTX64.EFI` (no module directory on the FAT image).
const GRUB_MODULES: &[&str] = &[
    "normal",
    "configfile",
    "search",
    "search_label",
    "search_fs_uuid",
    "iso9660",
    "fat",
    "part_gpt",
    "part_msdos",
    "linux",
    "echo",
    "test",
    "efi_gop",
    "serial",
    "terminal",
];

fn need(what: &'static str, path: &str, package: &'static str) -> Result<PathBuf> {
    let p = PathBuf::from(path);
    if p.exists() {
        Ok(p)
    } else {
        Err(Error::MissingInput {
            what,
            path: p,
            package,
        })
    }
}

/// The newest `/boot/vmlinuz-VERSION` with a `/lib/modules/VERSION/modules.dep`.
pub fn default_kernel() -> Result<(PathBuf, String)> {
    let io = |source| Error::Io {
        action: "listing",
        path: "/boot".into(),
        source,
    };
    let mut found: Vec<String> = std::fs::read_dir("/boot")
        .map_err(io)?
        .filter_map(|e| {
            e.ok()?
                .file_name()
                .to_str()?
                .strip_prefix("vmlinuz-")
                .map(str::to_owned)
        })
        .filter(|v| {
            Path::new("/lib/modules")
                .join(v)
                .join("modules.dep")
                .exists()
        })
        .collect();
    found.sort_by_key(|v| version_key(v));
    match found.pop() {
        Some(v) => Ok((PathBuf::from(format!("/boot/vmlinuz-{v}")), v)),
        None => Err(Error::MissingInput {
            what: "kernel with modules",
            path: "/boot/vmlinuz-*".into(),
            package: "linux-image-amd64",
        }),
    }
}

/// `6.1.0-56-amd64` → `[6, 1, 0, 56]` for a numeric sort.
fn version_key(v: &str) -> Vec<u64> {
    v.split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect()
}

fn kernel_version(kernel: &Path) -> Result<String> {
    kernel
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .map(str::to_owned)
        .ok_or_else(|| {
            Error::Spec(format!(
                "kernel {} is not named vmlinuz-VERSION",
                kernel.display()
            ))
        })
}

fn mkdirs(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).map_err(|source| Error::Io {
        action: "creating",
        path: path.to_owned(),
        source,
    })
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    std::fs::copy(from, to)
        .map(|_| ())
        .map_err(|source| Error::Io {
            action: "copying to",
            path: to.to_owned(),
            source,
        })
}

fn write(path: &Path, data: impl AsRef<[u8]>) -> Result<()> {
    std::fs::write(path, data).map_err(|source| Error::Io {
        action: "writing",
        path: path.to_owned(),
        source,
    })
}

fn tool(step: &'static str) -> impl Fn(diskforge_cmd::Error) -> Error {
    move |source| Error::Tool { step, source }
}

/// Build the fixture described by `spec`.
pub fn build(spec: &FixtureSpec) -> Result<Fixture> {
    build_with_progress(spec, |_| {})
}

/// [`build`], reporting progress.
pub fn build_with_progress(
    spec: &FixtureSpec,
    mut progress: impl FnMut(Progress),
) -> Result<Fixture> {
    if spec.volid.is_empty() || spec.volid.len() > 32 {
        return Err(Error::Spec(format!(
            "volume id {:?} must be 1 to 32 characters",
            spec.volid
        )));
    }
    if spec.filler_bytes > 0 && spec.filler_files == 0 {
        return Err(Error::Spec("filler_bytes without filler_files".into()));
    }
    let (kernel_source, version) = match &spec.kernel {
        Some(k) => (k.clone(), kernel_version(k)?),
        None => default_kernel()?,
    };
    if !kernel_source.exists() {
        return Err(Error::MissingInput {
            what: "kernel",
            path: kernel_source,
            package: "linux-image-amd64",
        });
    }
    let isolinux_bin = need("isolinux.bin", host::ISOLINUX_BIN, "isolinux")?;
    let isohdpfx = need("isohdpfx.bin", host::ISOHDPFX, "isolinux")?;
    let ldlinux = need("ldlinux.c32", host::LDLINUX_C32, "syslinux-common")?;
    let busybox = need("busybox", host::BUSYBOX, "busybox-static")?;
    if spec.uefi {
        need("GRUB EFI modules", host::GRUB_EFI_DIR, "grub-efi-amd64-bin")?;
    }

    mkdirs(&spec.dir)?;
    let tree = spec.dir.join("tree");
    if tree.exists() {
        std::fs::remove_dir_all(&tree).map_err(|source| Error::Io {
            action: "removing",
            path: tree.clone(),
            source,
        })?;
    }
    for d in ["isolinux", "images/pxeboot", "boot/grub"] {
        mkdirs(&tree.join(d))?;
    }
    copy(&isolinux_bin, &tree.join("isolinux/isolinux.bin"))?;
    copy(&ldlinux, &tree.join("isolinux/ldlinux.c32"))?;
    write(
        &tree.join("isolinux/isolinux.cfg"),
        configs::isolinux_cfg(&spec.volid, &spec.extra_args),
    )?;
    copy(&kernel_source, &tree.join(configs::KERNEL))?;
    progress(Progress::Initrd);
    let modules = initrd::write_initrd(
        &initrd::InitrdInputs {
            busybox,
            modules_dir: Path::new("/lib/modules").join(&version),
        },
        &tree.join(configs::INITRD),
    )?;
    let grub_cfg = configs::grub_cfg(&spec.volid, &spec.extra_args);
    write(&tree.join("boot/grub/grub.cfg"), &grub_cfg)?;
    write(&tree.join(".discinfo"), "0\nDiskforge Fixture\nx86_64\n")?;
    let mut tree_configs = vec![
        "isolinux/isolinux.cfg".to_owned(),
        "boot/grub/grub.cfg".to_owned(),
    ];
    let efiboot_tree = "images/efiboot.img";
    if spec.uefi {
        progress(Progress::EfiImage);
        mkdirs(&tree.join("EFI/BOOT"))?;
        write(&tree.join("EFI/BOOT/grub.cfg"), &grub_cfg)?;
        let mut mkimage = Cmd::new("grub-mkimage").args([
            "-O",
            "x86_64-efi",
            "-p",
            "/EFI/BOOT",
            "-d",
            host::GRUB_EFI_DIR,
        ]);
        if spec.grub_embedded_search {
            let early = spec.dir.join("early-grub.cfg");
            write(&early, configs::embedded_grub_cfg(&spec.volid))?;
            mkimage = mkimage.arg("-c").arg(&early);
        }
        mkimage
            .arg("-o")
            .arg(tree.join("EFI/BOOT/BOOTX64.EFI"))
            .args(GRUB_MODULES)
            .run()
            .map_err(tool("building BOOTX64.EFI with grub-mkimage"))?;
        set_times(&tree.join("EFI"), spec.source_date_epoch)?;
        if spec.grub_embedded_search {
            // Only the binary in the FAT image: its built-in search must find the medium.
            let stage = spec.dir.join("efi-stage");
            mkdirs(&stage.join("EFI/BOOT"))?;
            copy(
                &tree.join("EFI/BOOT/BOOTX64.EFI"),
                &stage.join("EFI/BOOT/BOOTX64.EFI"),
            )?;
            set_times(&stage.join("EFI"), spec.source_date_epoch)?;
            make_efiboot(
                &stage.join("EFI"),
                &efiboot_path(spec, &tree),
                spec.source_date_epoch,
            )?;
            std::fs::remove_dir_all(&stage).map_err(|source| Error::Io {
                action: "removing",
                path: stage.clone(),
                source,
            })?;
        } else {
            make_efiboot(
                &tree.join("EFI"),
                &efiboot_path(spec, &tree),
                spec.source_date_epoch,
            )?;
        }
        tree_configs.insert(1, "EFI/BOOT/grub.cfg".into());
    }
    for (dest, data) in &spec.extra_files {
        let rel = Path::new(dest.trim_start_matches('/'));
        if rel
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(Error::Spec(format!(
                "extra file {dest:?} must be a plain path on the tree"
            )));
        }
        let path = tree.join(rel);
        if let Some(parent) = path.parent() {
            mkdirs(parent)?;
        }
        write(&path, data)?;
    }
    write_filler(&tree, spec.filler_bytes, spec.filler_files, &mut progress)?;

    progress(Progress::Assemble);
    set_times(&tree, spec.source_date_epoch)?;
    if spec.uefi && spec.esp == EspLayout::Appended {
        set_times(&efiboot_path(spec, &tree), spec.source_date_epoch)?;
    }
    let iso = spec.dir.join(&spec.iso_name);
    Cmd::new("xorriso")
        .args(xorriso_args(spec, &iso, &tree, &isohdpfx))
        .env("SOURCE_DATE_EPOCH", spec.source_date_epoch.to_string())
        .run()
        .map_err(tool("assembling the ISO with xorriso"))?;
    if !spec.keep_tree {
        std::fs::remove_dir_all(&tree).map_err(|source| Error::Io {
            action: "removing",
            path: tree.clone(),
            source,
        })?;
        let esp = efiboot_path(spec, &tree);
        if esp.exists() {
            std::fs::remove_file(&esp).map_err(|source| Error::Io {
                action: "removing",
                path: esp,
                source,
            })?;
        }
    }
    let appended = spec.uefi && spec.esp == EspLayout::Appended;
    let size = std::fs::metadata(&iso)
        .map_err(|source| Error::Io {
            action: "reading",
            path: iso.clone(),
            source,
        })?
        .len();
    Ok(Fixture {
        iso,
        size,
        volid: spec.volid.clone(),
        uefi: spec.uefi,
        esp: spec.esp,
        kernel_source,
        kernel_version: version,
        kernel: configs::KERNEL.into(),
        initrd: configs::INITRD.into(),
        tree_configs,
        efiboot: (spec.uefi && !appended).then(|| efiboot_tree.to_owned()),
        esp_partition: appended.then_some(2),
        efiboot_configs: if spec.uefi && !spec.grub_embedded_search {
            vec!["EFI/BOOT/grub.cfg".into()]
        } else {
            Vec::new()
        },
        boot_entries: 2,
        kernel_args: configs::entry_args(&spec.volid, &spec.extra_args),
        modules,
        filler_files: spec.filler_files,
        filler_bytes: spec.filler_bytes,
        marker: markers::BOOTED.into(),
    })
}

/// Where `efiboot.img` is made: on the tree, or next to it when it is only appended.
fn efiboot_path(spec: &FixtureSpec, tree: &Path) -> PathBuf {
    match spec.esp {
        EspLayout::InTree => tree.join("images/efiboot.img"),
        EspLayout::Appended => spec.dir.join("efiboot.img"),
    }
}

/// `xorriso -as mkisofs` arguments, as lorax assembles installer media.
fn xorriso_args(
    spec: &FixtureSpec,
    iso: &Path,
    tree: &Path,
    isohdpfx: &Path,
) -> Vec<std::ffi::OsString> {
    let mut a: Vec<std::ffi::OsString> = Vec::new();
    // Words separated by spaces (none of these contain one).
    let mut s = |x: &str| a.extend(x.split(' ').map(Into::into));
    s("-as mkisofs -R -J -joliet-long -V");
    a.push(spec.volid.clone().into());
    a.push("-volset".into());
    a.push(spec.volid.clone().into());
    let mut s = |x: &str| a.extend(x.split(' ').map(Into::into));
    s("-A DiskforgeFixture -b isolinux/isolinux.bin -c isolinux/boot.cat");
    s("-no-emul-boot -boot-load-size 4 -boot-info-table");
    let esp = spec.uefi.then_some(spec.esp);
    match esp {
        Some(EspLayout::InTree) => s("-eltorito-alt-boot -e images/efiboot.img -no-emul-boot"),
        Some(EspLayout::Appended) => {
            s("-eltorito-alt-boot -e --interval:appended_partition_2:all:: -no-emul-boot")
        }
        None => {}
    }
    s("-isohybrid-mbr");
    a.push(isohdpfx.into());
    match esp {
        Some(EspLayout::InTree) => a.push("-isohybrid-gpt-basdat".into()),
        Some(EspLayout::Appended) => {
            a.extend(["-append_partition", "2", ESP_TYPE_GUID].map(Into::into));
            a.push(efiboot_path(spec, tree).into());
            a.push("-appended_part_as_gpt".into());
        }
        None => {}
    }
    a.push("-o".into());
    a.push(iso.into());
    a.push(tree.into());
    a
}

/// Set the access and modification times of `path` and, for a directory, of everything
/// below it (children first, so directories keep the time too).
fn set_times(path: &Path, epoch: u64) -> Result<()> {
    let io = |source| Error::Io {
        action: "setting times of",
        path: path.to_owned(),
        source,
    };
    if path.is_dir() {
        for e in std::fs::read_dir(path).map_err(io)? {
            set_times(&e.map_err(io)?.path(), epoch)?;
        }
    }
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(epoch);
    std::fs::File::open(path)
        .and_then(|f| f.set_times(std::fs::FileTimes::new().set_accessed(t).set_modified(t)))
        .map_err(io)
}

/// Make the FAT `efiboot.img` holding the tree's `EFI` directory (`EFI/BOOT/*`), without
/// mounting: `mkfs.vfat --invariant` (fixed serial and label time) and `mcopy -s -m`
/// (recursive, keeping the times [`set_times`] gave), so the image is reproducible.
fn make_efiboot(efi_dir: &Path, img: &Path, epoch: u64) -> Result<()> {
    let content = dir_size(efi_dir)?;
    // Room for the files, FAT overhead and edits by remaster tools; whole MiB.
    let kib = (content / 1024 + 2048).div_ceil(1024) * 1024;
    if img.exists() {
        std::fs::remove_file(img).map_err(|source| Error::Io {
            action: "removing",
            path: img.to_owned(),
            source,
        })?;
    }
    Cmd::new("mkfs.vfat")
        .args(["--invariant", "-C", "-n", "EFIBOOT", "-i", "d15cf06e"])
        .arg(img)
        .arg(kib.to_string())
        .run()
        .map_err(tool("making efiboot.img with mkfs.vfat"))?;
    Cmd::new("mcopy")
        .args(["-s", "-m", "-i"])
        .arg(img)
        .arg(efi_dir)
        .arg("::/")
        .env("MTOOLS_SKIP_CHECK", "1")
        .env("SOURCE_DATE_EPOCH", epoch.to_string())
        .run()
        .map_err(tool("copying EFI/ into efiboot.img with mcopy"))?;
    Ok(())
}

/// Total size of the files below `dir`.
fn dir_size(dir: &Path) -> Result<u64> {
    let io = |source| Error::Io {
        action: "listing",
        path: dir.to_owned(),
        source,
    };
    let mut total = 0;
    for e in std::fs::read_dir(dir).map_err(io)? {
        let e = e.map_err(io)?;
        let meta = e.metadata().map_err(io)?;
        total += if meta.is_dir() {
            dir_size(&e.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

/// Chunk size for filler writes.
const FILLER_CHUNK: usize = 1 << 20;

/// Write `files` pseudo-random files totalling `bytes` under `tree/Packages/X/`.
fn write_filler(
    tree: &Path,
    bytes: u64,
    files: u64,
    progress: &mut impl FnMut(Progress),
) -> Result<()> {
    if files == 0 {
        return Ok(());
    }
    use std::io::Write;
    let per = bytes / files;
    let mut done = 0u64;
    let mut buf = vec![0u8; FILLER_CHUNK];
    for i in 0..files {
        let dir = tree
            .join("Packages")
            .join(((b'a' + (i % 26) as u8) as char).to_string());
        mkdirs(&dir)?;
        let path = dir.join(format!("diskforge-filler-{i:06}.rpm"));
        let size = if i + 1 == files {
            bytes - per * (files - 1)
        } else {
            per
        };
        let io = |source| Error::Io {
            action: "writing",
            path: path.clone(),
            source,
        };
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).map_err(io)?);
        // xorshift64*: cheap, deterministic, incompressible enough for a benchmark.
        let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ (i + 1).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        let mut left = size;
        while left > 0 {
            let n = usize::try_from(left.min(FILLER_CHUNK as u64)).unwrap_or(FILLER_CHUNK);
            for word in buf[..n.div_ceil(8) * 8].chunks_exact_mut(8) {
                state ^= state >> 12;
                state ^= state << 25;
                state ^= state >> 27;
                word.copy_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
            }
            f.write_all(&buf[..n]).map_err(io)?;
            left -= n as u64;
            done += n as u64;
            progress(Progress::Filler { done, total: bytes });
        }
        f.flush().map_err(io)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_sort_is_numeric() {
        let mut v = vec!["6.1.0-9-amd64", "6.1.0-56-amd64", "6.1.0-10-amd64"];
        v.sort_by_key(|x| version_key(x));
        assert_eq!(v, ["6.1.0-9-amd64", "6.1.0-10-amd64", "6.1.0-56-amd64"]);
    }

    #[test]
    fn xorriso_args_follow_lorax() {
        let mut spec = FixtureSpec::new("/d");
        let args: Vec<String> = xorriso_args(
            &spec,
            Path::new("/d/f.iso"),
            Path::new("/d/tree"),
            Path::new("/m.bin"),
        )
        .into_iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
        let line = args.join(" ");
        assert!(line.contains("-b isolinux/isolinux.bin -c isolinux/boot.cat -no-emul-boot -boot-load-size 4 -boot-info-table -eltorito-alt-boot -e images/efiboot.img -no-emul-boot -isohybrid-mbr /m.bin -isohybrid-gpt-basdat -o /d/f.iso /d/tree"), "{line}");
        spec.esp = EspLayout::Appended;
        let args = xorriso_args(
            &spec,
            Path::new("/d/f.iso"),
            Path::new("/d/tree"),
            Path::new("/m.bin"),
        );
        let line = args
            .iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ");
        assert!(line.contains("-e --interval:appended_partition_2:all:: -no-emul-boot -isohybrid-mbr /m.bin -append_partition 2 C12A7328-F81F-11D2-BA4B-00A0C93EC93B /d/efiboot.img -appended_part_as_gpt"), "{line}");
        spec.uefi = false;
        let args = xorriso_args(
            &spec,
            Path::new("/d/f.iso"),
            Path::new("/d/tree"),
            Path::new("/m.bin"),
        );
        assert!(
            !args
                .iter()
                .any(|a| a == "-e" || a == "-isohybrid-gpt-basdat")
        );
    }

    #[test]
    fn spec_errors() {
        let mut spec = FixtureSpec::new("/nonexistent");
        spec.volid = "x".repeat(33);
        assert!(matches!(build(&spec), Err(Error::Spec(_))));
        let mut spec = FixtureSpec::new("/nonexistent");
        spec.filler_bytes = 1;
        assert!(matches!(build(&spec), Err(Error::Spec(_))));
    }
}
