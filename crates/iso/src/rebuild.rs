//! The rebuild route (`copy` mode and the kernel routes): a tree on disk (extracted with
//! osirrox, or a mount), edited with [`apply_to_dir`], rebuilt with `xorriso -as mkisofs` and
//! the boot options xorriso reads from the original ([`mkisofs_boot_args`]).

use std::path::Path;

use diskforge_cmd::Cmd;

use crate::changes::{Changes, Content, raw_images};
use crate::inspect::{Inspection, gpt_only_hidden_efi};
use crate::{Error, Result};

/// Extract the whole tree with osirrox (no mount) and make it writable.
pub fn extract_tree(input: &Path, dir: &Path) -> Result<()> {
    diskforge_fault::point("iso.extract")?;
    let c = Cmd::new("osirrox")
        .arg("-indev")
        .arg(input)
        .args(["-osirrox", "on", "-extract", "/"])
        .arg(dir);
    crate::exec::run("extracting the tree with osirrox", c, crate::exec::LONG)?;
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
    diskforge_fault::point("iso.edit-tree")?;
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
    let c = Cmd::new("xorriso")
        .arg("-indev")
        .arg(&abs)
        // Loading may report a SORRY (a boot image it cannot map); the report is still whole.
        .args(["-return_with", "FAILURE", "32"])
        .args(["-report_system_area", "as_mkisofs"]);
    let report = crate::exec::run("reading the boot setup with xorriso", c, crate::exec::QUICK)?;
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
    diskforge_fault::point("iso.rebuild")?;
    let args = mkisofs_boot_args(input, insp, changes, scratch)?;
    let c = Cmd::new("xorriso")
        // A file it cannot read (EIO from the mounted view) is a SORRY: fail on it
        // rather than write an image without it.
        .args(["-return_with", "SORRY", "32", "-as", "mkisofs"])
        .args(args)
        .arg("-o")
        .arg(output)
        .arg(tree);
    crate::exec::run("rebuilding the image with xorriso", c, crate::exec::LONG)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
