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
    let mut ch = Changes::default();
    let old_volid = vol.primary.volume_id.clone();
    if let Some(v) = &req.volid {
        if v.is_empty() || v.len() > 32 || !v.is_ascii() {
            return Err(Error::bad("volid", v.clone(), "must be 1 to 32 ASCII characters"));
        }
        if *v != old_volid {
            ch.volid = Some(v.clone());
        }
    }
    let new_volid = req.volid.clone().unwrap_or(old_volid.clone());
    let check_src = |flag: &'static str, src: &Path| -> Result<()> {
        match std::fs::metadata(src) {
            Ok(m) if m.is_file() => Ok(()),
            Ok(_) => Err(Error::bad(flag, src.display().to_string(), "not a regular file")),
            Err(e) => Err(Error::bad(flag, src.display().to_string(), e.to_string())),
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
                    return Err(Error::bad(
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
                        return Err(Error::bad(
                            "--replace",
                            dest.clone(),
                            "is not a regular file in the ISO",
                        ));
                    }
                    None => return Err(Error::bad("--replace", dest.clone(), "no such file in the ISO")),
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
                    return Err(Error::bad(
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
            .ok_or_else(|| Error::bad(flag, file.display().to_string(), "file name is not UTF-8"))?
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
