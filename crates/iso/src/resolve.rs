//! Check a [`Request`] against the input and list every change ([`resolve`]): file edits,
//! the volume id, the kickstart/preseed, and the boot configs they touch — in the tree and
//! inside the EFI FAT images (our FAT code, else mtools under a [`Scratch`] directory).

use std::path::Path;

use crate::boot::Platform;
use crate::bootcfg::{ConfigEdit, dialect, edit_config, kickstart_arg, preseed_args, split_args};
use crate::changes::{Changes, Content, Put, RawWrite};
use crate::inspect::Inspection;
use crate::iso9660::{NodeKind, SECTOR, Tree, Volume};
use crate::output::Scratch;
use crate::request::{Edit, Request};
use crate::{Error, Result};

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
    let mut r = Resolver {
        req,
        vol,
        tree,
        insp,
        scratch,
        ch: Changes::default(),
    };
    r.volid()?;
    r.file_edits()?;
    let edit = r.config_edit()?;
    if !edit.is_empty() {
        r.tree_configs(&edit)?;
        r.tree_efi_binaries()?;
        r.efi_images(&edit)?;
    }
    Ok(r.ch)
}

/// The state [`resolve`]'s steps share: the input as read, and the changes so far.
struct Resolver<'a> {
    req: &'a Request,
    vol: &'a Volume,
    tree: &'a Tree,
    insp: &'a Inspection,
    scratch: &'a Scratch,
    ch: Changes,
}

/// A local file given on the command line must be a regular file.
fn check_src(flag: &'static str, src: &Path) -> Result<()> {
    match std::fs::metadata(src) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(Error::bad(
            flag,
            src.display().to_string(),
            "not a regular file",
        )),
        Err(e) => Err(Error::bad(flag, src.display().to_string(), e.to_string())),
    }
}

impl Resolver<'_> {
    /// The input's volume id.
    fn old_volid(&self) -> &str {
        &self.vol.primary.volume_id
    }

    /// Write `dest` (replacing an earlier put of the same path).
    fn put(&mut self, dest: String, content: Content, why: String) {
        let existed = self.tree.get(&dest).is_some();
        self.ch.puts.retain(|p| p.dest != dest);
        self.ch.puts.push(Put {
            dest,
            content,
            existed,
            why,
        });
    }

    /// A new volume id: 1 to 32 ASCII characters; recorded only when it changes.
    fn volid(&mut self) -> Result<()> {
        if let Some(v) = &self.req.volid {
            if v.is_empty() || v.len() > 32 || !v.is_ascii() {
                return Err(Error::bad(
                    "volid",
                    v.clone(),
                    "must be 1 to 32 ASCII characters",
                ));
            }
            if v != self.old_volid() {
                self.ch.volid = Some(v.clone());
            }
        }
        Ok(())
    }

    /// `--add`, `--replace`, `--remove`, in order, each checked against the tree.
    fn file_edits(&mut self) -> Result<()> {
        for e in &self.req.edits {
            match e {
                Edit::Add { src, dest } => {
                    check_src("--add", src)?;
                    if self.tree.get(dest).is_some() {
                        return Err(Error::bad(
                            "--add",
                            dest.clone(),
                            "already exists in the ISO (use --replace)",
                        ));
                    }
                    let why = format!("--add {}", src.display());
                    self.put(dest.clone(), Content::File(src.clone()), why);
                }
                Edit::Replace { src, dest } => {
                    check_src("--replace", src)?;
                    match self.tree.get(dest) {
                        Some(n) if n.kind == NodeKind::File => {}
                        Some(_) => {
                            return Err(Error::bad(
                                "--replace",
                                dest.clone(),
                                "is not a regular file in the ISO",
                            ));
                        }
                        None => {
                            return Err(Error::bad(
                                "--replace",
                                dest.clone(),
                                "no such file in the ISO",
                            ));
                        }
                    }
                    let why = format!("--replace {}", src.display());
                    self.put(dest.clone(), Content::File(src.clone()), why);
                }
                Edit::Remove { dest } => {
                    if self.tree.get(dest).is_none() {
                        return Err(Error::bad(
                            "--remove",
                            dest.clone(),
                            "no such file or directory in the ISO",
                        ));
                    }
                    self.ch.puts.retain(|p| p.dest != *dest);
                    self.ch.removes.push(dest.clone());
                }
            }
        }
        Ok(())
    }

    /// The kickstart/preseed files (put at the root) and the boot config edit they, the
    /// kernel arguments and a volume id rename ask for.
    fn config_edit(&mut self) -> Result<ConfigEdit> {
        let old_volid = self.old_volid().to_owned();
        let new_volid = self.req.volid.clone().unwrap_or(old_volid.clone());
        let mut edit = ConfigEdit {
            append: Vec::new(),
            volid: self.ch.volid.clone().map(|n| (old_volid, n)),
        };
        for (flag, file, is_ks) in [
            ("--kickstart", &self.req.kickstart, true),
            ("--preseed", &self.req.preseed, false),
        ] {
            let Some(file) = file else { continue };
            check_src(flag, file)?;
            let name = file
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| {
                    Error::bad(flag, file.display().to_string(), "file name is not UTF-8")
                })?
                .to_owned();
            let why = format!("{flag} {}", file.display());
            self.put(format!("/{name}"), Content::File(file.clone()), why);
            if is_ks {
                edit.append.push(kickstart_arg(&new_volid, &name));
            } else {
                edit.append.extend(preseed_args(&name));
            }
        }
        for a in &self.req.kernel_args {
            edit.append.extend(split_args(a));
        }
        Ok(edit)
    }

    /// Edit the boot configs in the tree (as already changed by a put, if any).
    fn tree_configs(&mut self, edit: &ConfigEdit) -> Result<()> {
        let configs: Vec<(String, u64, u64)> = self
            .tree
            .nodes
            .values()
            .filter(|n| {
                n.kind == NodeKind::File && dialect(&n.path).is_some() && n.extents.len() == 1
            })
            .map(|n| (n.path.clone(), n.extents[0].offset(), n.size))
            .collect();
        for (path, off, size) in configs {
            if self.ch.removes.contains(&path) {
                continue;
            }
            let old = match self.ch.puts.iter().find(|p| p.dest == path) {
                Some(p) => p.content.bytes()?.into_owned(),
                None => self.vol.src.read_vec(off, size as usize)?,
            };
            let Some(d) = dialect(&path) else { continue };
            let new = edit_config(d, &String::from_utf8_lossy(&old), edit);
            if new.as_bytes() != old.as_slice() {
                let bytes = Content::Bytes(new.into_bytes());
                self.put(path.clone(), bytes, "boot config".into());
                self.ch.configs.push(path);
            }
        }
        Ok(())
    }

    /// A boot file names the old volume id where it cannot be rewritten: an error, or with
    /// [`Request::force`] a warning (the file is left as it is).
    fn refuse_volid(&mut self, file: String, reason: String) -> Result<()> {
        let old = self.old_volid().to_owned();
        let e = Error::VolidUnsafe { file, old, reason };
        if !self.req.force {
            return Err(e);
        }
        self.ch.warnings.push(format!("--force: {e}"));
        Ok(())
    }

    /// GRUB EFI binaries on the tree (`*.efi`) with the old volume id built in.
    fn tree_efi_binaries(&mut self) -> Result<()> {
        let Some(new) = self.ch.volid.clone() else {
            return Ok(());
        };
        let old = self.old_volid().to_owned();
        let bins: Vec<(String, Vec<crate::iso9660::Extent>, u64)> = self
            .tree
            .nodes
            .values()
            .filter(|n| n.kind == NodeKind::File && n.path.to_ascii_lowercase().ends_with(".efi"))
            .filter(|n| n.size <= 64 << 20)
            .map(|n| (n.path.clone(), n.extents.clone(), n.size))
            .collect();
        for (path, extents, size) in bins {
            if self.ch.removes.contains(&path) || self.ch.puts.iter().any(|p| p.dest == path) {
                continue;
            }
            let mut data = Vec::with_capacity(size as usize);
            for e in &extents {
                data.extend(self.vol.src.read_vec(e.offset(), e.len as usize)?);
            }
            match crate::grubimg::rewrite_volid(&data, &old, &new) {
                Ok(Some(bytes)) => {
                    self.put(
                        path.clone(),
                        Content::Bytes(bytes),
                        "GRUB built-in config".into(),
                    );
                    self.ch.configs.push(path);
                }
                Ok(None) => {}
                Err(why) => self.refuse_volid(path, why)?,
            }
        }
        Ok(())
    }

    /// The EFI FAT images to look into: El Torito UEFI entries and ESP partitions, as
    /// `(offset, length, path in the tree)`, one per offset.
    fn efi_image_ranges(&self) -> Vec<(u64, u64, Option<String>)> {
        let mut images: Vec<(u64, u64, Option<String>)> = Vec::new();
        if let Some(cat) = &self.insp.el_torito {
            for e in cat.entries.iter().filter(|e| e.platform == Platform::Uefi) {
                images.push((
                    u64::from(e.load_rba) * SECTOR,
                    e.image_size,
                    e.image.clone(),
                ));
            }
        }
        for (off, len) in self.insp.hybrid.esp_ranges() {
            let in_tree = self
                .tree
                .file_at((off / SECTOR) as u32)
                .filter(|_| off % SECTOR == 0)
                .map(|n| n.path.clone());
            images.push((off, len, in_tree));
        }
        images.sort_by_key(|(o, _, p)| (*o, p.is_none()));
        images.dedup_by_key(|(o, _, _)| *o);
        images
    }

    /// Edit the boot configs inside the EFI FAT images: a put when the image is a file in
    /// the tree, else a raw rewrite of its bytes (a hidden image: an appended partition).
    fn efi_images(&mut self, edit: &ConfigEdit) -> Result<()> {
        for (i, (off, len, path)) in self.efi_image_ranges().into_iter().enumerate() {
            if len == 0 || off + len > self.vol.src.len() {
                continue;
            }
            if path.as_ref().is_some_and(|p| {
                self.ch.removes.contains(p) || self.ch.puts.iter().any(|x| x.dest == *p)
            }) {
                continue;
            }
            let label = path
                .clone()
                .unwrap_or_else(|| format!("hidden EFI image at byte {off}"));
            let Some((fe, new)) = self.edit_fat(i, off, len, &label, edit)? else {
                continue;
            };
            for (file, why) in fe.refused {
                self.refuse_volid(format!("{label}::{file}"), why)?;
            }
            let changed = fe.changed;
            if changed.is_empty() {
                continue;
            }
            self.ch
                .configs
                .extend(changed.iter().map(|c| format!("{label}::{c}")));
            match path {
                Some(p) => self.put(p, Content::Bytes(new), "EFI image configs".into()),
                None => {
                    let partition = self.partition_at(off);
                    self.ch.raw.push(RawWrite {
                        offset: off,
                        data: new,
                        what: label,
                        partition,
                    });
                }
            }
        }
        Ok(())
    }

    /// Edit the FAT image at `off`: our own FAT code when every edit fits its clusters,
    /// mtools otherwise. `None` when mtools cannot read it (not a FAT image).
    fn edit_fat(
        &self,
        i: usize,
        off: u64,
        len: u64,
        label: &str,
        edit: &ConfigEdit,
    ) -> Result<Option<(crate::fat::FatEdits, Vec<u8>)>> {
        let mut data = self.vol.src.read_vec(off, len as usize)?;
        if let Some(changed) = crate::fat::edit_configs_in_memory(&mut data, edit) {
            return Ok(Some((changed, data)));
        }
        let scratch = self.scratch.path()?;
        let img = scratch.join(format!("efi-image-{i}.img"));
        std::fs::write(&img, &data).map_err(|e| Error::io("writing", &img, e))?;
        let changed = match crate::fat::edit_configs(&img, edit, scratch) {
            Ok(c) => c,
            // Not a FAT image mtools can read (e.g. an ISO 9660 partition).
            Err(e @ Error::Tool { .. }) => {
                tracing::debug!(image = %label, error = %e, "not an editable FAT image");
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let new = std::fs::read(&img).map_err(|e| Error::io("reading", &img, e))?;
        Ok(Some((changed, new)))
    }

    /// The MBR (else GPT) partition number that starts at byte `off`.
    fn partition_at(&self, off: u64) -> Option<u8> {
        let hybrid = &self.insp.hybrid;
        hybrid
            .mbr
            .iter()
            .flatten()
            .find(|p| u64::from(p.start) * 512 == off && p.ptype != 0xee)
            .map(|p| p.number)
            .or_else(|| {
                let gpt = hybrid.gpt.iter().flatten();
                gpt.filter(|p| p.first_lba * 512 == off)
                    .find_map(|p| u8::try_from(p.number).ok())
            })
    }
}
