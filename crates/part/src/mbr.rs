//! The MBR sector and its 16-byte partition entries (EBRs use the same entry layout): encoding
//! and decoding, as the UEFI specification (5.2.1, "Legacy Master Boot Record") and fdisk lay
//! them out. Replaces the `mbrman` crate, of which only this much was used.
//!
//! Layout: bootstrap code (0–439), disk signature (440–443, little endian), 2 reserved bytes,
//! four entries at 446, 462, 478 and 494, the `0x55 0xAA` boot signature at 510. An entry is:
//! boot flag, first CHS (3 bytes), type, last CHS (3 bytes), start LBA and sector count (both
//! u32, little endian).

/// The `0x55 0xAA` boot signature at bytes 510–511 of an MBR or EBR.
pub(crate) const BOOT_SIGNATURE: [u8; 2] = [0x55, 0xaa];
/// Offset of the first partition entry in an MBR or EBR.
pub(crate) const ENTRIES_OFFSET: usize = 446;

/// Boot flag of an active (bootable) entry.
const BOOT_ACTIVE: u8 = 0x80;
/// Offset of the disk signature.
const SIGNATURE_OFFSET: usize = 440;
/// Bytes of bootstrap code kept from an existing MBR.
const BOOTSTRAP_LEN: usize = 440;

/// One decoded entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry {
    /// Boot flag: 0x00 or 0x80 (others are refused when decoding an MBR).
    pub boot: u8,
    /// Partition type byte (0 = unused).
    pub sys: u8,
    /// Start LBA (absolute in the MBR; relative in EBRs).
    pub start: u32,
    /// Length in sectors.
    pub sectors: u32,
}

impl Entry {
    /// Entry `i` (0-based) of an MBR or EBR sector.
    pub fn decode(sector: &[u8; 512], i: usize) -> Entry {
        let o = ENTRIES_OFFSET + 16 * i;
        let u32_at = |at: usize| {
            u32::from_le_bytes([sector[at], sector[at + 1], sector[at + 2], sector[at + 3]])
        };
        Entry {
            boot: sector[o],
            sys: sector[o + 4],
            start: u32_at(o + 8),
            sectors: u32_at(o + 12),
        }
    }
}

/// A decoded MBR: disk signature and the four primary entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mbr {
    /// Disk signature (bytes 440–443).
    pub signature: u32,
    /// The four entries, slot 1 first.
    pub entries: [Entry; 4],
}

/// Decode an MBR sector, checking the boot signature and that every boot flag is 0x00 or 0x80
/// (what `mbrman` checked; anything else means this is not an MBR we should trust).
pub(crate) fn decode(sector: &[u8; 512]) -> Result<Mbr, String> {
    if sector[510..512] != BOOT_SIGNATURE {
        return Err("no MBR boot signature (0x55 0xAA at byte 510)".into());
    }
    let entries = [0, 1, 2, 3].map(|i| Entry::decode(sector, i));
    for (i, e) in entries.iter().enumerate() {
        if e.boot != 0 && e.boot != BOOT_ACTIVE {
            return Err(format!(
                "MBR entry {} has boot flag 0x{:02x} (only 0x00 and 0x80 are valid)",
                i + 1,
                e.boot
            ));
        }
    }
    let s = &sector[SIGNATURE_OFFSET..SIGNATURE_OFFSET + 4];
    Ok(Mbr {
        signature: u32::from_le_bytes([s[0], s[1], s[2], s[3]]),
        entries,
    })
}

/// A new MBR sector: `old`'s bootstrap code when `old` is an MBR (boot signature present),
/// the disk signature, no entries, the boot signature.
pub(crate) fn new_sector(old: &[u8; 512], signature: u32) -> [u8; 512] {
    let mut s = [0u8; 512];
    if old[510..512] == BOOT_SIGNATURE {
        s[..BOOTSTRAP_LEN].copy_from_slice(&old[..BOOTSTRAP_LEN]);
    }
    s[SIGNATURE_OFFSET..SIGNATURE_OFFSET + 4].copy_from_slice(&signature.to_le_bytes());
    s[510..512].copy_from_slice(&BOOT_SIGNATURE);
    s
}

/// Put `entry` into slot `i` (0-based) of an MBR or EBR sector.
pub(crate) fn put_entry(sector: &mut [u8; 512], i: usize, entry: &[u8; 16]) {
    let o = ENTRIES_OFFSET + 16 * i;
    sector[o..o + 16].copy_from_slice(entry);
}

/// CHS address of `lba` in the 255-head, 63-sector geometry fdisk uses, saturated at
/// 1023/254/63 past the 8 GiB CHS limit (everything since 1998 reads the LBA fields).
fn chs(lba: u64) -> (u16, u8, u8) {
    const HEADS: u64 = 255;
    const SECTORS: u64 = 63;
    let c = lba / (HEADS * SECTORS);
    if c > 1023 {
        return (1023, 254, 63);
    }
    let rem = lba % (HEADS * SECTORS);
    // All three fit: c <= 1023, rem / 63 < 255, rem % 63 + 1 <= 63.
    (c as u16, (rem / SECTORS) as u8, (rem % SECTORS + 1) as u8)
}

/// A 16-byte entry. CHS fields hold the absolute addresses of the first and last sector;
/// `rel_start` is what the LBA field holds (absolute in the MBR; in an EBR relative to the EBR
/// for its partition, to the extended partition for the link). LBA fields saturate at
/// `u32::MAX` (plans keep MBR partitions below 2^32 sectors).
pub(crate) fn encode_entry(
    boot: bool,
    sys: u8,
    abs_start: u64,
    rel_start: u64,
    size: u64,
) -> [u8; 16] {
    let enc = |(c, h, s): (u16, u8, u8)| {
        [
            h,
            (s & 0x3f) | (((c >> 8) as u8 & 0x03) << 6),
            (c & 0xff) as u8,
        ]
    };
    let mut e = [0u8; 16];
    e[0] = if boot { BOOT_ACTIVE } else { 0 };
    e[1..4].copy_from_slice(&enc(chs(abs_start)));
    e[4] = sys;
    let last = (abs_start + size).saturating_sub(1);
    e[5..8].copy_from_slice(&enc(chs(last)));
    e[8..12].copy_from_slice(&u32::try_from(rel_start).unwrap_or(u32::MAX).to_le_bytes());
    e[12..16].copy_from_slice(&u32::try_from(size).unwrap_or(u32::MAX).to_le_bytes());
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes fdisk writes for a bootable Linux partition at 2048 of 204800 sectors
    /// (`00 20 21 00` → head 32, sector 33, cylinder 0; end 12/223/19).
    #[test]
    fn entries_encode_like_fdisk() {
        let e = encode_entry(true, 0x83, 2048, 2048, 204_800);
        assert_eq!(
            e,
            [
                0x80, 0x20, 0x21, 0x00, 0x83, 0xdf, 0x13, 0x0c, 0x00, 0x08, 0x00, 0x00, 0x00, 0x20,
                0x03, 0x00
            ]
        );
        // Past the CHS limit: 1023/254/63 (fe ff ff).
        let big = encode_entry(false, 0x07, 20_000_000, 20_000_000, 8);
        assert_eq!(&big[1..4], &[0xfe, 0xff, 0xff]);
        assert_eq!(&big[5..8], &[0xfe, 0xff, 0xff]);
    }

    #[test]
    fn decode_round_trips_and_checks() {
        let mut old = [0u8; 512];
        old[..440].fill(0xcc);
        old[510..512].copy_from_slice(&BOOT_SIGNATURE);
        let mut s = new_sector(&old, 0x1234_abcd);
        assert_eq!(&s[..440], &[0xcc; 440][..], "bootstrap code kept");
        put_entry(&mut s, 1, &encode_entry(true, 0x0c, 4096, 4096, 100));
        let m = decode(&s).expect("decode");
        assert_eq!(m.signature, 0x1234_abcd);
        assert_eq!(
            m.entries[1],
            Entry {
                boot: 0x80,
                sys: 0x0c,
                start: 4096,
                sectors: 100
            }
        );
        assert_eq!(m.entries[0].sys, 0);
        s[446 + 16 * 2] = 0x12;
        assert!(
            decode(&s)
                .expect_err("bad flag")
                .contains("entry 3 has boot flag 0x12")
        );
        s[510] = 0;
        assert!(
            decode(&s)
                .expect_err("no signature")
                .contains("boot signature")
        );
        // Without an MBR before, no bootstrap code is kept.
        assert_eq!(&new_sector(&[0xcc; 512], 1)[..440], &[0u8; 440][..]);
    }
}
