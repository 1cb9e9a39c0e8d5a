//! Remastering: turn a [`Request`] (file edits, volume id, kickstart/preseed, kernel
//! arguments) into the list of [`Changes`] to the tree, then apply them in one [`Mode`].
//!
//! - `patch` ([`crate::patch`]): rewrite bytes of the existing image when everything fits.
//! - `direct`: `xorriso -indev IN -outdev OUT -boot_image any replay` with `-map`/`-rm`/
//!   `-volid` for the edits; keeps El Torito BIOS + UEFI and the isohybrid MBR/GPT. No mount.
//! - `copy`: the conventional route: extract the whole tree (`osirrox -extract`, no mount),
//!   edit the copy, rebuild with `xorriso -as mkisofs` and the boot options xorriso reads
//!   from the original (`-report_system_area as_mkisofs`).
//! - `overlay`/`bind`: the kernel routes (loop-mounted ISO as overlay lower dir, or a bind
//!   mount of the new file over the read-only mount), in [`crate::kernel`].
//! - `auto`: `patch` when it fits, else `direct`, and says why.
//!
//! Outputs are all-or-nothing: a temporary file in the destination directory, checked (the
//! El Torito entries and the MBR/GPT must match the input's), then renamed into place without
//! overwriting. The boot configs inside the EFI FAT image are edited with mtools
//! ([`crate::fat`]) before the image is written back.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use diskforge_cmd::Cmd;

use crate::boot::{Hybrid, Platform, read_hybrid};
use crate::bootcfg::{ConfigEdit, dialect, edit_config, kickstart_arg, preseed_args, split_args};
use crate::inspect::{Inspection, inspect_with_tree};
use crate::iso9660::{NodeKind, SECTOR, Tree, TreeKind, Volume, normalize};
use crate::isomd5::{IsoMd5, Md5Sums, write_appdata};
use crate::patch::PatchPlan;
use crate::{Error, Result};

/// Copy buffer for streamed copies.
const IO_BUF: usize = 4 << 20;

/// How the output is produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Patch if it fits, else direct.
    Auto,
    /// Rewrite bytes in place (or in a copy, with `-o`).
    Patch,
    /// xorriso `-boot_image any replay`, no mount.
    Direct,
    /// Loop mount + overlay + rebuild (root, kernel iso9660).
    Overlay,
    /// Loop mount + bind mount of each new file + rebuild (root, kernel iso9660).
    Bind,
    /// Extract everything, edit, rebuild (the conventional route).
    Copy,
}

impl Mode {
    /// Every mode's name.
    pub const NAMES: &[&str] = &["auto", "patch", "direct", "overlay", "bind", "copy"];
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Auto => "auto",
            Mode::Patch => "patch",
            Mode::Direct => "direct",
            Mode::Overlay => "overlay",
            Mode::Bind => "bind",
            Mode::Copy => "copy",
        })
    }
}

impl std::str::FromStr for Mode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "auto" => Mode::Auto,
            "patch" => Mode::Patch,
            "direct" => Mode::Direct,
            "overlay" => Mode::Overlay,
            "bind" => Mode::Bind,
            "copy" => Mode::Copy,
            _ => {
                return Err(Error::BadValue {
                    what: "mode",
                    value: s.into(),
                    reason: format!("one of {}", Mode::NAMES.join(", ")),
                });
            }
        })
    }
}

/// One file edit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    /// Add a new file (`--add SRC:DEST`).
    Add {
        /// Local file.
        src: PathBuf,
        /// Path in the ISO.
        dest: String,
    },
    /// Replace an existing file (`--replace SRC:DEST`).
    Replace {
        /// Local file.
        src: PathBuf,
        /// Path in the ISO.
        dest: String,
    },
    /// Remove a file or directory (`--remove DEST`).
    Remove {
        /// Path in the ISO.
        dest: String,
    },
}

impl Edit {
    /// Parse `SRC:DEST` (split at the last `:`) for `--add`/`--replace`.
    pub fn parse_pair(flag: &'static str, value: &str) -> Result<(PathBuf, String)> {
        let bad = |reason: &str| Error::BadValue {
            what: flag,
            value: value.into(),
            reason: reason.into(),
        };
        let (src, dest) = value
            .rsplit_once(':')
            .ok_or_else(|| bad("expected SRC:DEST"))?;
        if src.is_empty() {
            return Err(bad("SRC is empty"));
        }
        if dest.trim_matches('/').is_empty() {
            return Err(bad("DEST is empty"));
        }
        Ok((PathBuf::from(src), normalize(dest)))
    }
}

/// What to do.
#[derive(Debug, Clone)]
pub struct Request {
    /// The input image.
    pub input: PathBuf,
    /// The output image; `None` edits the input in place (patch mode only).
    pub output: Option<PathBuf>,
    /// File edits, in order.
    pub edits: Vec<Edit>,
    /// New volume id (ids in boot configs follow).
    pub volid: Option<String>,
    /// Kickstart file to add at the root and reference from every boot entry.
    pub kickstart: Option<PathBuf>,
    /// Preseed file to add at the root and reference from every boot entry.
    pub preseed: Option<PathBuf>,
    /// Extra kernel arguments for every boot entry.
    pub kernel_args: Vec<String>,
    /// How to produce the output.
    pub mode: Mode,
    /// Implant an isomd5sum MD5 into the output.
    pub implant_md5: bool,
    /// Resolve the edits and choose the mode, then stop: nothing is written (`--dry-run`).
    pub dry_run: bool,
}

impl Request {
    /// A request that changes nothing yet.
    pub fn new(input: impl Into<PathBuf>) -> Self {
        Request {
            input: input.into(),
            output: None,
            edits: Vec::new(),
            volid: None,
            kickstart: None,
            preseed: None,
            kernel_args: Vec::new(),
            mode: Mode::Auto,
            implant_md5: false,
            dry_run: false,
        }
    }
}

/// File content for a change.
#[derive(Debug, Clone)]
pub enum Content {
    /// A local file.
    File(PathBuf),
    /// Bytes we made (an edited config or FAT image).
    Bytes(Vec<u8>),
}

impl Content {
    /// The content as bytes.
    pub fn bytes(&self) -> Result<std::borrow::Cow<'_, [u8]>> {
        match self {
            Content::File(p) => Ok(std::fs::read(p)
                .map_err(|e| Error::io("reading", p, e))?
                .into()),
            Content::Bytes(b) => Ok(b.as_slice().into()),
        }
    }
}

/// A file to write into the tree.
#[derive(Debug, Clone)]
pub struct Put {
    /// Path in the ISO.
    pub dest: String,
    /// Its new content.
    pub content: Content,
    /// Whether the path exists in the input.
    pub existed: bool,
    /// Why (for reports).
    pub why: String,
}

/// Bytes outside the tree to rewrite (a hidden EFI image: an appended partition).
#[derive(Debug, Clone)]
pub struct RawWrite {
    /// Byte offset in the input.
    pub offset: u64,
    /// New bytes (same length as the old).
    pub data: Vec<u8>,
    /// What it is.
    pub what: String,
    /// The MBR (or GPT) partition number it fills, when it is an appended partition.
    pub partition: Option<u8>,
}

/// Every change to make, resolved against the input.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    /// Files to write.
    pub puts: Vec<Put>,
    /// Paths to remove.
    pub removes: Vec<String>,
    /// New volume id.
    pub volid: Option<String>,
    /// Raw rewrites outside the tree.
    pub raw: Vec<RawWrite>,
    /// Boot configs edited (ISO paths, and `IMAGE::/path` inside FAT images).
    pub configs: Vec<String>,
}

impl Changes {
    /// One line per put and removal, saying why.
    fn notes(&self) -> impl Iterator<Item = String> + '_ {
        let puts = self.puts.iter().map(|p| format!("{}: {}", p.dest, p.why));
        puts.chain(self.removes.iter().map(|r| format!("{r}: removed")))
    }

    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        self.puts.is_empty()
            && self.removes.is_empty()
            && self.volid.is_none()
            && self.raw.is_empty()
    }
}

/// Split `/a/b/c` into (`/a/b`, `c`).
pub fn parent_and_name(path: &str) -> (String, String) {
    let p = normalize(path);
    match p.rsplit_once('/') {
        Some(("", n)) => ("/".into(), n.into()),
        Some((d, n)) => (d.into(), n.into()),
        None => ("/".into(), p),
    }
}

/// A step and how long it took.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Step {
    /// What.
    pub name: String,
    /// Seconds.
    pub seconds: f64,
}

/// What [`remaster`] did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Outcome {
    /// The mode that ran.
    pub mode: Mode,
    /// Why this mode.
    pub reason: String,
    /// The output file.
    pub output: PathBuf,
    /// Whether the input was edited in place.
    pub in_place: bool,
    /// Per-edit notes.
    pub notes: Vec<String>,
    /// Boot configs edited.
    pub configs: Vec<String>,
    /// Step timings.
    pub steps: Vec<Step>,
    /// The implanted MD5, when asked for.
    pub md5: Option<Md5Sums>,
    /// Whether this was a dry run (the plan only: nothing written).
    pub dry_run: bool,
}

/// Progress events for long steps.
#[derive(Debug, Clone)]
pub enum Event<'a> {
    /// A step starts.
    Step(&'a str),
    /// Bytes done of a total in the current step.
    Bytes(u64, u64),
}

fn bad(what: &'static str, value: impl Into<String>, reason: impl Into<String>) -> Error {
    Error::BadValue {
        what,
        value: value.into(),
        reason: reason.into(),
    }
}

/// Check the request against the input and list every change (configs and the FAT images
/// included). `tree` is the primary tree of `vol`; `scratch` holds FAT images that mtools
/// edits (created only then).
pub fn resolve(
    req: &Request,
    vol: &Volume,
    tree: &Tree,
    insp: &Inspection,
    scratch: &Scratch,
) -> Result<Changes> {
    let mut ch = Changes::default();
    let old_volid = vol.primary.volume_id.clone();
    if let Some(v) = &req.volid {
        if v.is_empty() || v.len() > 32 || !v.is_ascii() {
            return Err(bad("volid", v.clone(), "must be 1 to 32 ASCII characters"));
        }
        if *v != old_volid {
            ch.volid = Some(v.clone());
        }
    }
    let new_volid = req.volid.clone().unwrap_or(old_volid.clone());
    let check_src = |flag: &'static str, src: &Path| -> Result<()> {
        match std::fs::metadata(src) {
            Ok(m) if m.is_file() => Ok(()),
            Ok(_) => Err(bad(flag, src.display().to_string(), "not a regular file")),
            Err(e) => Err(bad(flag, src.display().to_string(), e.to_string())),
        }
    };
    let put = |ch: &mut Changes, dest: String, content: Content, why: String| {
        let existed = tree.get(&dest).is_some();
        ch.puts.retain(|p| p.dest != dest);
        ch.puts.push(Put {
            dest,
            content,
            existed,
            why,
        });
    };
    for e in &req.edits {
        match e {
            Edit::Add { src, dest } => {
                check_src("--add", src)?;
                if tree.get(dest).is_some() {
                    return Err(bad(
                        "--add",
                        dest.clone(),
                        "already exists in the ISO (use --replace)",
                    ));
                }
                put(
                    &mut ch,
                    dest.clone(),
                    Content::File(src.clone()),
                    format!("--add {}", src.display()),
                );
            }
            Edit::Replace { src, dest } => {
                check_src("--replace", src)?;
                match tree.get(dest) {
                    Some(n) if n.kind == NodeKind::File => {}
                    Some(_) => {
                        return Err(bad(
                            "--replace",
                            dest.clone(),
                            "is not a regular file in the ISO",
                        ));
                    }
                    None => return Err(bad("--replace", dest.clone(), "no such file in the ISO")),
                }
                put(
                    &mut ch,
                    dest.clone(),
                    Content::File(src.clone()),
                    format!("--replace {}", src.display()),
                );
            }
            Edit::Remove { dest } => {
                if tree.get(dest).is_none() {
                    return Err(bad(
                        "--remove",
                        dest.clone(),
                        "no such file or directory in the ISO",
                    ));
                }
                ch.puts.retain(|p| p.dest != *dest);
                ch.removes.push(dest.clone());
            }
        }
    }
    let mut edit = ConfigEdit {
        append: Vec::new(),
        volid: ch.volid.clone().map(|n| (old_volid.clone(), n)),
    };
    for (flag, file, is_ks) in [
        ("--kickstart", &req.kickstart, true),
        ("--preseed", &req.preseed, false),
    ] {
        let Some(file) = file else { continue };
        check_src(flag, file)?;
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| bad(flag, file.display().to_string(), "file name is not UTF-8"))?
            .to_owned();
        put(
            &mut ch,
            format!("/{name}"),
            Content::File(file.clone()),
            format!("{flag} {}", file.display()),
        );
        if is_ks {
            edit.append.push(kickstart_arg(&new_volid, &name));
        } else {
            edit.append.extend(preseed_args(&name));
        }
    }
    for a in &req.kernel_args {
        edit.append.extend(split_args(a));
    }
    if edit.is_empty() {
        return Ok(ch);
    }
    // Boot configs in the tree.
    let configs: Vec<(String, u64, u64)> = tree
        .nodes
        .values()
        .filter(|n| n.kind == NodeKind::File && dialect(&n.path).is_some() && n.extents.len() == 1)
        .map(|n| (n.path.clone(), n.extents[0].offset(), n.size))
        .collect();
    for (path, off, size) in configs {
        if ch.removes.contains(&path) {
            continue;
        }
        let old = match ch.puts.iter().find(|p| p.dest == path) {
            Some(p) => p.content.bytes()?.into_owned(),
            None => vol.src.read_vec(off, size as usize)?,
        };
        let Some(d) = dialect(&path) else { continue };
        let new = edit_config(d, &String::from_utf8_lossy(&old), &edit);
        if new.as_bytes() != old.as_slice() {
            put(
                &mut ch,
                path.clone(),
                Content::Bytes(new.into_bytes()),
                "boot config".into(),
            );
            ch.configs.push(path);
        }
    }
    // Boot configs inside the EFI FAT images: El Torito UEFI entries and ESP partitions.
    let mut images: Vec<(u64, u64, Option<String>)> = Vec::new();
    if let Some(cat) = &insp.el_torito {
        for e in cat.entries.iter().filter(|e| e.platform == Platform::Uefi) {
            images.push((
                u64::from(e.load_rba) * SECTOR,
                e.image_size,
                e.image.clone(),
            ));
        }
    }
    for (off, len) in insp.hybrid.esp_ranges() {
        let in_tree = tree
            .file_at((off / SECTOR) as u32)
            .filter(|_| off % SECTOR == 0)
            .map(|n| n.path.clone());
        images.push((off, len, in_tree));
    }
    images.sort_by_key(|(o, _, p)| (*o, p.is_none()));
    images.dedup_by_key(|(o, _, _)| *o);
    for (i, (off, len, path)) in images.into_iter().enumerate() {
        if len == 0 || off + len > vol.src.len() {
            continue;
        }
        if path
            .as_ref()
            .is_some_and(|p| ch.removes.contains(p) || ch.puts.iter().any(|x| x.dest == *p))
        {
            continue;
        }
        let mut data = vol.src.read_vec(off, len as usize)?;
        let label = path
            .clone()
            .unwrap_or_else(|| format!("hidden EFI image at byte {off}"));
        // Our own FAT code when every edit fits its clusters; mtools otherwise.
        let (changed, new) = match crate::fat::edit_configs_in_memory(&mut data, &edit) {
            Some(changed) => (changed, data),
            None => {
                let scratch = scratch.path()?;
                let img = scratch.join(format!("efi-image-{i}.img"));
                std::fs::write(&img, &data).map_err(|e| Error::io("writing", &img, e))?;
                let changed = match crate::fat::edit_configs(&img, &edit, scratch) {
                    Ok(c) => c,
                    // Not a FAT image mtools can read (e.g. an ISO 9660 partition).
                    Err(Error::Cmd(e)) if e.exit_status().is_some() => {
                        tracing::debug!(image = %label, error = %e, "not an editable FAT image");
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                let new = std::fs::read(&img).map_err(|e| Error::io("reading", &img, e))?;
                (changed, new)
            }
        };
        if changed.is_empty() {
            continue;
        }
        ch.configs
            .extend(changed.iter().map(|c| format!("{label}::{c}")));
        match path {
            Some(p) => put(&mut ch, p, Content::Bytes(new), "EFI image configs".into()),
            None => {
                let partition = insp
                    .hybrid
                    .mbr
                    .iter()
                    .flatten()
                    .find(|p| u64::from(p.start) * 512 == off && p.ptype != 0xee)
                    .map(|p| p.number)
                    .or_else(|| {
                        let gpt = insp.hybrid.gpt.iter().flatten();
                        gpt.filter(|p| p.first_lba * 512 == off)
                            .find_map(|p| u8::try_from(p.number).ok())
                    });
                ch.raw.push(RawWrite {
                    offset: off,
                    data: new,
                    what: label,
                    partition,
                });
            }
        }
    }
    Ok(ch)
}

fn timed<T>(
    steps: &mut Vec<Step>,
    name: &str,
    progress: &mut dyn FnMut(Event<'_>),
    f: impl FnOnce(&mut dyn FnMut(Event<'_>)) -> Result<T>,
) -> Result<T> {
    progress(Event::Step(name));
    let t = Instant::now();
    let r = f(progress)?;
    steps.push(Step {
        name: name.into(),
        seconds: t.elapsed().as_secs_f64(),
    });
    Ok(r)
}

/// A scratch directory, created on first use: patch mode usually needs none, and on a
/// busy ext4 creating and removing one costs more than the edit itself.
pub struct Scratch {
    parent: PathBuf,
    dir: std::cell::OnceCell<tempfile::TempDir>,
}

impl Scratch {
    /// A scratch directory under `parent` (else the system temporary directory).
    pub fn new(parent: PathBuf) -> Self {
        Scratch {
            parent,
            dir: std::cell::OnceCell::new(),
        }
    }

    /// The directory, created now if needed.
    pub fn path(&self) -> Result<&Path> {
        if let Some(d) = self.dir.get() {
            return Ok(d.path());
        }
        let d = tempfile::Builder::new()
            .prefix(".iso-remaster-work-")
            .tempdir_in(&self.parent)
            .or_else(|_| tempfile::tempdir())
            .map_err(|e| Error::io("creating a scratch directory in", &self.parent, e))?;
        Ok(self.dir.get_or_init(|| d).path())
    }
}

/// A temporary output next to the final path, renamed into place by [`Staged::publish`].
struct Staged {
    tmp: tempfile::NamedTempFile,
    dest: PathBuf,
}

impl Staged {
    fn new(dest: &Path) -> Result<Self> {
        if dest.exists() {
            return Err(bad(
                "-o",
                dest.display().to_string(),
                "already exists (not overwriting)",
            ));
        }
        let dir = match dest.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        // 0666 minus the umask, as `cp` or `genisoimage -o` would create it (not tempfile's
        // 0600, which an HTTP or PXE server could not read).
        let tmp = tempfile::Builder::new()
            .prefix(".iso-remaster-")
            .suffix(".tmp")
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666))
            .tempfile_in(&dir)
            .map_err(|e| Error::io("creating a temporary file in", &dir, e))?;
        Ok(Staged {
            tmp,
            dest: dest.to_owned(),
        })
    }
    fn path(&self) -> &Path {
        self.tmp.path()
    }
    fn publish(self) -> Result<()> {
        let dest = self.dest.clone();
        self.tmp
            .persist_noclobber(&dest)
            .map_err(|e| Error::io("renaming the output to", &dest, e.error))?;
        Ok(())
    }
}

/// Copy `src` to `dst` with a reflink when the filesystem can, else `copy_file_range`.
fn fast_copy(src: &Path, dst: &Path) -> Result<()> {
    let input = File::open(src).map_err(|e| Error::io("opening", src, e))?;
    let mut output = std::fs::OpenOptions::new()
        .write(true)
        .open(dst)
        .map_err(|e| Error::io("opening", dst, e))?;
    if rustix::fs::ioctl_ficlone(&output, &input).is_ok() {
        return Ok(());
    }
    let mut input = input;
    // std's File-to-File copy uses copy_file_range (or sendfile) on Linux.
    std::io::copy(&mut input, &mut output).map_err(|e| Error::io("copying to", dst, e))?;
    Ok(())
}

/// Copy `src` to `dst` as `plan` lays it out: the whole file (see [`fast_copy`]), or, when the
/// plan inserts blocks, the ranges before and after the insertion with a hole between.
fn copy_for_plan(src: &Path, dst: &Path, plan: &PatchPlan) -> Result<()> {
    let Some(ins) = plan.insert else {
        return fast_copy(src, dst);
    };
    let input = File::open(src).map_err(|e| Error::io("opening", src, e))?;
    let output = std::fs::OpenOptions::new()
        .write(true)
        .open(dst)
        .map_err(|e| Error::io("opening", dst, e))?;
    let len = input
        .metadata()
        .map_err(|e| Error::io("reading the size of", src, e))?
        .len();
    output
        .set_len(plan.output_len(len))
        .map_err(|e| Error::io("sizing", dst, e))?;
    // The plan only inserts inside the file (it refuses a file that ends before the point).
    let head = ins.at.min(len);
    copy_range(&input, src, 0, &output, dst, 0, head)?;
    copy_range(&input, src, head, &output, dst, head + ins.len, len - head)?;
    Ok(())
}

/// Copy `len` bytes at `from` of `input` to `to` of `output`: `copy_file_range` (a reflink on
/// filesystems that share extents), falling back to reads and writes across filesystems.
fn copy_range(
    input: &File,
    src: &Path,
    from: u64,
    output: &File,
    dst: &Path,
    to: u64,
    len: u64,
) -> Result<()> {
    let (mut off_in, mut off_out, end) = (from, to, from + len);
    while off_in < end {
        let want = (end - off_in).min(1 << 30) as usize;
        match rustix::fs::copy_file_range(
            input,
            Some(&mut off_in),
            output,
            Some(&mut off_out),
            want,
        ) {
            Ok(0) => {
                return Err(Error::io(
                    "copying from",
                    src,
                    std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
                ));
            }
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => break,
        }
    }
    // Fallback for what copy_file_range refused (e.g. EXDEV, ENOSYS).
    let mut buf = Vec::new();
    while off_in < end {
        buf.resize(IO_BUF, 0);
        let n = (end - off_in).min(IO_BUF as u64) as usize;
        input
            .read_exact_at(&mut buf[..n], off_in)
            .map_err(|e| Error::io("reading", src, e))?;
        output
            .write_all_at(&buf[..n], off_out)
            .map_err(|e| Error::io("writing", dst, e))?;
        off_in += n as u64;
        off_out += n as u64;
    }
    Ok(())
}

/// Copy `src` to `dst` (reflink or `copy_file_range`) and patch it, while this thread hashes
/// the same bytes — the input with the patches overlaid — from the page cache: the MD5 costs
/// no extra pass over the output and runs beside the copy.
fn copy_and_hash(
    src: &Path,
    dst: &Path,
    plan: &PatchPlan,
    mut hasher: IsoMd5,
    progress: &mut dyn FnMut(Event<'_>),
) -> Result<Md5Sums> {
    std::thread::scope(|s| {
        let copier = s.spawn(|| -> Result<()> {
            copy_for_plan(src, dst, plan)?;
            apply_plan(dst, plan)
        });
        let hashed = (|| -> Result<()> {
            let f = File::open(src).map_err(|e| Error::io("opening", src, e))?;
            crate::isomd5::hash_reads(
                src,
                &|off, buf| plan.read_output(&f, off, buf),
                &mut hasher,
                &mut |done, total| progress(Event::Bytes(done, total)),
            )
        })();
        let copied = copier.join().unwrap_or_else(|_| {
            Err(Error::io(
                "copying to",
                dst,
                std::io::Error::other("copy thread panicked"),
            ))
        });
        copied?;
        hashed
    })?;
    Ok(hasher.finish())
}

fn apply_plan(path: &Path, plan: &PatchPlan) -> Result<()> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| Error::io("opening for writing", path, e))?;
    // Like cp, no fsync: with the page cache the edit costs only its own bytes.
    for (off, data) in &plan.writes {
        f.write_all_at(data, *off)
            .map_err(|e| Error::io("writing", path, e))?;
    }
    Ok(())
}

fn implant_file(
    path: &Path,
    steps: &mut Vec<Step>,
    progress: &mut dyn FnMut(Event<'_>),
) -> Result<Md5Sums> {
    timed(steps, "implant md5", progress, |p| {
        let mut cb = |d, t| p(Event::Bytes(d, t));
        crate::isomd5::implant(path, &mut cb)
    })
}

/// Inspect `output` (a timed step) and check it kept the boot setup of `before`.
fn verify_boot(
    steps: &mut Vec<Step>,
    progress: &mut dyn FnMut(Event<'_>),
    before: &Inspection,
    output: &Path,
) -> Result<()> {
    let after = timed(steps, "verify boot entries", progress, |_| {
        crate::inspect(output)
    })?;
    check_boot_preserved(before, &after)
}

/// Compare the boot setup of input and output; an error lists the differences.
pub fn check_boot_preserved(before: &Inspection, after: &Inspection) -> Result<()> {
    let sig = |i: &Inspection| {
        let mut v: Vec<String> = i
            .el_torito
            .iter()
            .flat_map(|c| c.entries.iter())
            .map(|e| {
                format!(
                    "{} {} {} {}",
                    e.platform,
                    e.emulation,
                    if e.bootable {
                        "bootable"
                    } else {
                        "not-bootable"
                    },
                    e.image.clone().unwrap_or_else(|| "hidden".into())
                )
            })
            .collect();
        v.push(format!(
            "mbr={} gpt={}",
            i.hybrid.mbr.is_some(),
            i.hybrid.gpt.is_some()
        ));
        v
    };
    let (a, b) = (sig(before), sig(after));
    if a != b {
        return Err(Error::BootChanged {
            output: PathBuf::from(&after.path),
            before: a,
            after: b,
        });
    }
    Ok(())
}

/// Remaster `req.input` as asked. `progress` hears about steps and bytes.
pub fn remaster(req: &Request, progress: &mut dyn FnMut(Event<'_>)) -> Result<Outcome> {
    let mut steps = Vec::new();
    let vol = Volume::open(&req.input)?;
    // Walked once: inspection, resolving and planning share it.
    let primary = vol.tree(TreeKind::Primary)?;
    let insp = inspect_with_tree(&vol, &primary)?;
    let scratch = Scratch::new(
        req.output
            .as_ref()
            .and_then(|o| {
                o.parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .map(Path::to_path_buf)
            })
            .unwrap_or_else(std::env::temp_dir),
    );
    let changes = timed(&mut steps, "resolve edits", progress, |_| {
        resolve(req, &vol, &primary, &insp, &scratch)
    })?;
    if let Some(o) = &req.output
        && o.exists()
    {
        return Err(bad(
            "-o",
            o.display().to_string(),
            "already exists (not overwriting)",
        ));
    }
    let joliet = if vol.joliet.is_some() {
        Some(vol.tree(TreeKind::Joliet)?)
    } else {
        None
    };
    let boot_images: Vec<u32> = insp
        .el_torito
        .iter()
        .flat_map(|c| c.entries.iter().map(|e| e.load_rba))
        .collect();
    let had_md5 = insp.implanted_md5.is_some();
    let patch = |steps: &mut Vec<Step>, progress: &mut dyn FnMut(Event<'_>), grow: bool| {
        let name = if grow {
            "plan (may grow)"
        } else {
            "plan patch"
        };
        timed(steps, name, progress, |_| {
            crate::patch::plan(
                &vol,
                &primary,
                joliet.as_ref(),
                &insp.hybrid,
                &boot_images,
                &changes,
                had_md5,
                grow,
            )
        })
    };
    let grown = |plan: &PatchPlan| match plan.insert {
        Some(i) => format!("the image grows by {} MiB", i.len >> 20),
        None => "it fits the image as it is".to_owned(),
    };
    let (mode, reason, plan) = match req.mode {
        // One plan: growing is allowed when there is an output; whether it grew picks the mode.
        Mode::Auto => match patch(&mut steps, progress, req.output.is_some())? {
            Ok(plan) if plan.insert.is_none() => {
                let r = format!(
                    "patch: every edit fits space the image already has ({} bytes to write)",
                    plan.bytes()
                );
                (Mode::Patch, r, Some(plan))
            }
            Ok(plan) => {
                let r = format!(
                    "direct: the edits need more room than the image's padding; our writer \
                     copies the image and writes {} bytes, {}",
                    plan.bytes(),
                    grown(&plan)
                );
                (Mode::Direct, r, Some(plan))
            }
            Err(why) if req.output.is_some() => (
                Mode::Direct,
                format!(
                    "direct: our writer cannot ({why}); xorriso replays the boot setup \
                     without mounting"
                ),
                None,
            ),
            Err(why) => {
                return Err(Error::DoesNotFit {
                    reason: format!("{why}; editing in place needs patch mode, give -o OUT"),
                });
            }
        },
        Mode::Patch => match patch(&mut steps, progress, false)? {
            Ok(plan) => (
                Mode::Patch,
                format!("patch: asked for ({} bytes to write)", plan.bytes()),
                Some(plan),
            ),
            Err(why) => return Err(Error::DoesNotFit { reason: why }),
        },
        Mode::Direct if req.output.is_some() => match patch(&mut steps, progress, true)? {
            Ok(plan) => {
                let r = format!(
                    "direct: asked for; our writer copies the image and writes {} bytes, {}",
                    plan.bytes(),
                    grown(&plan)
                );
                (Mode::Direct, r, Some(plan))
            }
            Err(why) => (
                Mode::Direct,
                format!(
                    "direct: asked for; our writer cannot ({why}), xorriso replays the boot \
                     setup without mounting"
                ),
                None,
            ),
        },
        m => (m, format!("{m}: asked for"), None),
    };
    if mode != Mode::Patch && req.output.is_none() {
        return Err(bad(
            "--mode",
            mode.to_string(),
            "only patch edits in place; give -o OUT",
        ));
    }
    let mut notes = plan.as_ref().map(|p| p.notes.clone()).unwrap_or_default();
    if req.dry_run {
        if let Some(v) = &changes.volid {
            notes.push(format!("volume id: {v}"));
        }
        if plan.is_none() {
            notes.extend(changes.notes());
            notes.extend(
                changes
                    .raw
                    .iter()
                    .map(|r| format!("{} bytes at {}: {}", r.data.len(), r.offset, r.what)),
            );
        }
        if req.implant_md5 {
            notes.push("an isomd5sum MD5 would be implanted".to_owned());
        }
        return Ok(Outcome {
            mode,
            reason,
            output: req.output.clone().unwrap_or_else(|| req.input.clone()),
            in_place: req.output.is_none(),
            notes,
            configs: changes.configs,
            steps,
            md5: None,
            dry_run: true,
        });
    }
    let mut md5 = None;
    let output = match (&req.output, plan) {
        (None, Some(plan)) => {
            timed(&mut steps, "patch in place", progress, |_| {
                apply_plan(&req.input, &plan)
            })?;
            if req.implant_md5 {
                md5 = Some(implant_file(&req.input, &mut steps, progress)?);
            }
            req.input.clone()
        }
        (Some(out), Some(plan)) => {
            let staged = Staged::new(out)?;
            if req.implant_md5 {
                let hasher = IsoMd5::for_blocks(u64::from(plan.volume_blocks), vol.primary.lba);
                let sums = timed(&mut steps, "copy + patch || md5", progress, |p| {
                    copy_and_hash(&req.input, staged.path(), &plan, hasher, p)
                })?;
                write_appdata(staged.path(), vol.primary.lba, &sums)?;
                md5 = Some(sums);
            } else {
                timed(&mut steps, "copy", progress, |_| {
                    copy_for_plan(&req.input, staged.path(), &plan)
                })?;
                timed(&mut steps, "patch", progress, |_| {
                    apply_plan(staged.path(), &plan)
                })?;
            }
            if mode == Mode::Direct {
                verify_boot(&mut steps, progress, &insp, staged.path())?;
            }
            staged.publish()?;
            out.clone()
        }
        (Some(out), None) => {
            let staged = Staged::new(out)?;
            match mode {
                Mode::Direct if req.implant_md5 => {
                    let sums = timed(
                        &mut steps,
                        "xorriso replay + md5 (streamed)",
                        progress,
                        |_| {
                            direct_streamed(
                                &req.input,
                                staged.path(),
                                &insp,
                                &changes,
                                scratch.path()?,
                            )
                        },
                    )?;
                    md5 = sums;
                }
                Mode::Direct => timed(&mut steps, "xorriso replay", progress, |_| {
                    direct(&req.input, staged.path(), &insp, &changes, scratch.path()?)
                })?,
                Mode::Copy if crate::kernel::unavailable().is_some() => {
                    let tree = scratch.path()?.join("tree");
                    timed(&mut steps, "extract (osirrox)", progress, |_| {
                        extract_tree(&req.input, &tree)
                    })?;
                    timed(&mut steps, "edit copy", progress, |_| {
                        apply_to_dir(&tree, &changes)
                    })?;
                    timed(
                        &mut steps,
                        "rebuild (xorriso -as mkisofs)",
                        progress,
                        |_| {
                            rebuild(
                                &req.input,
                                &insp,
                                &tree,
                                staged.path(),
                                &changes,
                                scratch.path()?,
                            )
                        },
                    )?;
                }
                Mode::Overlay | Mode::Bind | Mode::Copy => {
                    let name = match mode {
                        Mode::Copy => "mount + rsync + rebuild",
                        _ => "mount + rebuild",
                    };
                    timed(&mut steps, name, progress, |_| {
                        crate::kernel::run(
                            mode,
                            &req.input,
                            &insp,
                            staged.path(),
                            &changes,
                            scratch.path()?,
                        )
                    })?
                }
                Mode::Auto | Mode::Patch => unreachable_mode(mode)?,
            }
            if req.implant_md5 && md5.is_none() {
                md5 = Some(implant_file(staged.path(), &mut steps, progress)?);
            }
            verify_boot(&mut steps, progress, &insp, staged.path())?;
            notes.extend(changes.notes());
            staged.publish()?;
            out.clone()
        }
        (None, None) => {
            unreachable_mode(mode)?;
            req.input.clone()
        }
    };
    Ok(Outcome {
        mode,
        reason,
        output,
        in_place: req.output.is_none(),
        notes,
        configs: changes.configs,
        steps,
        md5,
        dry_run: false,
    })
}

fn unreachable_mode(mode: Mode) -> Result<()> {
    Err(bad(
        "--mode",
        mode.to_string(),
        "internal: mode has no output route",
    ))
}

/// Stage every content that is not a local file under `scratch`, returning `(src, dest)`.
fn staged_sources(changes: &Changes, scratch: &Path) -> Result<Vec<(PathBuf, String)>> {
    let mut v = Vec::new();
    for (i, p) in changes.puts.iter().enumerate() {
        let src = match &p.content {
            Content::File(f) => f.clone(),
            Content::Bytes(b) => {
                let f = scratch.join(format!("put-{i}"));
                std::fs::write(&f, b).map_err(|e| Error::io("writing", &f, e))?;
                f
            }
        };
        v.push((src, p.dest.clone()));
    }
    Ok(v)
}

fn raw_images(changes: &Changes, scratch: &Path) -> Result<Vec<(u8, PathBuf)>> {
    let mut v = Vec::new();
    for (i, r) in changes.raw.iter().enumerate() {
        let Some(n) = r.partition else {
            return Err(Error::ModeUnavailable {
                mode: "direct/copy".into(),
                reason: format!(
                    "{} is not an appended partition xorriso can replace",
                    r.what
                ),
            });
        };
        let f = scratch.join(format!("appended-{i}.img"));
        std::fs::write(&f, &r.data).map_err(|e| Error::io("writing", &f, e))?;
        v.push((n, f));
    }
    Ok(v)
}

/// `direct` mode: xorriso rewrites the image with the edits, replaying the boot setup.
pub fn direct(
    input: &Path,
    output: &Path,
    insp: &Inspection,
    changes: &Changes,
    scratch: &Path,
) -> Result<()> {
    let mut c = Cmd::new("xorriso")
        .args(["-abort_on", "FAILURE", "-return_with", "SORRY", "32"])
        .arg("-indev")
        .arg(input)
        .arg("-outdev")
        .arg(output)
        // No fsync every 32 MiB (cp does not sync either).
        .args(["-stdio_sync", "off"])
        .args(["-boot_image", "any", "replay"]);
    if insp.joliet.is_some() {
        c = c.args(["-joliet", "on", "-compliance", "joliet_long_names"]);
    }
    if let Some(v) = &changes.volid {
        c = c.args(["-volid", v]);
    }
    for r in &changes.removes {
        c = c.args(["-rm_r", r, "--"]);
    }
    for (src, dest) in staged_sources(changes, scratch)? {
        c = c.arg("-map").arg(src).arg(dest);
    }
    for (n, img) in raw_images(changes, scratch)? {
        c = c
            .args(["-append_partition", &n.to_string(), "0xef"])
            .arg(img);
    }
    if let Some(n) = gpt_only_hidden_efi(insp) {
        // Replay reports "Cannot enable EL Torito boot image" (SORRY) and drops the entry;
        // add it again. The boot entries are compared with the input's afterwards.
        c = c.args(["-boot_image", "any", "appended_part_as=gpt"]);
        c = c.args(["-boot_image", "any", "next", "-boot_image", "any"]);
        c = c.arg(format!("efi_path=--interval:appended_partition_{n}:all::"));
        c = c.args(["-return_with", "FAILURE", "32"]);
    }
    c.args(["-commit"]).run()?;
    Ok(())
}

/// Pipe buffer asked for on the FIFO (the default 64 KiB costs a context switch per write).
const PIPE_SIZE: usize = 1 << 20;

/// The GPT partition number of a hidden El Torito UEFI image that only the GPT describes
/// (`-appended_part_as_gpt`): xorriso 1.5.4 neither replays nor reports that entry.
pub fn gpt_only_hidden_efi(insp: &Inspection) -> Option<u32> {
    let entries = insp.el_torito.as_ref()?.entries.iter();
    let e = entries
        .filter(|e| e.platform == Platform::Uefi && e.image.is_none())
        .find(|_| true)?;
    let start = u64::from(e.load_rba) * 4;
    let in_mbr = insp
        .hybrid
        .mbr
        .iter()
        .flatten()
        .any(|p| u64::from(p.start) == start);
    let gpt = insp.hybrid.gpt.iter().flatten();
    gpt.filter(|p| p.first_lba == start && !in_mbr)
        .map(|p| p.number)
        .next()
}

/// Attempts to release a FIFO reader that xorriso never connected to, and the delay between.
const UNBLOCK_ATTEMPTS: usize = 500;
/// See [`UNBLOCK_ATTEMPTS`].
const UNBLOCK_DELAY: std::time::Duration = std::time::Duration::from_millis(10);

/// Where an output volume's PVD sits (xorriso always writes it at block 16).
const PVD_LBA: u32 = 16;

/// Reads the FIFO xorriso writes to: hashes (once the PVD has streamed past and the volume
/// size is known) and writes to `output`. Returns `None` for the sums when the stream had no
/// primary volume descriptor at block 16.
fn drain_fifo(fifo: &Path, output: &Path) -> Result<Option<Md5Sums>> {
    let mut input = File::open(fifo).map_err(|e| Error::io("opening", fifo, e))?;
    // A bigger pipe means fewer context switches between xorriso and us (best effort).
    let _ = rustix::pipe::fcntl_setpipe_size(&input, PIPE_SIZE);
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .open(output)
        .map_err(|e| Error::io("opening", output, e))?;
    let head_len = (u64::from(PVD_LBA) + 1) * SECTOR;
    let mut head: Vec<u8> = Vec::with_capacity(head_len as usize);
    let mut hasher: Option<IsoMd5> = None;
    let mut buf = vec![0u8; IO_BUF];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io("reading", fifo, e)),
        };
        let data = &buf[..n];
        out.write_all(data)
            .map_err(|e| Error::io("writing", output, e))?;
        match hasher.as_mut() {
            Some(h) => h.update(data),
            None => {
                head.extend_from_slice(data);
                if head.len() as u64 >= head_len {
                    let pvd = &head[(u64::from(PVD_LBA) * SECTOR) as usize..];
                    if pvd[0] == 1 && &pvd[1..6] == b"CD001" {
                        let blocks = u64::from(crate::iso9660::le32(pvd, 80));
                        let mut h = IsoMd5::for_blocks(blocks, PVD_LBA);
                        h.update(&head);
                        hasher = Some(h);
                    } else {
                        return Ok(None);
                    }
                }
            }
        }
    }
    Ok(hasher.map(IsoMd5::finish))
}

/// `direct` with `--implant-md5` in one pass: xorriso writes into a FIFO, a thread hashes the
/// bytes as they pass on their way to `output`, then the sum goes into the PVD.
pub fn direct_streamed(
    input: &Path,
    output: &Path,
    insp: &Inspection,
    changes: &Changes,
    scratch: &Path,
) -> Result<Option<Md5Sums>> {
    let fifo = scratch.join("xorriso-out.fifo");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .map_err(|e| Error::io("creating the FIFO", &fifo, e.into()))?;
    let (sums, run) = std::thread::scope(|s| {
        let reader = s.spawn(|| drain_fifo(&fifo, output));
        let run = direct(input, &fifo, insp, changes, scratch);
        // If xorriso never opened the FIFO, the reader blocks in open(): open the write side
        // once (retrying until the reader has reached open(), since a non-blocking writer
        // open fails with ENXIO while no reader waits) so it sees EOF.
        for _ in 0..UNBLOCK_ATTEMPTS {
            if reader.is_finished() {
                break;
            }
            match rustix::fs::open(
                &fifo,
                rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::NONBLOCK,
                rustix::fs::Mode::empty(),
            ) {
                Ok(fd) => {
                    drop(fd);
                    break;
                }
                Err(_) => std::thread::sleep(UNBLOCK_DELAY),
            }
        }
        let sums = reader.join().unwrap_or_else(|_| {
            Err(Error::io(
                "hashing",
                output,
                std::io::Error::other("reader thread panicked"),
            ))
        });
        (sums, run)
    });
    run?;
    let sums = sums?;
    match &sums {
        Some(s) => write_appdata(output, PVD_LBA, s)?,
        // No PVD where xorriso puts it: hash the finished file instead.
        None => return crate::isomd5::implant(output, &mut |_, _| {}).map(Some),
    }
    Ok(sums)
}

/// Extract the whole tree with osirrox (no mount) and make it writable.
pub fn extract_tree(input: &Path, dir: &Path) -> Result<()> {
    Cmd::new("osirrox")
        .arg("-indev")
        .arg(input)
        .args(["-osirrox", "on", "-extract", "/"])
        .arg(dir)
        .run()?;
    make_writable(dir)
}

fn make_writable(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let meta =
            std::fs::symlink_metadata(&d).map_err(|e| Error::io("reading metadata of", &d, e))?;
        if meta.file_type().is_symlink() {
            continue;
        }
        let mut perm = meta.permissions();
        perm.set_mode(perm.mode() | 0o200);
        std::fs::set_permissions(&d, perm).map_err(|e| Error::io("making writable", &d, e))?;
        if meta.is_dir() {
            for e in std::fs::read_dir(&d).map_err(|e| Error::io("listing", &d, e))? {
                stack.push(e.map_err(|e| Error::io("listing", &d, e))?.path());
            }
        }
    }
    Ok(())
}

/// Apply the changes to an extracted (or merged) tree.
pub fn apply_to_dir(dir: &Path, changes: &Changes) -> Result<()> {
    for r in &changes.removes {
        let p = dir.join(r.trim_start_matches('/'));
        let res = if p.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        res.map_err(|e| Error::io("removing", &p, e))?;
    }
    for put in &changes.puts {
        let p = dir.join(put.dest.trim_start_matches('/'));
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io("creating", parent, e))?;
        }
        if p.exists() {
            std::fs::remove_file(&p).map_err(|e| Error::io("removing", &p, e))?;
        }
        match &put.content {
            Content::File(f) => std::fs::copy(f, &p).map(|_| ()),
            Content::Bytes(b) => std::fs::write(&p, b),
        }
        .map_err(|e| Error::io("writing", &p, e))?;
    }
    Ok(())
}

/// Split xorriso's `-report_system_area as_mkisofs` output into arguments (single and double
/// quotes as in a shell).
pub fn split_report(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut cur = String::new();
        let mut have = false;
        let mut quote: Option<char> = None;
        for c in line.chars() {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), c) => cur.push(c),
                (None, '\'' | '"') => {
                    quote = Some(c);
                    have = true;
                }
                (None, c) if c.is_whitespace() => {
                    if have || !cur.is_empty() {
                        out.push(std::mem::take(&mut cur));
                        have = false;
                    }
                }
                (None, c) => cur.push(c),
            }
        }
        if have || !cur.is_empty() {
            out.push(cur);
        }
    }
    out
}

/// The `xorriso -as mkisofs` options that reproduce the input's boot setup and ids, with the
/// volume id and appended EFI partitions replaced as `changes` say.
pub fn mkisofs_boot_args(
    input: &Path,
    insp: &Inspection,
    changes: &Changes,
    scratch: &Path,
) -> Result<Vec<String>> {
    let abs = std::fs::canonicalize(input).map_err(|e| Error::io("resolving", input, e))?;
    let report = Cmd::new("xorriso")
        .arg("-indev")
        .arg(&abs)
        // Loading may report a SORRY (a boot image it cannot map); the report is still whole.
        .args(["-return_with", "FAILURE", "32"])
        .args(["-report_system_area", "as_mkisofs"])
        .read()?;
    let mut args = split_report(&report);
    let replaced = raw_images(changes, scratch)?;
    let mut i = 0;
    while i < args.len() {
        if args[i] == "-V"
            && let (Some(v), Some(a)) = (&changes.volid, args.get_mut(i + 1))
        {
            *a = v.clone();
        }
        if args[i] == "-append_partition"
            && i + 3 < args.len()
            && let Some((_, img)) = replaced.iter().find(|(n, _)| n.to_string() == args[i + 1])
        {
            args[i + 3] = img.display().to_string();
        }
        i += 1;
    }
    let mut all = vec!["-R".to_owned()];
    if insp.joliet.is_some() {
        all.extend(["-J".into(), "-joliet-long".into()]);
    }
    for (flag, v) in [
        ("-A", &insp.primary.application_id),
        ("-publisher", &insp.primary.publisher_id),
        ("-sysid", &insp.primary.system_id),
        ("-volset", &insp.primary.volume_set_id),
    ] {
        if !v.is_empty() {
            all.extend([flag.to_owned(), v.clone()]);
        }
    }
    all.extend(args);
    if let Some(n) = gpt_only_hidden_efi(insp) {
        // Not in xorriso 1.5.4's report: the UEFI entry inside a GPT-only appended partition.
        all.extend([
            "-appended_part_as_gpt".to_owned(),
            "-eltorito-alt-boot".into(),
            "-e".into(),
        ]);
        all.push(format!("--interval:appended_partition_{n}:all::"));
        all.push("-no-emul-boot".into());
    }
    Ok(all)
}

/// Rebuild an image from `tree` with the input's boot setup (copy/overlay/bind modes).
pub fn rebuild(
    input: &Path,
    insp: &Inspection,
    tree: &Path,
    output: &Path,
    changes: &Changes,
    scratch: &Path,
) -> Result<()> {
    let args = mkisofs_boot_args(input, insp, changes, scratch)?;
    Cmd::new("xorriso")
        .args(["-as", "mkisofs"])
        .args(args)
        .arg("-o")
        .arg(output)
        .arg(tree)
        .run()?;
    Ok(())
}

/// The hybrid layout of an opened volume (re-exported for tools).
pub fn hybrid_of(vol: &Volume) -> Result<Hybrid> {
    read_hybrid(vol)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_and_modes() {
        assert_eq!(
            Edit::parse_pair("--add", "a/b.cfg:/x/y.cfg").unwrap(),
            (PathBuf::from("a/b.cfg"), "/x/y.cfg".to_owned())
        );
        let e = Edit::parse_pair("--add", "nocolon")
            .unwrap_err()
            .to_string();
        assert!(e.contains("nocolon"), "{e}");
        assert!(Edit::parse_pair("--add", "x:/").is_err());
        assert!(Edit::parse_pair("--add", ":/y").is_err());
        assert_eq!("direct".parse::<Mode>().unwrap(), Mode::Direct);
        assert!(
            "fast"
                .parse::<Mode>()
                .unwrap_err()
                .to_string()
                .contains("fast")
        );
        assert_eq!(parent_and_name("/ks.cfg"), ("/".into(), "ks.cfg".into()));
        assert_eq!(parent_and_name("a/b/c"), ("/a/b".into(), "c".into()));
    }

    #[test]
    fn report_split() {
        let t = "-V 'My Vol'\n-isohybrid-mbr --interval:local_fs:0s-15s:zero_mbrpt:'/x y/a.iso'\n-e ''\n";
        assert_eq!(
            split_report(t),
            [
                "-V",
                "My Vol",
                "-isohybrid-mbr",
                "--interval:local_fs:0s-15s:zero_mbrpt:/x y/a.iso",
                "-e",
                ""
            ]
        );
    }
}
