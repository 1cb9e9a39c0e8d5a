//! The `mkfs.xfs -p` prototype file (mkfs.xfs(8), "PROTOTYPE FILES"), generated from a
//! directory so xfs can be populated without mounting.
//!
//! Format: a boot-image line, a `blocks inodes` line, the root directory's `mode uid gid`, then
//! for each entry `name mode uid gid [source | target | major minor]`, each directory closed by
//! `$`. `mode` is a type (`-` file, `d` dir, `l` symlink, `b`/`c` device, `p` fifo), `u` or `-`
//! for setuid, `g` or `-` for setgid, and the octal permissions. Tokens are separated by
//! whitespace, so names and symlink targets with whitespace cannot be expressed; hard links
//! become separate files; sockets, xattrs and timestamps are not carried (mkfs.xfs 6.1).

use std::fmt::Write as _;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use crate::{Error, Result};

/// Generate the protofile text for the tree at `root` (entries in name order).
pub fn xfs_protofile(root: &Path) -> Result<String> {
    let meta = std::fs::symlink_metadata(root).map_err(|source| Error::Io {
        action: "reading",
        path: root.to_owned(),
        source,
    })?;
    let mut out = String::from("/dev/null\n0 0\n");
    // Infallible: writing into a String.
    let _ = writeln!(
        out,
        "{} {} {}",
        mode_token('d', meta.mode()),
        meta.uid(),
        meta.gid()
    );
    dir(root, 1, &mut out)?;
    out.push_str("$\n");
    Ok(out)
}

fn mode_token(kind: char, mode: u32) -> String {
    let u = if mode & 0o4000 != 0 { 'u' } else { '-' };
    let g = if mode & 0o2000 != 0 { 'g' } else { '-' };
    format!("{kind}{u}{g}{:03o}", mode & 0o1777)
}

fn token(path: &Path, s: &str, what: &'static str) -> Result<()> {
    if s.is_empty() || s.contains(char::is_whitespace) {
        return Err(Error::BadName {
            path: path.to_owned(),
            reason: what,
        });
    }
    Ok(())
}

fn dir(path: &Path, depth: usize, out: &mut String) -> Result<()> {
    let io = |action| {
        move |source| Error::Io {
            action,
            path: path.to_owned(),
            source,
        }
    };
    let mut entries: Vec<_> = std::fs::read_dir(path)
        .map_err(io("listing"))?
        .collect::<std::io::Result<_>>()
        .map_err(io("listing"))?;
    entries.sort_by_key(|e| e.file_name());
    let indent = " ".repeat(depth);
    for e in entries {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        token(&p, &name, "xfs protofile names cannot contain whitespace")?;
        let m = std::fs::symlink_metadata(&p).map_err(|source| Error::Io {
            action: "reading",
            path: p.clone(),
            source,
        })?;
        let ft = m.file_type();
        let (uid, gid, mode) = (m.uid(), m.gid(), m.mode());
        // Infallible: writing into a String.
        if ft.is_dir() {
            let _ = writeln!(out, "{indent}{name} {} {uid} {gid}", mode_token('d', mode));
            dir(&p, depth + 1, out)?;
            let _ = writeln!(out, "{indent}$");
        } else if ft.is_file() {
            let src = p.display().to_string();
            token(
                &p,
                &src,
                "xfs protofile source paths cannot contain whitespace",
            )?;
            let _ = writeln!(
                out,
                "{indent}{name} {} {uid} {gid} {src}",
                mode_token('-', mode)
            );
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&p).map_err(|source| Error::Io {
                action: "reading link",
                path: p.clone(),
                source,
            })?;
            let t = target.display().to_string();
            token(
                &p,
                &t,
                "xfs protofile symlink targets cannot contain whitespace",
            )?;
            let _ = writeln!(
                out,
                "{indent}{name} {} {uid} {gid} {t}",
                mode_token('l', mode)
            );
        } else if ft.is_block_device() || ft.is_char_device() {
            let kind = if ft.is_block_device() { 'b' } else { 'c' };
            let (maj, min) = (rustix::fs::major(m.rdev()), rustix::fs::minor(m.rdev()));
            let _ = writeln!(
                out,
                "{indent}{name} {} {uid} {gid} {maj} {min}",
                mode_token(kind, mode)
            );
        } else if ft.is_fifo() {
            let _ = writeln!(out, "{indent}{name} {} {uid} {gid}", mode_token('p', mode));
        } else {
            return Err(Error::BadName {
                path: p,
                reason: "sockets cannot go into an xfs protofile",
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes() {
        assert_eq!(mode_token('d', 0o40755), "d--755");
        assert_eq!(mode_token('-', 0o104755), "-u-755");
        assert_eq!(mode_token('-', 0o2644), "--g644");
        assert_eq!(mode_token('d', 0o1777), "d--1777");
    }
}
