//! Boot configuration edits, pure (text in, text out), like lorax's `mkksiso`:
//! - syslinux/isolinux (`isolinux.cfg`, `syslinux.cfg`): arguments go at the end of every
//!   `append` line that belongs to a kernel entry (not to a `.c32` module);
//! - GRUB (`grub.cfg`, `loopback.cfg`): at the end of every `linux`, `linuxefi` and `linux16`
//!   line.
//!
//! An argument `key=value` replaces any earlier `key=…` on the line (so a second remaster
//! with another kickstart does not leave two `inst.ks=`); a bare flag already present is not
//! repeated. A volume id change rewrites `LABEL=<old>` (spaces as `\x20`) and GRUB's quoted
//! `'<old>'` labels.

/// The two config dialects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dialect {
    /// syslinux / isolinux.
    Syslinux,
    /// GRUB 2.
    Grub,
}

/// Config file locations edited on the ISO tree and inside the EFI FAT image.
pub const CONFIG_PATHS: &[&str] = &[
    "/isolinux/isolinux.cfg",
    "/isolinux.cfg",
    "/syslinux/syslinux.cfg",
    "/syslinux.cfg",
    "/boot/isolinux/isolinux.cfg",
    "/boot/syslinux/syslinux.cfg",
    "/boot/grub/grub.cfg",
    "/boot/grub2/grub.cfg",
    "/boot/grub/loopback.cfg",
    "/boot/grub2/loopback.cfg",
    "/EFI/BOOT/grub.cfg",
    "/EFI/BOOT/BOOT.conf",
];

/// The dialect of a config file, from its name.
pub fn dialect(path: &str) -> Option<Dialect> {
    let name = path.rsplit('/').next().unwrap_or(path).to_ascii_lowercase();
    match name.as_str() {
        "isolinux.cfg" | "syslinux.cfg" => Some(Dialect::Syslinux),
        "grub.cfg" | "loopback.cfg" | "boot.conf" => Some(Dialect::Grub),
        _ => None,
    }
}

/// What to change in every boot entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigEdit {
    /// Kernel arguments to append (each one token).
    pub append: Vec<String>,
    /// `(old, new)` volume id.
    pub volid: Option<(String, String)>,
}

impl ConfigEdit {
    /// Whether the edit changes nothing.
    pub fn is_empty(&self) -> bool {
        self.append.is_empty() && self.volid.is_none()
    }
}

/// Escape a volume id for `LABEL=` in a kernel command line (space as `\x20`).
pub fn escape_label(volid: &str) -> String {
    volid.replace(' ', "\\x20")
}

/// The kickstart argument for a file at the ISO root: `inst.ks=hd:LABEL=<volid>:/<name>`.
pub fn kickstart_arg(volid: &str, name: &str) -> String {
    format!("inst.ks=hd:LABEL={}:/{name}", escape_label(volid))
}

/// The Debian installer preseed arguments for a file at the ISO root.
pub fn preseed_args(name: &str) -> Vec<String> {
    vec![
        "auto=true".into(),
        "priority=critical".into(),
        format!("file=/cdrom/{name}"),
    ]
}

/// Split a kernel argument string into tokens (whitespace, with double quotes kept together).
pub fn split_args(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in s.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            c if c.is_whitespace() && !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn key_of(arg: &str) -> Option<&str> {
    arg.split_once('=').map(|(k, _)| k)
}

/// Append `args` to the argument list `line_args` (the part after the keyword).
fn merge_args(existing: &str, args: &[String]) -> String {
    let mut toks = split_args(existing);
    for a in args {
        match key_of(a) {
            Some(k) => toks.retain(|t| key_of(t) != Some(k)),
            None => toks.retain(|t| t != a),
        }
        toks.push(a.clone());
    }
    toks.join(" ")
}

/// Apply `edit` to a config in `dialect`. Line endings (LF or CRLF) and indentation are kept.
pub fn edit_config(dialect: Dialect, text: &str, edit: &ConfigEdit) -> String {
    let mut out = String::with_capacity(text.len() + 256);
    let mut module_entry = false;
    for raw in text.split_inclusive('\n') {
        let (body, eol) = match raw.strip_suffix("\r\n") {
            Some(b) => (b, "\r\n"),
            None => match raw.strip_suffix('\n') {
                Some(b) => (b, "\n"),
                None => (raw, ""),
            },
        };
        let mut line = body.to_owned();
        if let Some((old, new)) = &edit.volid {
            line = rename_label(&line, old, new);
        }
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        let (kw, rest) = match trimmed.split_once(char::is_whitespace) {
            Some((k, r)) => (k, r),
            None => (trimmed, ""),
        };
        let kw_l = kw.to_ascii_lowercase();
        let is_kernel_line = match dialect {
            Dialect::Syslinux => {
                if matches!(kw_l.as_str(), "label") {
                    module_entry = false;
                }
                if matches!(kw_l.as_str(), "kernel" | "linux" | "com32") {
                    let target = rest.trim().to_ascii_lowercase();
                    module_entry = kw_l == "com32" || target.ends_with(".c32");
                }
                kw_l == "append" && !module_entry
            }
            Dialect::Grub => matches!(kw, "linux" | "linuxefi" | "linux16"),
        };
        if is_kernel_line && !edit.append.is_empty() {
            let merged = match dialect {
                // GRUB: the first token is the kernel path, keep it first.
                Dialect::Grub => {
                    let rest = rest.trim();
                    let (kernel, args) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
                    let args = merge_args(args, &edit.append);
                    format!("{kernel} {args}")
                }
                Dialect::Syslinux => merge_args(rest, &edit.append),
            };
            line = format!("{indent}{kw} {merged}");
        }
        out.push_str(&line);
        out.push_str(eol);
    }
    out
}

fn rename_label(line: &str, old: &str, new: &str) -> String {
    let mut l = line.to_owned();
    for (o, n) in [
        (escape_label(old), escape_label(new)),
        (old.to_owned(), new.to_owned()),
    ] {
        l = l.replace(&format!("LABEL={o}"), &format!("LABEL={n}"));
    }
    if line.trim_start().starts_with("search") {
        l = l.replace(&format!("'{old}'"), &format!("'{new}'"));
        l = l.replace(&format!("\"{old}\""), &format!("\"{new}\""));
        // `search --label OLD` / `search -l OLD` without quotes (no spaces in the id).
        if !old.contains(char::is_whitespace) && !new.contains(char::is_whitespace) {
            l = l
                .split(' ')
                .map(|t| if t == old { new } else { t })
                .collect::<Vec<_>>()
                .join(" ");
        }
    }
    l
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISOLINUX: &str = "default vesamenu.c32\ntimeout 600\nmenu title Fedora\n\nlabel linux\n  menu label ^Install Fedora\n  kernel vmlinuz\n  append initrd=initrd.img inst.stage2=hd:LABEL=Fedora-S-dvd-x86_64-38 quiet\n\nlabel check\n  menu label Test this ^media & install Fedora\n  kernel vmlinuz\n  append initrd=initrd.img inst.stage2=hd:LABEL=Fedora-S-dvd-x86_64-38 rd.live.check quiet inst.ks=hd:LABEL=OLD:/old.ks\n\nlabel memtest\n  kernel memtest\n\nlabel local\n  menu label Boot from ^local drive\n  localboot 0xffff\n\nlabel hdt\n  com32 hdt.c32\n  append modules_pcidb=pci.ids\n";

    const GRUB: &str = "set default=\"1\"\nsearch --no-floppy --set=root -l 'Fedora-S-dvd-x86_64-38'\n\nmenuentry 'Install Fedora 38' --class fedora {\r\n\tlinuxefi /images/pxeboot/vmlinuz inst.stage2=hd:LABEL=Fedora-S-dvd-x86_64-38 quiet\r\n\tinitrdefi /images/pxeboot/initrd.img\r\n}\r\nmenuentry 'Rescue' {\n  linux /vmlinuz\n  initrd /initrd\n}\n# linux in a comment is left alone\n";

    fn ks() -> ConfigEdit {
        ConfigEdit {
            append: vec![
                kickstart_arg("Fedora-S-dvd-x86_64-38", "ks.cfg"),
                "quiet".into(),
            ],
            volid: None,
        }
    }

    #[test]
    fn isolinux_kickstart() {
        insta::assert_snapshot!(edit_config(Dialect::Syslinux, ISOLINUX, &ks()));
    }

    #[test]
    fn grub_kickstart_keeps_crlf() {
        let out = edit_config(Dialect::Grub, GRUB, &ks());
        assert!(out.contains("\r\n\tinitrdefi"));
        insta::assert_snapshot!(out);
    }

    #[test]
    fn volid_rename_and_preseed() {
        let edit = ConfigEdit {
            append: preseed_args("preseed.cfg"),
            volid: Some(("Fedora-S-dvd-x86_64-38".into(), "My Remaster".into())),
        };
        insta::assert_snapshot!(edit_config(Dialect::Grub, GRUB, &edit));
        insta::assert_snapshot!(edit_config(Dialect::Syslinux, ISOLINUX, &edit));
    }

    #[test]
    fn idempotent() {
        let once = edit_config(Dialect::Syslinux, ISOLINUX, &ks());
        assert_eq!(edit_config(Dialect::Syslinux, &once, &ks()), once);
    }

    #[test]
    fn dialects_and_args() {
        assert_eq!(dialect("/isolinux/isolinux.cfg"), Some(Dialect::Syslinux));
        assert_eq!(dialect("/EFI/BOOT/grub.cfg"), Some(Dialect::Grub));
        assert_eq!(dialect("/boot/grub/loopback.cfg"), Some(Dialect::Grub));
        assert_eq!(dialect("/ks.cfg"), None);
        assert_eq!(split_args(r#"a b="c d"  e"#), ["a", r#"b="c d""#, "e"]);
        assert_eq!(
            kickstart_arg("A B", "ks.cfg"),
            "inst.ks=hd:LABEL=A\\x20B:/ks.cfg"
        );
    }
}
