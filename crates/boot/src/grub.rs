//! GRUB's configuration and images: `/boot/grub/grub.cfg` in the root tree, the config
//! embedded in GRUB's images, and `grub-mkimage` runs (through diskforge-cmd).
//!
//! Every module GRUB needs is built into its image ([`BIOS_MODULES`], [`EFI_MODULES`]), so
//! the root filesystem needs no `/boot/grub/i386-pc` or `x86_64-efi` module directory. The
//! embedded config ([`embedded_config`]) finds the root filesystem — by UUID, else by label,
//! else by the file `/boot/grub/grub.cfg` — and sets `prefix=($root)/boot/grub`; GRUB's
//! normal mode then reads `$prefix/grub.cfg`. Both images come out of `grub-mkimage`
//! byte-identical for the same inputs (it writes no timestamps).

use std::path::{Path, PathBuf};

use diskforge_cmd::Cmd;
use serde::{Deserialize, Serialize};

use crate::{Error, Result, io_err};

/// Where the config lives inside the root filesystem.
pub const GRUB_CFG: &str = "/boot/grub/grub.cfg";

/// Modules built into the BIOS `core.img`, before the root filesystem's driver (`ext2`,
/// `fat`, `xfs`, `btrfs`): disk access through the BIOS, both partition tables, `search`,
/// normal mode with `configfile`, `linux` (with `initrd`) and `boot`, `echo`, `test`, and
/// the serial terminal.
pub const BIOS_MODULES: &[&str] = &[
    "biosdisk",
    "part_msdos",
    "part_gpt",
    "search",
    "normal",
    "configfile",
    "linux",
    "boot",
    "echo",
    "test",
    "serial",
    "terminal",
    "halt",
    "reboot",
];

/// Modules built into `BOOTX64.EFI`: as [`BIOS_MODULES`] with the firmware's disks instead of
/// `biosdisk`, the EFI framebuffer the kernel's EFI stub may want, and every root
/// filesystem driver we can make (the ESP is FAT; the root filesystem's type is not known
/// here).
pub const EFI_MODULES: &[&str] = &[
    "part_msdos",
    "part_gpt",
    "fat",
    "ext2",
    "xfs",
    "btrfs",
    "search",
    "normal",
    "configfile",
    "linux",
    "boot",
    "echo",
    "test",
    "serial",
    "terminal",
    "efi_gop",
    "halt",
    "reboot",
];

/// How GRUB boots the system. The paths are inside the root filesystem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrubConfig {
    /// The kernel (`/boot/vmlinuz-RELEASE`).
    pub kernel: String,
    /// The initramfs (`/boot/initrd.img-RELEASE`), if any.
    pub initrd: Option<String>,
    /// The kernel command line: `DIB_BOOTLOADER_DEFAULT_CMDLINE` and the caller's arguments.
    /// `root=` is added from [`GrubConfig::root_uuid`] (else [`GrubConfig::root_label`]) when
    /// missing, and with [`GrubConfig::serial`] `console=tty0 console=ttyS0,115200` when no
    /// `console=` is given ([`kernel_cmdline`]).
    pub cmdline: String,
    /// The root filesystem's UUID: what GRUB searches for and `root=UUID=…`.
    pub root_uuid: Option<String>,
    /// The root filesystem's label, used when there is no UUID.
    pub root_label: Option<String>,
    /// Seconds the menu waits (0: boot at once).
    pub timeout: u32,
    /// GRUB's terminal on the first serial port (115200 8N1) as well as the console, and the
    /// kernel's console on `ttyS0`.
    pub serial: bool,
    /// `SOURCE_DATE_EPOCH`: the mtime of the files [`write_grub_cfg`] and [`install_efi`]
    /// write and of the directories they make or add to, so the filesystems made from the
    /// tree are reproducible. Default none (the current time).
    #[serde(default)]
    pub source_date_epoch: Option<u64>,
    /// Where GRUB's platform directories (`i386-pc`, `x86_64-efi`: modules, `kernel.img`,
    /// `boot.img`) come from: a target tree's own `ROOT/usr/lib/grub` when its GRUB packages
    /// are installed, so the image boots the GRUB its distribution ships. A platform missing
    /// there (or `None`) falls back to the host's `/usr/lib/grub`.
    #[serde(default)]
    pub grub_lib: Option<PathBuf>,
}

impl GrubConfig {
    /// A config booting `kernel` (and `initrd`) from the planned filesystem `root_fs`: its
    /// UUID and label, `cmdline` as given, no menu wait, serial console on.
    pub fn for_root_fs(
        kernel: impl Into<String>,
        initrd: Option<String>,
        root_fs: &diskforge_blockdev::FsPlan,
        cmdline: impl Into<String>,
    ) -> Self {
        GrubConfig {
            cmdline: cmdline.into(),
            root_label: Some(root_fs.label.clone()).filter(|l| !l.is_empty()),
            ..GrubConfig::new(kernel, initrd, root_fs.uuid.clone())
        }
    }

    /// A config booting `kernel` (and `initrd`) from the root filesystem with UUID `uuid`,
    /// no menu wait, serial console on.
    pub fn new(kernel: impl Into<String>, initrd: Option<String>, uuid: Option<String>) -> Self {
        GrubConfig {
            kernel: kernel.into(),
            initrd,
            cmdline: String::new(),
            root_uuid: uuid,
            root_label: None,
            timeout: 0,
            serial: true,
            source_date_epoch: None,
            grub_lib: None,
        }
    }
}

/// A kernel found in a root tree by [`find_kernel`]; paths inside the root filesystem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelFiles {
    /// `uname -r` of it (the part after `vmlinuz-`).
    pub release: String,
    /// `/boot/vmlinuz-RELEASE`.
    pub kernel: String,
    /// `/boot/initrd.img-RELEASE` (Debian) or `/boot/initramfs-RELEASE.img` (Fedora), when
    /// present.
    pub initrd: Option<String>,
}

/// `6.1.0-57-amd64` → `[6, 1, 0, 57]`, for a numeric sort.
fn version_key(v: &str) -> Vec<u64> {
    v.split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// The newest kernel (`/boot/vmlinuz-RELEASE`, numeric version order) in the root `tree`,
/// with its initramfs; none when `/boot` has no kernel. For trees not made by
/// [`crate::busybox_root`] (whose [`crate::RootReport`] names its kernel).
pub fn find_kernel(tree: &Path) -> Result<Option<KernelFiles>> {
    let boot = tree.join("boot");
    let rd = match std::fs::read_dir(&boot) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("listing", &boot)(e)),
    };
    let mut releases = Vec::new();
    for e in rd {
        let e = e.map_err(io_err("listing", &boot))?;
        if let Some(r) = e
            .file_name()
            .to_str()
            .and_then(|n| n.strip_prefix("vmlinuz-"))
        {
            releases.push(r.to_owned());
        }
    }
    let Some(release) = releases
        .into_iter()
        .max_by_key(|r| (version_key(r), r.clone()))
    else {
        return Ok(None);
    };
    let initrd = [
        format!("initrd.img-{release}"),
        format!("initramfs-{release}.img"),
    ]
    .into_iter()
    .find(|n| boot.join(n).is_file())
    .map(|n| format!("/boot/{n}"));
    Ok(Some(KernelFiles {
        kernel: format!("/boot/vmlinuz-{release}"),
        initrd,
        release,
    }))
}

/// What [`install_efi`] wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EfiReport {
    /// `ESP/EFI/BOOT/BOOTX64.EFI`.
    pub path: PathBuf,
    /// Its size.
    pub bytes: u64,
    /// Modules built in.
    pub modules: Vec<String>,
    /// The GRUB platform directory they came from (the target's or the host's).
    pub modules_dir: PathBuf,
    /// The embedded config.
    pub embedded_config: String,
}

fn invalid(what: String, reason: impl Into<String>) -> Error {
    Error::Invalid {
        what,
        reason: reason.into(),
    }
}

/// A path inside the root filesystem: absolute, no whitespace, quotes or GRUB specials.
fn check_path(field: &str, p: &str) -> Result<()> {
    let ok = p.starts_with('/')
        && p.len() > 1
        && p.chars().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '-' | '_' | '+' | ',' | ':' | '~')
        });
    if ok {
        Ok(())
    } else {
        Err(invalid(
            format!("grub {field} {p:?}"),
            "must be an absolute path inside the root filesystem of letters, digits and ./-_+,:~",
        ))
    }
}

/// A filesystem UUID (hex digits and dashes; FAT's `ABCD-1234` included).
fn check_uuid(u: &str) -> Result<()> {
    let ok = !u.is_empty()
        && u.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
        && u.chars().any(|c| c.is_ascii_hexdigit());
    if ok {
        Ok(())
    } else {
        Err(invalid(
            format!("root_uuid {u:?}"),
            "must be hex digits and dashes",
        ))
    }
}

/// A filesystem label we can put in GRUB's config and on the kernel command line.
fn check_label(l: &str) -> Result<()> {
    let ok = !l.is_empty()
        && l.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            format!("root_label {l:?}"),
            "must be letters, digits and -_. (it goes unquoted on the kernel command line)",
        ))
    }
}

/// One word for a GRUB script: as is when plain, else single-quoted.
fn grub_word(w: &str) -> String {
    let plain = w.chars().all(|c| {
        c.is_ascii_alphanumeric()
            || matches!(c, '/' | '.' | '-' | '_' | '+' | ',' | ':' | '=' | '@' | '%')
    });
    if plain && !w.is_empty() {
        w.to_owned()
    } else {
        format!("'{}'", w.replace('\'', "'\\''"))
    }
}

fn check(cfg: &GrubConfig) -> Result<()> {
    check_path("kernel", &cfg.kernel)?;
    if let Some(i) = &cfg.initrd {
        check_path("initrd", i)?;
    }
    if let Some(u) = &cfg.root_uuid {
        check_uuid(u)?;
    }
    if let Some(l) = &cfg.root_label {
        check_label(l)?;
    }
    if cfg.cmdline.contains(['\n', '\r', '\0']) {
        return Err(invalid(
            format!("cmdline {:?}", cfg.cmdline),
            "must be one line",
        ));
    }
    Ok(())
}

/// The kernel command line GRUB passes: [`GrubConfig::cmdline`] plus `root=` and the serial
/// console when missing (see the field docs).
pub fn kernel_cmdline(cfg: &GrubConfig) -> String {
    let mut words: Vec<String> = cfg.cmdline.split_whitespace().map(str::to_owned).collect();
    if !words.iter().any(|w| w.starts_with("root=")) {
        if let Some(u) = &cfg.root_uuid {
            words.push(format!("root=UUID={u}"));
        } else if let Some(l) = &cfg.root_label {
            words.push(format!("root=LABEL={l}"));
        }
    }
    if cfg.serial && !words.iter().any(|w| w.starts_with("console=")) {
        words.push("console=tty0".into());
        words.push("console=ttyS0,115200".into());
    }
    words.join(" ")
}

/// The serial terminal lines (115200 8N1 on the first port, plus the console).
const SERIAL: &str = "serial --unit=0 --speed=115200 --word=8 --parity=no --stop=1\n\
                      terminal_input serial console\n\
                      terminal_output serial console\n";

/// The search line that sets `root`, by UUID, else label, else the config file.
fn search_line(cfg: &GrubConfig) -> String {
    match (&cfg.root_uuid, &cfg.root_label) {
        (Some(u), _) => format!("search --no-floppy --fs-uuid --set=root {u}\n"),
        (None, Some(l)) => format!("search --no-floppy --label --set=root {}\n", grub_word(l)),
        (None, None) => format!("search --no-floppy --file --set=root {GRUB_CFG}\n"),
    }
}

/// The text of `/boot/grub/grub.cfg`.
pub fn grub_cfg(cfg: &GrubConfig) -> Result<String> {
    check(cfg)?;
    let mut s = String::from("# written by diskforge-boot\n");
    s.push_str(&format!("set default=0\nset timeout={}\n", cfg.timeout));
    if cfg.serial {
        s.push_str(SERIAL);
    }
    s.push_str(&search_line(cfg));
    s.push_str("menuentry 'diskforge' --id diskforge {\n");
    // As Debian's grub.cfg: a line before each load (on serial, they time GRUB's reads).
    s.push_str(&format!("    echo 'Loading {} ...'\n", cfg.kernel));
    let mut linux = vec!["    linux".to_owned(), cfg.kernel.clone()];
    linux.extend(kernel_cmdline(cfg).split_whitespace().map(grub_word));
    s.push_str(&linux.join(" "));
    s.push('\n');
    if let Some(i) = &cfg.initrd {
        s.push_str(&format!("    echo 'Loading {i} ...'\n    initrd {i}\n"));
    }
    s.push_str("}\n");
    Ok(s)
}

/// The config embedded in GRUB's images: the serial terminal (so a failure shows), the
/// root filesystem found, and `prefix` set for normal mode to read `grub.cfg`.
pub fn embedded_config(cfg: &GrubConfig) -> Result<String> {
    check(cfg)?;
    let mut s = String::new();
    if cfg.serial {
        s.push_str(SERIAL);
    }
    s.push_str(&search_line(cfg));
    s.push_str("set prefix=($root)/boot/grub\n");
    Ok(s)
}

/// Write `/boot/grub/grub.cfg` into the root `tree` (directories made as needed); its path.
pub fn write_grub_cfg(tree: &Path, cfg: &GrubConfig) -> Result<PathBuf> {
    let text = grub_cfg(cfg)?;
    diskforge_fault::point("boot.grub-cfg")?;
    let path = tree.join(GRUB_CFG.trim_start_matches('/'));
    let dirs = crate::make_dirs(path.parent().unwrap_or(tree))?;
    std::fs::write(&path, text).map_err(io_err("writing", &path))?;
    if let Some(epoch) = cfg.source_date_epoch {
        crate::stamp([path.clone()].into_iter().chain(dirs), epoch)?;
    }
    Ok(path)
}

/// The directory of GRUB's `platform` (`i386-pc`, `x86_64-efi`): [`GrubConfig::grub_lib`]'s
/// when it has it, else the host's.
pub fn platform_dir(cfg: &GrubConfig, platform: &str) -> PathBuf {
    if let Some(lib) = &cfg.grub_lib {
        let d = lib.join(platform);
        if d.join("kernel.img").is_file() {
            return d;
        }
    }
    Path::new("/usr/lib/grub").join(platform)
}

/// Run `grub-mkimage -O format` with `modules` (from `dir`) and the embedded config
/// `embedded` into `out`.
pub(crate) fn mkimage(
    format: &str,
    dir: &Path,
    modules: &[&str],
    embedded: &str,
    out: &Path,
    step: &'static str,
) -> Result<()> {
    if !dir.is_dir() {
        let package = if format == "i386-pc" {
            "grub-pc-bin"
        } else {
            "grub-efi-amd64-bin"
        };
        return Err(invalid(
            format!("GRUB modules for {format}"),
            format!("{} missing (install {package})", dir.display()),
        ));
    }
    diskforge_fault::point("boot.grub-mkimage")?;
    let scratch = tempfile::Builder::new()
        .prefix(".grub-mkimage-")
        .tempdir_in(out.parent().unwrap_or(Path::new(".")))
        .map_err(io_err("creating a temp dir next to", out))?;
    let cfg_path = scratch.path().join("embedded.cfg");
    std::fs::write(&cfg_path, embedded).map_err(io_err("writing", &cfg_path))?;
    let tmp_out = scratch.path().join("image");
    tracing::debug!(format, out = %out.display(), ?modules, "grub-mkimage");
    Cmd::new("grub-mkimage")
        .args(["-O", format, "-d"])
        .arg(dir)
        .args(["-p", "/boot/grub", "-c"])
        .arg(&cfg_path)
        .arg("-o")
        .arg(&tmp_out)
        .args(modules)
        .run()
        .map_err(|source| Error::Tool {
            step,
            source: Box::new(source),
        })?;
    diskforge_fault::point("boot.grub-mkimage.rename")?;
    std::fs::rename(&tmp_out, out).map_err(io_err("renaming into place", out))
}

/// Write `esp_tree/EFI/BOOT/BOOTX64.EFI` (the removable-media path every UEFI firmware
/// boots): GRUB with [`EFI_MODULES`] and [`embedded_config`]. `esp_tree` is the directory
/// that becomes the ESP's content (`ROOT/boot/efi` for the block-device step).
pub fn install_efi(esp_tree: &Path, cfg: &GrubConfig) -> Result<EfiReport> {
    let embedded = embedded_config(cfg)?;
    diskforge_fault::point("boot.esp")?;
    let dir = esp_tree.join("EFI/BOOT");
    let dirs = crate::make_dirs(&dir)?;
    let path = dir.join("BOOTX64.EFI");
    let modules_dir = platform_dir(cfg, "x86_64-efi");
    mkimage(
        "x86_64-efi",
        &modules_dir,
        EFI_MODULES,
        &embedded,
        &path,
        "building BOOTX64.EFI with grub-mkimage",
    )?;
    let bytes = std::fs::metadata(&path)
        .map_err(io_err("reading the size of", &path))?
        .len();
    if let Some(epoch) = cfg.source_date_epoch {
        crate::stamp([path.clone()].into_iter().chain(dirs), epoch)?;
    }
    Ok(EfiReport {
        path,
        bytes,
        modules: EFI_MODULES.iter().map(|m| (*m).to_owned()).collect(),
        modules_dir,
        embedded_config: embedded,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> GrubConfig {
        GrubConfig {
            kernel: "/boot/vmlinuz-6.1.0-57-amd64".into(),
            initrd: Some("/boot/initrd.img-6.1.0-57-amd64".into()),
            cmdline: "nofb nomodeset gfxpayload=text panic=-1".into(),
            root_uuid: Some("d5a0a6c1-2b7e-4f0a-9d38-0c0ffee00001".into()),
            root_label: Some("cloudimg-rootfs".into()),
            timeout: 0,
            serial: true,
            source_date_epoch: None,
            grub_lib: None,
        }
    }

    #[test]
    fn grub_cfg_snapshot() {
        insta::assert_snapshot!("grub_cfg_uuid_serial", grub_cfg(&cfg()).unwrap());
        let mut c = cfg();
        c.root_uuid = None;
        c.serial = false;
        c.timeout = 3;
        c.cmdline = "root=/dev/sda1 ro quiet x$y".into();
        insta::assert_snapshot!("grub_cfg_label_plain", grub_cfg(&c).unwrap());
    }

    #[test]
    fn embedded_config_snapshot() {
        insta::assert_snapshot!("embedded_uuid", embedded_config(&cfg()).unwrap());
        let mut c = cfg();
        c.root_uuid = None;
        c.root_label = None;
        c.serial = false;
        insta::assert_snapshot!("embedded_file", embedded_config(&c).unwrap());
    }

    #[test]
    fn cmdline_adds_root_and_console_once() {
        let c = cfg();
        assert_eq!(
            kernel_cmdline(&c),
            "nofb nomodeset gfxpayload=text panic=-1 \
             root=UUID=d5a0a6c1-2b7e-4f0a-9d38-0c0ffee00001 console=tty0 console=ttyS0,115200"
        );
        let mut c = cfg();
        c.cmdline = "root=LABEL=x console=ttyS1".into();
        assert_eq!(kernel_cmdline(&c), "root=LABEL=x console=ttyS1");
    }

    #[test]
    fn bad_fields_are_named() {
        let mut c = cfg();
        c.kernel = "vmlinuz".into();
        let e = grub_cfg(&c).unwrap_err().to_string();
        assert!(
            e.starts_with("grub kernel \"vmlinuz\": must be an absolute path"),
            "{e}"
        );
        let mut c = cfg();
        c.root_uuid = Some("1234; reboot".into());
        let e = grub_cfg(&c).unwrap_err().to_string();
        assert_eq!(
            e,
            "root_uuid \"1234; reboot\": must be hex digits and dashes"
        );
        let mut c = cfg();
        c.root_uuid = None;
        c.root_label = Some("a b".into());
        assert!(
            embedded_config(&c)
                .unwrap_err()
                .to_string()
                .starts_with("root_label \"a b\"")
        );
        let mut c = cfg();
        c.cmdline = "a\nb".into();
        assert!(grub_cfg(&c).is_err());
    }

    #[test]
    fn newest_kernel_with_its_initrd() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(find_kernel(d.path()).unwrap(), None);
        let boot = d.path().join("boot");
        std::fs::create_dir(&boot).unwrap();
        assert_eq!(find_kernel(d.path()).unwrap(), None);
        for f in [
            "vmlinuz-6.1.0-9-amd64",
            "vmlinuz-6.1.0-10-amd64",
            "initrd.img-6.1.0-9-amd64",
            "config-6.1.0-11-amd64",
        ] {
            std::fs::write(boot.join(f), b"x").unwrap();
        }
        let k = find_kernel(d.path()).unwrap().unwrap();
        assert_eq!(k.kernel, "/boot/vmlinuz-6.1.0-10-amd64");
        assert_eq!(k.initrd, None);
        std::fs::write(boot.join("initramfs-6.1.0-10-amd64.img"), b"x").unwrap();
        let k = find_kernel(d.path()).unwrap().unwrap();
        assert_eq!(
            k.initrd.as_deref(),
            Some("/boot/initramfs-6.1.0-10-amd64.img")
        );
        assert_eq!(k.release, "6.1.0-10-amd64");
    }

    #[test]
    fn words_are_quoted_when_needed() {
        assert_eq!(grub_word("root=UUID=ab-12"), "root=UUID=ab-12");
        assert_eq!(grub_word("a b"), "'a b'");
        assert_eq!(grub_word("it's"), "'it'\\''s'");
        assert_eq!(grub_word("$x"), "'$x'");
    }
}
