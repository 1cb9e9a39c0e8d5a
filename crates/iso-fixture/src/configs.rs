//! Boot configuration text, shaped like Fedora/RHEL installer media (lorax templates):
//! `isolinux/isolinux.cfg` with `append initrd=… inst.stage2=hd:LABEL=…` lines, and GRUB
//! `grub.cfg` files with `linux`/`initrd` lines, read by GRUB from `EFI/BOOT/` inside
//! `images/efiboot.img` (and kept on the ISO tree too, where remaster tools look).

/// Path of the kernel on the ISO tree.
pub const KERNEL: &str = "images/pxeboot/vmlinuz";
/// Path of the initrd on the ISO tree.
pub const INITRD: &str = "images/pxeboot/initrd.img";

/// One boot entry: a label and its extra kernel arguments.
struct Entry {
    label: &'static str,
    title: &'static str,
    extra: &'static str,
}

const ENTRIES: &[Entry] = &[
    Entry {
        label: "linux",
        title: "Install Diskforge Fixture",
        extra: "",
    },
    Entry {
        label: "check",
        title: "Test this media & install Diskforge Fixture",
        extra: " rd.live.check",
    },
];

/// The kernel arguments every entry shares (before its own extras): the lorax ones, the
/// serial console, reboot (so QEMU `-no-reboot` exits) on panic, and `extra` when not empty.
pub fn entry_args(volid: &str, extra: &str) -> String {
    let mut s = format!(
        "inst.stage2=hd:LABEL={} console=ttyS0 panic=-1 quiet",
        label_escape(volid)
    );
    if !extra.trim().is_empty() {
        s.push(' ');
        s.push_str(extra.trim());
    }
    s
}

/// Escape a volume id for `LABEL=` on the kernel command line the way lorax does
/// (`udev`-style `\x20` for spaces).
fn label_escape(volid: &str) -> String {
    volid.replace(' ', "\\x20")
}

/// `isolinux/isolinux.cfg`: serial console, no prompt, the first entry boots at once.
pub fn isolinux_cfg(volid: &str, extra: &str) -> String {
    let mut s = String::from("serial 0 115200\ndefault linux\nprompt 0\ntimeout 1\n\n");
    for e in ENTRIES {
        s.push_str(&format!(
            "label {}\n  menu label ^{}\n  kernel /{KERNEL}\n  append initrd=/{INITRD} {}{}\n\n",
            e.label,
            e.title,
            entry_args(volid, extra),
            e.extra
        ));
    }
    s
}

/// A GRUB `grub.cfg` that finds the ISO by its label and boots the kernel from the ISO 9660
/// tree; used inside `efiboot.img` as `EFI/BOOT/grub.cfg`, on the tree as `EFI/BOOT/grub.cfg`
/// and as `boot/grub/grub.cfg`.
pub fn grub_cfg(volid: &str, extra: &str) -> String {
    let mut s = format!(
        "set default=\"0\"\nset timeout=0\n\nsearch --no-floppy --set=root -l '{volid}'\n\n"
    );
    for e in ENTRIES {
        s.push_str(&format!(
            "menuentry '{}' --class fedora --class gnu-linux --class os {{\n\tlinux /{KERNEL} {}{}\n\tinitrd /{INITRD}\n}}\n",
            e.title,
            entry_args(volid, extra),
            e.extra
        ));
    }
    s
}

/// The config built into `BOOTX64.EFI` with [`crate::FixtureSpec::grub_embedded_search`]:
/// find the medium by its label, then read `EFI/BOOT/grub.cfg` from it. `root` is cleared
/// first: GRUB's default root is the device it was loaded from, which on an El Torito boot
/// is the whole CD, and would find the config even when the label search fails.
pub fn embedded_grub_cfg(volid: &str) -> String {
    format!(
        "set root=\nsearch --no-floppy --set=root --label '{volid}'\n\
         set prefix=($root)/EFI/BOOT\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn isolinux_entries_append_the_label() {
        let c = isolinux_cfg("My Vol", "");
        assert_eq!(
            c.matches("\n  append initrd=/images/pxeboot/initrd.img ")
                .count(),
            2
        );
        assert!(c.contains("inst.stage2=hd:LABEL=My\\x20Vol console=ttyS0 panic=-1"));
        assert!(c.contains("prompt 0\ntimeout 1\n"));
    }

    #[test]
    fn grub_entries_search_the_label() {
        let c = grub_cfg("DF-1", " inst.ks=cdrom:/ks.cfg ");
        assert!(c.contains("search --no-floppy --set=root -l 'DF-1'"));
        assert_eq!(
            c.matches("\tlinux /images/pxeboot/vmlinuz inst.stage2=hd:LABEL=DF-1 ")
                .count(),
            2
        );
        assert_eq!(
            c.matches("\tinitrd /images/pxeboot/initrd.img\n").count(),
            2
        );
        assert!(c.contains("set timeout=0\n"));
        assert!(
            c.contains("panic=-1 quiet inst.ks=cdrom:/ks.cfg rd.live.check\n"),
            "{c}"
        );
    }
}
