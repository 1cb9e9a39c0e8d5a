//! Partition types: sgdisk-style short codes, MBR type bytes and GPT type GUIDs.
//!
//! The codes and GUIDs follow `sgdisk -L` (gdisk's `parttypes.cc`) and the UAPI Group's
//! Discoverable Partitions Specification.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Label;

/// One known partition type.
#[derive(Debug, Clone, Copy)]
pub struct KnownType {
    /// sgdisk short code, upper case (`8300`).
    pub code: &'static str,
    /// GPT type GUID, upper case.
    pub guid: &'static str,
    /// MBR type byte, when the type exists on MBR disks.
    pub mbr: Option<u8>,
    /// Short aliases accepted in layouts (`linux`, `esp`).
    pub aliases: &'static [&'static str],
    /// What sgdisk calls it.
    pub description: &'static str,
}

/// The types diskforge knows by code. Any other GPT type can be given as a GUID, any other MBR
/// type as `0xNN`.
pub const KNOWN_TYPES: &[KnownType] = &[
    KnownType {
        code: "0700",
        guid: "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7",
        mbr: Some(0x07),
        aliases: &["basic-data", "msdata", "ntfs"],
        description: "Microsoft basic data",
    },
    KnownType {
        code: "0B00",
        guid: "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7",
        mbr: Some(0x0b),
        aliases: &["fat32"],
        description: "FAT32",
    },
    KnownType {
        code: "0C00",
        guid: "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7",
        mbr: Some(0x0c),
        aliases: &["fat32-lba", "vfat"],
        description: "FAT32 (LBA)",
    },
    KnownType {
        code: "0C01",
        guid: "E3C9E316-0B5C-4DB8-817D-F92DF00215AE",
        mbr: None,
        aliases: &["msr"],
        description: "Microsoft reserved",
    },
    KnownType {
        code: "2700",
        guid: "DE94BBA4-06D1-4D40-A16A-BFD50179D6AC",
        mbr: Some(0x27),
        aliases: &["winre"],
        description: "Windows RE",
    },
    KnownType {
        code: "4100",
        guid: "9E1A2D38-C612-4316-AA26-8B49521E5A8B",
        mbr: Some(0x41),
        aliases: &["prep"],
        description: "PowerPC PReP boot",
    },
    KnownType {
        code: "8200",
        guid: "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F",
        mbr: Some(0x82),
        aliases: &["swap"],
        description: "Linux swap",
    },
    KnownType {
        code: "8300",
        guid: "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
        mbr: Some(0x83),
        aliases: &["linux"],
        description: "Linux filesystem",
    },
    KnownType {
        code: "8301",
        guid: "8DA63339-0007-60C0-C436-083AC8230908",
        mbr: None,
        aliases: &[],
        description: "Linux reserved",
    },
    KnownType {
        code: "8302",
        guid: "933AC7E1-2EB4-4F13-B844-0E14E2AEF915",
        mbr: None,
        aliases: &["home"],
        description: "Linux /home",
    },
    KnownType {
        code: "8303",
        guid: "44479540-F297-41B2-9AF7-D131D5F0458A",
        mbr: None,
        aliases: &["root-x86"],
        description: "Linux x86 root (/)",
    },
    KnownType {
        code: "8304",
        guid: "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709",
        mbr: None,
        aliases: &["root-x86-64", "root"],
        description: "Linux x86-64 root (/)",
    },
    KnownType {
        code: "8305",
        guid: "B921B045-1DF0-41C3-AF44-4C6F280D3FAE",
        mbr: None,
        aliases: &["root-arm64"],
        description: "Linux ARM64 root (/)",
    },
    KnownType {
        code: "8306",
        guid: "3B8F8425-20E0-4F3B-907F-1A25A76F98E8",
        mbr: None,
        aliases: &["srv"],
        description: "Linux /srv",
    },
    KnownType {
        code: "8307",
        guid: "69DAD710-2CE4-4E3C-B16C-21A1D49ABED3",
        mbr: None,
        aliases: &["root-arm"],
        description: "Linux ARM32 root (/)",
    },
    KnownType {
        code: "8309",
        guid: "CA7D7CCB-63ED-4C53-861C-1742536059CC",
        mbr: None,
        aliases: &["luks"],
        description: "Linux LUKS",
    },
    KnownType {
        code: "8310",
        guid: "4D21B016-B534-45C2-A9FB-5C16E091FD2D",
        mbr: None,
        aliases: &["var"],
        description: "Linux /var",
    },
    KnownType {
        code: "8311",
        guid: "7EC6F557-3BC5-4ACA-B293-16EF5DF639D1",
        mbr: None,
        aliases: &["var-tmp"],
        description: "Linux /var/tmp",
    },
    KnownType {
        code: "8E00",
        guid: "E6D6D379-F507-44C2-A23C-238F2A3DF928",
        mbr: Some(0x8e),
        aliases: &["lvm"],
        description: "Linux LVM",
    },
    KnownType {
        code: "A500",
        guid: "516E7CB4-6ECF-11D6-8FF8-00022D09712B",
        mbr: Some(0xa5),
        aliases: &["freebsd"],
        description: "FreeBSD disklabel",
    },
    KnownType {
        code: "EA00",
        guid: "BC13C2FF-59E6-4262-A352-B275FD6F7172",
        mbr: Some(0xea),
        aliases: &["xbootldr"],
        description: "Freedesktop $BOOT (XBOOTLDR)",
    },
    KnownType {
        code: "EF00",
        guid: "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
        mbr: Some(0xef),
        aliases: &["esp", "efi"],
        description: "EFI system partition",
    },
    KnownType {
        code: "EF01",
        guid: "024DEE41-33E7-11D3-9D69-0008C781F39F",
        mbr: None,
        aliases: &[],
        description: "MBR partition scheme",
    },
    KnownType {
        code: "EF02",
        guid: "21686148-6449-6E6F-744E-656564454649",
        mbr: None,
        aliases: &["bios-boot", "bios_grub"],
        description: "BIOS boot partition",
    },
    KnownType {
        code: "FD00",
        guid: "A19D880F-05FC-4D3B-A006-743F0F84911E",
        mbr: Some(0xfd),
        aliases: &["raid"],
        description: "Linux RAID",
    },
];

/// A resolved partition type, as stored in a table and shown in reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartType {
    /// sgdisk short code when the type is a known one (`8300`).
    pub code: Option<String>,
    /// GPT type GUID (upper case), for GPT tables.
    pub guid: Option<String>,
    /// MBR type byte as `0xNN`, for MBR tables.
    pub mbr: Option<String>,
    /// Human description when known.
    pub description: Option<String>,
}

impl PartType {
    /// The type for a GPT type GUID.
    pub fn from_guid(guid: Uuid) -> Self {
        let g = guid.hyphenated().to_string().to_ascii_uppercase();
        // The first table row with this GUID is the canonical one (0700 before 0B00/0C00).
        let known = KNOWN_TYPES.iter().find(|k| k.guid == g);
        PartType {
            code: known.map(|k| k.code.to_owned()),
            guid: Some(g),
            mbr: None,
            description: known.map(|k| k.description.to_owned()),
        }
    }

    /// The type for an MBR type byte.
    pub fn from_mbr(byte: u8) -> Self {
        let known = KNOWN_TYPES.iter().find(|k| k.mbr == Some(byte));
        PartType {
            code: Some(known.map_or_else(|| format!("{byte:02X}00"), |k| k.code.to_owned())),
            guid: None,
            mbr: Some(format!("0x{byte:02x}")),
            description: known
                .map(|k| k.description.to_owned())
                .or_else(|| matches!(byte, 0x05 | 0x0f | 0x85).then(|| "Extended".to_owned())),
        }
    }

    /// The GPT type GUID, when this is a GPT type.
    pub fn gpt_guid(&self) -> Option<Uuid> {
        self.guid.as_deref().and_then(|g| Uuid::parse_str(g).ok())
    }

    /// The MBR type byte, when this is an MBR type.
    pub fn mbr_byte(&self) -> Option<u8> {
        self.mbr
            .as_deref()
            .and_then(|m| u8::from_str_radix(m.trim_start_matches("0x"), 16).ok())
    }

    /// The short string that best names this type: the code, else the GUID or MBR byte.
    pub fn short(&self) -> &str {
        self.code
            .as_deref()
            .or(self.guid.as_deref())
            .or(self.mbr.as_deref())
            .unwrap_or("?")
    }
}

/// Resolve a type string for a table of kind `label`.
///
/// Accepts an sgdisk code (`8300`, `ef00`), an alias (`linux`, `esp`, `swap`, `lvm`, `raid`),
/// an MBR byte (`0x83`) or, on GPT, a type GUID. On MBR, codes of the form `XX00` that are not
/// in [`KNOWN_TYPES`] map to byte `0xXX`, as sgdisk does. The error string says why (the
/// caller names the partition and field).
pub fn resolve(s: &str, label: Label) -> Result<PartType, String> {
    let t = s.trim();
    let known = |k: &KnownType| match label {
        Label::Gpt => Ok(PartType {
            code: Some(k.code.to_owned()),
            guid: Some(k.guid.to_owned()),
            mbr: None,
            description: Some(k.description.to_owned()),
        }),
        Label::Mbr => match k.mbr {
            Some(b) => Ok(PartType::from_mbr(b)),
            None => Err(format!(
                "{} ({}) has no MBR type byte; use a GPT label",
                k.code, k.description
            )),
        },
    };
    if let Some(hex) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        let byte = u8::from_str_radix(hex, 16)
            .map_err(|_| "an MBR type is one byte in hex: 0x00 to 0xff".to_owned())?;
        if byte == 0 {
            return Err("type 0x00 marks an unused entry".into());
        }
        return match label {
            Label::Mbr => {
                if matches!(byte, 0x05 | 0x0f | 0x85 | 0xee) {
                    return Err(format!(
                        "0x{byte:02x} is reserved: extended and protective entries are made for you"
                    ));
                }
                Ok(PartType::from_mbr(byte))
            }
            Label::Gpt => KNOWN_TYPES
                .iter()
                .find(|k| k.mbr == Some(byte))
                .map(known)
                .unwrap_or_else(|| {
                    Err(format!(
                        "no GPT type is known for MBR type 0x{byte:02x}; give a code or GUID"
                    ))
                }),
        };
    }
    if t.len() == 36 && t.contains('-') {
        let g = Uuid::parse_str(t).map_err(|e| format!("not a GUID: {e}"))?;
        return match label {
            Label::Gpt if g.is_nil() => Err("the nil GUID marks an unused entry".into()),
            Label::Gpt => Ok(PartType::from_guid(g)),
            Label::Mbr => {
                Err("a GUID type needs a GPT label; MBR types are bytes like 0x83".into())
            }
        };
    }
    let upper = t.to_ascii_uppercase();
    let lower = t.to_ascii_lowercase();
    if let Some(k) = KNOWN_TYPES
        .iter()
        .find(|k| k.code == upper || k.aliases.contains(&lower.as_str()))
    {
        return known(k);
    }
    if label == Label::Mbr
        && upper.len() == 4
        && upper.ends_with("00")
        && let Ok(byte) = u8::from_str_radix(&upper[..2], 16)
        && byte != 0
        && !matches!(byte, 0x05 | 0x0f | 0x85 | 0xee)
    {
        return Ok(PartType::from_mbr(byte));
    }
    Err(format!(
        "unknown type (known codes: {}; or 0xNN on MBR, or a GUID on GPT)",
        KNOWN_TYPES
            .iter()
            .map(|k| k.code)
            .collect::<Vec<_>>()
            .join(" ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_table() {
        // (input, label, expected code, expected guid or mbr byte)
        let ok: &[(&str, Label, &str, &str)] = &[
            (
                "8300",
                Label::Gpt,
                "8300",
                "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
            ),
            (
                "ef00",
                Label::Gpt,
                "EF00",
                "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
            ),
            (
                "EF02",
                Label::Gpt,
                "EF02",
                "21686148-6449-6E6F-744E-656564454649",
            ),
            (
                "8200",
                Label::Gpt,
                "8200",
                "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F",
            ),
            (
                "8E00",
                Label::Gpt,
                "8E00",
                "E6D6D379-F507-44C2-A23C-238F2A3DF928",
            ),
            (
                "0700",
                Label::Gpt,
                "0700",
                "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7",
            ),
            (
                "FD00",
                Label::Gpt,
                "FD00",
                "A19D880F-05FC-4D3B-A006-743F0F84911E",
            ),
            (
                "esp",
                Label::Gpt,
                "EF00",
                "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
            ),
            (
                "0x83",
                Label::Gpt,
                "8300",
                "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
            ),
            (
                "0xef",
                Label::Gpt,
                "EF00",
                "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
            ),
            (
                "0x0c",
                Label::Gpt,
                "0C00",
                "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7",
            ),
            (
                "4f68bce3-e8cd-4db1-96e7-fbcaf984b709",
                Label::Gpt,
                "8304",
                "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709",
            ),
            ("8300", Label::Mbr, "8300", "0x83"),
            ("EF00", Label::Mbr, "EF00", "0xef"),
            ("0x83", Label::Mbr, "8300", "0x83"),
            ("0xEF", Label::Mbr, "EF00", "0xef"),
            ("8200", Label::Mbr, "8200", "0x82"),
            ("8e00", Label::Mbr, "8E00", "0x8e"),
            ("FD00", Label::Mbr, "FD00", "0xfd"),
            ("0700", Label::Mbr, "0700", "0x07"),
            ("lvm", Label::Mbr, "8E00", "0x8e"),
            ("0x0c", Label::Mbr, "0C00", "0x0c"),
            ("0x17", Label::Mbr, "1700", "0x17"),
            ("1700", Label::Mbr, "1700", "0x17"),
        ];
        for (s, label, code, id) in ok {
            let t = resolve(s, *label).unwrap_or_else(|e| panic!("{s:?} {label:?}: {e}"));
            assert_eq!(t.code.as_deref(), Some(*code), "{s:?}");
            let got = match label {
                Label::Gpt => t.guid.clone(),
                Label::Mbr => t.mbr.clone(),
            };
            assert_eq!(got.as_deref(), Some(*id), "{s:?}");
        }
    }

    #[test]
    fn reject_types_table() {
        let bad: &[(&str, Label, &str)] = &[
            ("8399", Label::Gpt, "unknown type"),
            ("linuxx", Label::Gpt, "unknown type"),
            ("", Label::Gpt, "unknown type"),
            ("1700", Label::Gpt, "unknown type"),
            ("EF02", Label::Mbr, "has no MBR type byte"),
            ("8304", Label::Mbr, "has no MBR type byte"),
            ("0x1ff", Label::Mbr, "one byte in hex"),
            ("0xzz", Label::Gpt, "one byte in hex"),
            ("0x00", Label::Mbr, "unused entry"),
            ("0x05", Label::Mbr, "reserved"),
            ("0xee", Label::Mbr, "reserved"),
            ("0x17", Label::Gpt, "no GPT type is known"),
            (
                "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
                Label::Mbr,
                "needs a GPT label",
            ),
            (
                "00000000-0000-0000-0000-000000000000",
                Label::Gpt,
                "unused entry",
            ),
            (
                "0FC63DAF-8483-4772-8E79-3D69D8477DEZ",
                Label::Gpt,
                "not a GUID",
            ),
        ];
        for (s, label, want) in bad {
            let e = resolve(s, *label).expect_err(s);
            assert!(e.contains(want), "{s:?}: {e}");
        }
    }

    #[test]
    fn guids_agree_with_gpt_crate() {
        use gpt::partition_types as t;
        for (code, ty) in [
            ("8300", t::LINUX_FS),
            ("EF00", t::EFI),
            ("EF02", t::BIOS),
            ("8200", t::LINUX_SWAP),
            ("8E00", t::LINUX_LVM),
            ("FD00", t::LINUX_RAID),
            ("0700", t::BASIC),
            ("8302", t::LINUX_HOME),
        ] {
            let k = KNOWN_TYPES.iter().find(|k| k.code == code).expect(code);
            assert_eq!(
                k.guid,
                ty.guid.hyphenated().to_string().to_ascii_uppercase(),
                "{code}"
            );
        }
    }

    #[test]
    fn table_is_well_formed() {
        for k in KNOWN_TYPES {
            assert!(Uuid::parse_str(k.guid).is_ok(), "{}", k.code);
            assert_eq!(k.code, k.code.to_ascii_uppercase());
            assert_eq!(k.guid, k.guid.to_ascii_uppercase());
        }
    }
}
