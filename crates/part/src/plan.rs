//! Planning: [`Layout`] + disk size → [`Plan`], without touching any disk.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::layout::{DEFAULT_ALIGN, Flag, Label, Layout, PartSpec};
use crate::types::{PartType, resolve};
use crate::{Error, Extended, PartKind, PartRef, PartitionInfo, Result, Table};
use diskforge_size::{Percent, SizeSpec};

/// Entries in a GPT partition array (the `gpt` crate's minimum and everyone's default).
pub(crate) const GPT_ENTRIES: u64 = 128;
/// Bytes per GPT partition entry.
pub(crate) const GPT_ENTRY_SIZE: u64 = 128;
/// Longest GPT partition name, in UTF-16 code units.
const GPT_NAME_MAX: usize = 36;
/// Type byte of the extended partition we write (extended, LBA addressing).
pub(crate) const EXTENDED_TYPE: u8 = 0x0f;
/// GPT attribute bit 0: required partition.
pub(crate) const ATTR_REQUIRED: u64 = 1 << 0;
/// GPT attribute bit 2: legacy BIOS bootable.
pub(crate) const ATTR_LEGACY_BOOT: u64 = 1 << 2;

/// A table computed from a [`Layout`] for a disk of a given size, ready for [`crate::apply`].
///
/// `disk_uuid`/`uuid` fields that are `None` get random values when written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Plan {
    /// The table to write.
    pub table: Table,
    /// Things that are allowed but probably not meant (tools print them on stderr; not part of
    /// the serialised plan).
    #[serde(skip)]
    pub warnings: Vec<Warning>,
}

impl Plan {
    /// A plan for `table`, with the warnings it deserves.
    pub(crate) fn new(table: Table) -> Plan {
        let warnings = table_warnings(&table);
        Plan { table, warnings }
    }
}

/// Something a plan allows but that is probably not what was meant.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Warning {
    /// Several GPT partitions share a name: `/dev/disk/by-partlabel/NAME` and `PARTLABEL=`
    /// find only one of them.
    DuplicateName {
        /// The shared name.
        name: String,
        /// The partitions that have it.
        numbers: Vec<u32>,
    },
}

impl std::fmt::Display for Warning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Warning::DuplicateName { name, numbers } => {
                let list: Vec<String> = numbers.iter().map(u32::to_string).collect();
                write!(
                    f,
                    "partitions {} share the name {name:?}: PARTLABEL={name:?} finds only one \
                     of them",
                    list.join(", ")
                )
            }
        }
    }
}

/// The warnings `table` deserves: duplicate GPT names.
fn table_warnings(table: &Table) -> Vec<Warning> {
    if table.label != Label::Gpt {
        return Vec::new();
    }
    let mut by_name: std::collections::BTreeMap<&str, Vec<u32>> = Default::default();
    for p in &table.partitions {
        if let Some(n) = p.name.as_deref().filter(|n| !n.is_empty()) {
            by_name.entry(n).or_default().push(p.number);
        }
    }
    by_name
        .into_iter()
        .filter(|(_, numbers)| numbers.len() > 1)
        .map(|(name, mut numbers)| {
            numbers.sort_unstable();
            Warning::DuplicateName {
                name: name.to_owned(),
                numbers,
            }
        })
        .collect()
}

/// Sectors used at the start and end of the disk by a GPT with [`GPT_ENTRIES`] entries:
/// (first usable LBA, number of sectors reserved at the end).
pub(crate) fn gpt_reserved(sector_size: u64) -> (u64, u64) {
    let entry_lbas = (GPT_ENTRIES * GPT_ENTRY_SIZE).div_ceil(sector_size);
    (2 + entry_lbas, 1 + entry_lbas)
}

/// The usable sector range `[first, last]` of a disk of `total` sectors.
pub(crate) fn usable(label: Label, total: u64, sector_size: u64) -> Option<(u64, u64)> {
    match label {
        Label::Gpt => {
            let (first, tail) = gpt_reserved(sector_size);
            let last = total.checked_sub(tail + 1)?;
            (last >= first).then_some((first, last))
        }
        Label::Mbr => {
            // LBA fields are 32 bits: a partition can neither start nor end past 2^32 - 1.
            let last = total.checked_sub(1)?.min(u64::from(u32::MAX) - 1);
            (last >= 1).then_some((1, last))
        }
    }
}

/// `v` rounded up to a multiple of `a`; `None` past `u64::MAX`.
fn align_up(v: u64, a: u64) -> Option<u64> {
    v.checked_next_multiple_of(a)
}

fn align_down(v: u64, a: u64) -> u64 {
    v / a * a
}

/// A partition spec after parsing, before placement.
struct Parsed {
    part: PartRef,
    size: SizeSpec,
    start_lba: Option<u64>,
    start_raw: Option<String>,
    part_type: PartType,
    uuid: Option<String>,
    flags: Vec<Flag>,
    attributes: u64,
    kind: PartKind,
}

/// Parse a disk identifier: a GUID on GPT, a 32-bit signature (`0x1234abcd`) on MBR.
pub(crate) fn parse_disk_uuid(label: Label, s: &str) -> Result<String> {
    let bad = |reason: &str| Error::InvalidLayout {
        field: "disk_uuid",
        value: s.to_owned(),
        reason: reason.to_owned(),
    };
    match label {
        Label::Gpt => Uuid::parse_str(s.trim())
            .map(|u| u.hyphenated().to_string())
            .map_err(|e| bad(&format!("not a GUID: {e}"))),
        Label::Mbr => {
            let t = s.trim();
            let hex = t
                .strip_prefix("0x")
                .or_else(|| t.strip_prefix("0X"))
                .unwrap_or(t);
            if hex.is_empty() || hex.len() > 8 {
                return Err(bad(
                    "an MBR disk identifier is 32 bits of hex, like 0x1234abcd",
                ));
            }
            u32::from_str_radix(hex, 16)
                .map(|v| format!("0x{v:08x}"))
                .map_err(|_| bad("an MBR disk identifier is 32 bits of hex, like 0x1234abcd"))
        }
    }
}

fn parse_spec(
    i: usize,
    s: &PartSpec,
    label: Label,
    sector_size: u64,
) -> Result<(Parsed, Vec<Flag>)> {
    let part = PartRef {
        index: i + 1,
        name: s.name.clone().filter(|n| !n.is_empty()),
    };
    let field_err = |field: &'static str, value: &str, reason: String| Error::InvalidField {
        part: part.clone(),
        field,
        value: value.to_owned(),
        reason,
    };
    if let Some(n) = &s.name {
        check_name(label, n).map_err(|reason| field_err("name", n, reason))?;
    }
    let size_err = |reason: String| Error::InvalidSize {
        part: part.clone(),
        field: "size",
        value: s.size.clone(),
        reason,
    };
    let size: SizeSpec = s
        .size
        .parse()
        .map_err(|e: diskforge_size::SizeError| size_err(e.reason.to_string()))?;
    if size == SizeSpec::Absolute(diskforge_size::Size::ZERO) {
        return Err(size_err("a partition cannot be 0 bytes".into()));
    }
    let start_lba = match &s.start {
        None => None,
        Some(v) => {
            let bad = |reason: String| Error::InvalidSize {
                part: part.clone(),
                field: "start",
                value: v.clone(),
                reason,
            };
            let b = diskforge_size::parse(v)
                .map_err(|e| bad(e.reason.to_string()))?
                .bytes();
            if b % sector_size != 0 {
                return Err(bad(format!(
                    "not a multiple of the {sector_size}-byte sector"
                )));
            }
            Some(b / sector_size)
        }
    };
    let type_str = s.type_code.as_deref().unwrap_or("8300");
    let part_type = resolve(type_str, label).map_err(|reason| Error::UnknownType {
        part: part.clone(),
        value: type_str.to_owned(),
        reason,
    })?;
    let uuid = match (&s.uuid, label) {
        (None, _) => None,
        (Some(u), Label::Gpt) => Some(
            Uuid::parse_str(u.trim())
                .map_err(|e| field_err("uuid", u, format!("not a GUID: {e}")))?
                .hyphenated()
                .to_string(),
        ),
        (Some(u), Label::Mbr) => {
            return Err(field_err(
                "uuid",
                u,
                "MBR partitions have no UUID (the kernel derives PARTUUID from disk_uuid)".into(),
            ));
        }
    };
    let flags_str = || {
        s.flags
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("+")
    };
    let has = |f: Flag| s.flags.contains(&f);
    if has(Flag::Primary) && has(Flag::Logical) {
        return Err(field_err(
            "flags",
            &flags_str(),
            "primary and logical exclude each other".into(),
        ));
    }
    let mut flags = Vec::new();
    let mut attributes = 0;
    match label {
        Label::Gpt => {
            if has(Flag::Logical) {
                return Err(field_err(
                    "flags",
                    &flags_str(),
                    "logical partitions exist only on MBR".into(),
                ));
            }
            if has(Flag::Required) {
                attributes |= ATTR_REQUIRED;
                flags.push(Flag::Required);
            }
            if has(Flag::Boot) || has(Flag::LegacyBoot) {
                attributes |= ATTR_LEGACY_BOOT;
                flags.push(Flag::LegacyBoot);
            }
        }
        Label::Mbr => {
            if has(Flag::Required) {
                return Err(field_err(
                    "flags",
                    &flags_str(),
                    "required is a GPT attribute; MBR has only the boot flag".into(),
                ));
            }
            if has(Flag::Boot) || has(Flag::LegacyBoot) {
                flags.push(Flag::Boot);
            }
        }
    }
    let parsed = Parsed {
        part,
        size,
        start_lba,
        start_raw: s.start.clone(),
        part_type,
        uuid,
        flags,
        attributes,
        kind: PartKind::Primary,
    };
    Ok((parsed, s.flags.clone()))
}

/// The MBR state new partitions are added to.
#[derive(Clone, Copy)]
struct MbrSlots {
    /// Primary slots (1–4) not in use.
    free: usize,
    /// Whether an extended partition exists, and whether it is the last thing on the disk
    /// (so logical partitions can be appended to it).
    extended: Option<bool>,
}

/// Why `name` cannot be a partition name on `label`, if it cannot.
pub(crate) fn check_name(label: Label, name: &str) -> std::result::Result<(), String> {
    if let Some(c) = name.chars().find(|c| c.is_control()) {
        return Err(format!(
            "contains the control character U+{:04X}; names are printed in tables and logs",
            u32::from(c)
        ));
    }
    if label == Label::Gpt && name.encode_utf16().count() > GPT_NAME_MAX {
        return Err(format!(
            "longer than the {GPT_NAME_MAX} UTF-16 units a GPT entry holds"
        ));
    }
    Ok(())
}

/// Decide which new MBR partitions are logical.
///
/// An extended partition is made when the new partitions outnumber the free primary slots or
/// one is flagged `logical`. Then `primary`/`logical` flags decide; unflagged partitions stay
/// primary while slots remain (one is kept for the extended partition) and no logical one was
/// seen, and become logical after that. Logical partitions must be consecutive (they share one
/// extended partition); when adding to a table whose extended partition ends the used space,
/// unflagged partitions are appended to it as logical ones.
fn assign_mbr_kinds(parts: &mut [Parsed], flags: &[Vec<Flag>], slots: MbrSlots) -> Result<()> {
    let flag_str = |f: &Vec<Flag>| {
        f.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("+")
    };
    let any_logical = flags.iter().any(|f| f.contains(&Flag::Logical));
    let new_extended = slots.extended.is_none() && (parts.len() > slots.free || any_logical);
    let max = if slots.extended.is_some() || new_extended {
        3
    } else {
        4
    };
    let allowed = slots.free.saturating_sub(usize::from(new_extended));
    if new_extended && flags.iter().all(|f| f.contains(&Flag::Primary)) {
        // More partitions than slots, all of them primary: the first that does not fit.
        let i = slots.free.min(parts.len() - 1);
        return Err(Error::TooManyPrimaries {
            part: parts[i].part.clone(),
            value: flag_str(&flags[i]),
            max: 4,
        });
    }
    let mut primaries = 0;
    let mut seen_logical = slots.extended.is_some();
    let mut logical_ended = slots.extended == Some(false);
    for (p, f) in parts.iter_mut().zip(flags) {
        let logical = if f.contains(&Flag::Logical) {
            true
        } else if f.contains(&Flag::Primary) {
            false
        } else {
            (seen_logical && !logical_ended) || primaries >= allowed
        };
        if logical && logical_ended && !f.contains(&Flag::Logical) {
            return Err(Error::TooManyPrimaries {
                part: p.part.clone(),
                value: flag_str(f),
                max,
            });
        }
        if logical {
            if logical_ended {
                return Err(Error::InvalidField {
                    part: p.part.clone(),
                    field: "flags",
                    value: flag_str(f),
                    reason: "logical partitions must be consecutive at the end of the extended \
                             partition, and a primary one comes before this"
                        .into(),
                });
            }
            if let Some(start) = &p.start_raw {
                return Err(Error::InvalidSize {
                    part: p.part.clone(),
                    field: "start",
                    value: start.clone(),
                    reason: "logical partitions are placed after their EBR; give no start".into(),
                });
            }
            seen_logical = true;
            p.kind = PartKind::Logical;
        } else {
            if seen_logical {
                logical_ended = true;
            }
            primaries += 1;
            if primaries > allowed {
                return Err(Error::TooManyPrimaries {
                    part: p.part.clone(),
                    value: flag_str(f),
                    max,
                });
            }
        }
    }
    Ok(())
}

/// Sector size, alignment and usable area of one disk.
struct Geometry {
    label: Label,
    ss: u64,
    align_bytes: u64,
    al: u64,
    total: u64,
    first: u64,
    last: u64,
}

impl Geometry {
    fn new(
        label: Label,
        sector_size: u32,
        align: Option<&str>,
        disk_size_bytes: u64,
    ) -> Result<Self> {
        let ss = u64::from(sector_size);
        if ss != 512 && ss != 4096 {
            return Err(Error::InvalidLayout {
                field: "sector_size",
                value: ss.to_string(),
                reason: "must be 512 or 4096".into(),
            });
        }
        let align_str = align.unwrap_or(DEFAULT_ALIGN);
        let bad_align = |reason: String| Error::InvalidLayout {
            field: "align",
            value: align_str.to_owned(),
            reason,
        };
        let align_bytes = diskforge_size::parse(align_str)
            .map_err(|e| bad_align(e.reason.to_string()))?
            .bytes();
        if align_bytes == 0 || align_bytes % ss != 0 {
            return Err(bad_align(format!(
                "must be a positive multiple of the {ss}-byte sector"
            )));
        }
        let total = disk_size_bytes / ss;
        let (first, last) = usable(label, total, ss).ok_or_else(|| Error::InvalidLayout {
            field: "disk size",
            value: disk_size_bytes.to_string(),
            reason: format!("too small for a {label} table"),
        })?;
        Ok(Geometry {
            label,
            ss,
            align_bytes,
            al: align_bytes / ss,
            total,
            first,
            last,
        })
    }
}

/// Compute where every partition of `layout` goes on a disk of `disk_size_bytes`.
///
/// Pure: it reads nothing and writes nothing. Errors name the partition (position and name),
/// the field and the value: bad sizes, unknown types, percentages over 100, partitions that do
/// not fit or overlap, too many MBR primaries.
pub fn plan(layout: &Layout, disk_size_bytes: u64) -> Result<Plan> {
    let label = layout.label;
    let g = Geometry::new(
        label,
        layout.sector_size.unwrap_or(512),
        layout.align.as_deref(),
        disk_size_bytes,
    )?;
    let disk_uuid = layout
        .disk_uuid
        .as_deref()
        .map(|u| parse_disk_uuid(label, u))
        .transpose()?;
    let table = Table {
        label,
        sector_size: g.ss as u32,
        disk_size_bytes: g.total * g.ss,
        disk_uuid,
        first_usable_lba: g.first,
        last_usable_lba: g.last,
        align_bytes: Some(g.align_bytes),
        pmbr_boot: label == Label::Gpt && layout.pmbr_boot,
        extended: None,
        partitions: Vec::new(),
    };
    place(&g, table, &layout.partitions).map(Plan::new)
}

/// Plan adding `specs` to an existing table (read with [`crate::read`]): new partitions go
/// after everything already there, in order; percentages and `rest` share the free space at
/// the end. On MBR they take free primary slots, or become logical partitions appended to an
/// extended partition that ends the used space (or in a new one). GPT entries are renumbered
/// 1, 2, … in their current order (the `gpt` crate writes the entry array compactly).
pub fn plan_add(existing: &Table, specs: &[PartSpec], align: Option<&str>) -> Result<Plan> {
    let g = Geometry::new(
        existing.label,
        existing.sector_size,
        align,
        existing.disk_size_bytes,
    )?;
    let mut table = existing.clone();
    table.align_bytes = Some(g.align_bytes);
    compact_gpt_numbers(&mut table);
    place(&g, table, specs).map(Plan::new)
}

/// Renumber GPT partitions 1, 2, … keeping their order (what the `gpt` crate writes).
pub(crate) fn compact_gpt_numbers(t: &mut Table) {
    if t.label == Label::Gpt {
        t.partitions.sort_by_key(|p| p.number);
        for (i, p) in t.partitions.iter_mut().enumerate() {
            p.number = i as u32 + 1;
        }
        t.partitions.sort_by_key(|p| p.start_lba);
    }
}

/// Place `specs` after what `table` already holds.
///
/// The steps, in order: parse every spec, look at what the disk already holds, decide which
/// MBR partitions are logical, check percentages and `rest`, share the free space, place each
/// partition, then close the extended partition and derive MBR PARTUUIDs.
fn place(g: &Geometry, table: Table, specs: &[PartSpec]) -> Result<Table> {
    check_gpt_capacity(g.label, table.partitions.len(), specs)?;
    let mut placer = Placer::new(g, table, specs);
    let (mut parts, raw_flags) = placer.parse_specs()?;
    placer.assign_kinds(&mut parts, &raw_flags)?;
    placer.check_relative_sizes(&parts)?;
    let shares = placer.shares(&parts);
    for (p, s) in parts.into_iter().zip(specs) {
        placer.place_one(p, s, &shares)?;
    }
    Ok(placer.finish())
}

/// A GPT holds [`GPT_ENTRIES`] partitions: refuse the first spec past that.
fn check_gpt_capacity(label: Label, existing: usize, specs: &[PartSpec]) -> Result<()> {
    if label != Label::Gpt || ((existing + specs.len()) as u64) <= GPT_ENTRIES {
        return Ok(());
    }
    let i = (GPT_ENTRIES as usize).saturating_sub(existing);
    let p = &specs[i.min(specs.len() - 1)];
    Err(Error::InvalidField {
        part: PartRef {
            index: existing + i + 1,
            name: p.name.clone(),
        },
        field: "name",
        value: p.name.clone().unwrap_or_default(),
        reason: format!("a GPT holds {GPT_ENTRIES} partitions"),
    })
}

/// Sizes of the relative partitions, in sectors: each percentage's share and what `rest` gets.
struct Shares {
    /// Sectors the percentages and `rest` share (free space minus fixed sizes and EBRs).
    avail: u64,
    /// Sectors for `rest`: `avail` minus every percentage's share.
    rest: u64,
}

/// State shared by the steps of [`place`]: the geometry, the table being built and what is
/// already on the disk.
struct Placer<'a> {
    g: &'a Geometry,
    specs: &'a [PartSpec],
    table: Table,
    /// Partitions in the table before this plan.
    existing: usize,
    /// Occupied sector ranges: what, first, last.
    placed: Vec<(String, u64, u64)>,
    /// The first sector after everything that stays (new partitions go at or after it).
    used_end: u64,
    /// MBR: whether an extended partition exists and whether it ends the used space.
    ext_is_last: Option<bool>,
    /// MBR: free primary slots, in order.
    free_slots: std::vec::IntoIter<u32>,
    /// Where the next partition may start.
    cursor: u64,
    /// Next GPT number.
    next_gpt: u32,
    /// Next MBR logical number.
    next_logical: u32,
}

impl<'a> Placer<'a> {
    /// Record what the disk already holds: reserved sectors, partitions (with their EBRs), the
    /// extended partition, free MBR slots and where new partitions may begin.
    fn new(g: &'a Geometry, table: Table, specs: &'a [PartSpec]) -> Self {
        let label = g.label;
        let first = g.first;
        let reserved_name = match label {
            Label::Gpt => "the GPT header and entries",
            Label::Mbr => "the MBR",
        };
        let mut placed: Vec<(String, u64, u64)> = vec![(reserved_name.to_owned(), 0, first - 1)];
        for p in &table.partitions {
            placed.push((
                format!("partition {}", p.number),
                p.ebr_lba.unwrap_or(p.start_lba),
                p.end_lba,
            ));
        }
        // Where new partitions may begin. An extended partition with no primary after it is
        // "last": its unused tail is free space that new logical partitions (or, once it has
        // been shrunk to its last logical one, new primaries) may use.
        let end_of = |kind: Option<PartKind>| {
            table
                .partitions
                .iter()
                .filter(|p| kind.is_none_or(|k| p.kind == k))
                .map(|p| p.end_lba.saturating_add(1))
                .max()
                .unwrap_or(first)
        };
        let prim_end = end_of(Some(PartKind::Primary));
        let ext_is_last = table.extended.as_ref().map(|e| e.start_lba >= prim_end);
        let used_end = match (&table.extended, ext_is_last) {
            (Some(e), Some(true)) => end_of(None).max(e.start_lba),
            (Some(e), _) => end_of(None).max(e.start_lba.saturating_add(e.size_lba)),
            (None, _) => end_of(None),
        };
        let free_slots: Vec<u32> = match label {
            Label::Mbr => (1..=4)
                .filter(|n| {
                    table.partitions.iter().all(|p| p.number != *n)
                        && table.extended.as_ref().is_none_or(|e| e.number != *n)
                })
                .collect(),
            Label::Gpt => Vec::new(),
        };
        if let (Some(e), Some(false)) = (&table.extended, ext_is_last) {
            // Primary partitions may not start inside an extended partition that stays.
            placed.push((
                "the extended partition".into(),
                e.start_lba,
                (e.start_lba + e.size_lba).saturating_sub(1),
            ));
        }
        let next_gpt = table.partitions.iter().map(|p| p.number).max().unwrap_or(0) + 1;
        let next_logical = 5 + table
            .partitions
            .iter()
            .filter(|p| p.kind == PartKind::Logical)
            .count() as u32;
        Placer {
            g,
            specs,
            existing: table.partitions.len(),
            table,
            placed,
            used_end,
            ext_is_last,
            free_slots: free_slots.into_iter(),
            cursor: used_end,
            next_gpt,
            next_logical,
        }
    }

    /// Parse every spec; also return each spec's flags as written.
    fn parse_specs(&self) -> Result<(Vec<Parsed>, Vec<Vec<Flag>>)> {
        let mut parts = Vec::with_capacity(self.specs.len());
        let mut raw_flags = Vec::with_capacity(self.specs.len());
        for (i, s) in self.specs.iter().enumerate() {
            let (p, f) = parse_spec(self.existing + i, s, self.g.label, self.g.ss)?;
            parts.push(p);
            raw_flags.push(f);
        }
        Ok((parts, raw_flags))
    }

    /// MBR: decide which new partitions are logical (see [`assign_mbr_kinds`]).
    fn assign_kinds(&self, parts: &mut [Parsed], raw_flags: &[Vec<Flag>]) -> Result<()> {
        if self.g.label != Label::Mbr {
            return Ok(());
        }
        let slots = MbrSlots {
            free: self.free_slots.len(),
            extended: self.ext_is_last,
        };
        assign_mbr_kinds(parts, raw_flags, slots)
    }

    /// Percentages add up to at most 100 %, and at most one partition takes the rest.
    fn check_relative_sizes(&self, parts: &[Parsed]) -> Result<()> {
        let ppm = |p: &Parsed| match p.size {
            SizeSpec::Percent(v) => u64::from(v.ppm()),
            _ => 0,
        };
        let full = u64::from(Percent::FULL.ppm());
        let mut pct_total = 0u64;
        let mut rest_seen: Option<&PartRef> = None;
        for (p, s) in parts.iter().zip(self.specs) {
            match p.size {
                SizeSpec::Percent(_) => {
                    let before = pct_total;
                    pct_total += ppm(p);
                    if before <= full && pct_total > full {
                        let total_all: u64 = parts.iter().map(ppm).sum();
                        return Err(Error::PercentOver100 {
                            part: p.part.clone(),
                            value: s.size.clone(),
                            total: format_ppm(total_all),
                        });
                    }
                }
                SizeSpec::Rest => {
                    if let Some(other) = rest_seen {
                        return Err(Error::InvalidSize {
                            part: p.part.clone(),
                            field: "size",
                            value: s.size.clone(),
                            reason: format!(
                                "only one partition can take the rest; {other} already does"
                            ),
                        });
                    }
                    rest_seen = Some(&p.part);
                }
                SizeSpec::Absolute(_) => {}
            }
        }
        Ok(())
    }

    /// Space shared by percentages and `rest`: the aligned free area after what exists minus
    /// the fixed partitions (rounded up to the alignment) and one alignment unit before each
    /// logical partition for its EBR.
    fn shares(&self, parts: &[Parsed]) -> Shares {
        let (ss, al) = (self.g.ss, self.g.al);
        let cursor0 = align_up(self.used_end, al).unwrap_or(u64::MAX);
        let budget_end = align_down(self.g.last + 1, al);
        let mut fixed = 0u64;
        for p in parts {
            if let SizeSpec::Absolute(b) = p.size {
                let sectors = align_up(b.bytes().div_ceil(ss), al).unwrap_or(u64::MAX);
                fixed = fixed.saturating_add(sectors);
            }
            if p.kind == PartKind::Logical {
                fixed = fixed.saturating_add(al);
            }
        }
        let avail = budget_end.saturating_sub(cursor0).saturating_sub(fixed);
        let mut shares = Shares { avail, rest: 0 };
        let pct_sum: u64 = parts.iter().map(|p| shares.sectors(p.size, al)).sum();
        // The percentages add up to at most 100 % of avail (checked before), so no underflow.
        shares.rest = avail.saturating_sub(pct_sum);
        shares
    }

    /// Place one partition after the ones before it (or at its explicit start).
    fn place_one(&mut self, p: Parsed, s: &PartSpec, shares: &Shares) -> Result<()> {
        let (ss, al, last) = (self.g.ss, self.g.al, self.g.last);
        let size_lba = match p.size {
            SizeSpec::Absolute(b) => b.bytes().div_ceil(ss),
            SizeSpec::Percent(_) => shares.sectors(p.size, al),
            SizeSpec::Rest => shares.rest,
        };
        if size_lba == 0 {
            return Err(Error::NoSpace {
                part: p.part,
                value: s.size.clone(),
            });
        }
        let (start, ebr_lba) = match (p.kind, p.start_lba) {
            (PartKind::Logical, _) => {
                let ebr = self.open_logical();
                (align_up(ebr.saturating_add(1), al), Some(ebr))
            }
            (PartKind::Primary, Some(st)) => (Some(st), None),
            (PartKind::Primary, None) => (align_up(self.cursor, al), None),
        };
        // Past u64 sectors nothing fits; report it against the end of the usable area.
        let start = start.unwrap_or(u64::MAX / ss);
        let end = start.checked_add(size_lba - 1);
        if let (Some(st), Some(end)) = (p.start_lba, end) {
            for (what, a, b) in &self.placed {
                if st <= *b && end >= *a {
                    return Err(Error::Overlap {
                        part: p.part,
                        value: s.start.clone().unwrap_or_default(),
                        other: what.clone(),
                        other_start: *a,
                        other_end: *b,
                    });
                }
            }
        }
        let Some(end) = end.filter(|e| *e <= last) else {
            let requested = match p.size {
                SizeSpec::Absolute(b) => b.bytes(),
                _ => u64::MAX,
            };
            return Err(Error::Oversize {
                part: p.part,
                value: s.size.clone(),
                start_bytes: start.saturating_mul(ss),
                size_bytes: size_lba.checked_mul(ss).unwrap_or(requested),
                limit_bytes: (last + 1) * ss,
            });
        };
        let number = match (self.g.label, p.kind) {
            (Label::Gpt, _) => {
                self.next_gpt += 1;
                self.next_gpt - 1
            }
            (Label::Mbr, PartKind::Logical) => {
                self.next_logical += 1;
                self.next_logical - 1
            }
            (Label::Mbr, PartKind::Primary) => self.free_slots.next().unwrap_or(4),
        };
        self.placed
            .push((p.part.to_string(), ebr_lba.unwrap_or(start), end));
        self.cursor = self.cursor.max(end + 1);
        // Both fit: end <= last, and the disk's size in bytes is a u64.
        self.table.partitions.push(PartitionInfo {
            number,
            name: p.part.name.clone(),
            kind: p.kind,
            start_lba: start,
            end_lba: end,
            size_lba,
            start_bytes: start * ss,
            size_bytes: size_lba * ss,
            part_type: p.part_type,
            uuid: p.uuid,
            flags: p.flags,
            attributes: p.attributes,
            ebr_lba,
        });
        Ok(())
    }

    /// Where the EBR of a new logical partition goes; opens (or moves the start of) the
    /// extended partition for the first logical one.
    fn open_logical(&mut self) -> u64 {
        let ebr = align_up(self.cursor, self.g.al).unwrap_or(u64::MAX);
        let has_logical = self
            .table
            .partitions
            .iter()
            .any(|q| q.kind == PartKind::Logical);
        if let (Some(ext), false) = (self.table.extended.as_mut(), has_logical) {
            // The first EBR sits at the start of the extended partition.
            ext.start_lba = ebr;
        }
        if self.table.extended.is_none() {
            // assign_mbr_kinds kept a slot for it.
            let number = self.free_slots.next().unwrap_or(4);
            self.table.extended = Some(Extended {
                number,
                start_lba: ebr,
                size_lba: 0,
                type_byte: format!("0x{EXTENDED_TYPE:02x}"),
            });
        }
        ebr
    }

    /// Sort by start, close the extended partition at its last logical partition (or drop it
    /// when it has none) and derive MBR PARTUUIDs from the signature.
    fn finish(mut self) -> Table {
        let table = &mut self.table;
        table.partitions.sort_by_key(|p| p.start_lba);
        let logical_end = table
            .partitions
            .iter()
            .filter(|p| p.kind == PartKind::Logical)
            .map(|p| p.end_lba + 1)
            .max();
        match (logical_end, table.extended.as_mut()) {
            (Some(end), Some(ext)) => ext.size_lba = end - ext.start_lba,
            (None, _) => table.extended = None,
            (Some(_), None) => {}
        }
        if let (Label::Mbr, Some(sig)) = (self.g.label, table.disk_uuid.clone()) {
            for p in &mut table.partitions {
                p.uuid = Some(mbr_partuuid(&sig, p.number));
            }
        }
        self.table
    }
}

impl Shares {
    /// The sectors a percentage gets (rounded down to the alignment); 0 for other sizes.
    fn sectors(&self, size: SizeSpec, al: u64) -> u64 {
        match size {
            SizeSpec::Percent(v) => align_down(v.of(self.avail), al),
            _ => 0,
        }
    }
}

/// Parts per million as a percentage without the sign: `110`, `112.5`.
fn format_ppm(ppm: u64) -> String {
    let (int, frac) = (ppm / 10_000, ppm % 10_000);
    if frac == 0 {
        int.to_string()
    } else {
        format!("{int}.{}", format!("{frac:04}").trim_end_matches('0'))
    }
}

/// The PARTUUID Linux gives MBR partition `number` on a disk with signature `0x1234abcd`.
pub(crate) fn mbr_partuuid(sig: &str, number: u32) -> String {
    format!("{}-{number:02x}", sig.trim_start_matches("0x"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Flag;

    const GIB: u64 = 1 << 30;

    fn layout(label: Label, parts: &[(&str, &str, &str)]) -> Layout {
        let mut l = Layout::new(label);
        for (name, size, ty) in parts {
            l.partitions
                .push(PartSpec::new(*name, *size).with_type(*ty));
        }
        l
    }

    #[test]
    fn gpt_esp_root() {
        let mut l = layout(
            Label::Gpt,
            &[("ESP", "512MiB", "EF00"), ("root", "rest", "8300")],
        );
        l.disk_uuid = Some("11111111-2222-3333-4444-555555555555".into());
        l.partitions[0].uuid = Some("AAAAAAAA-0000-4000-8000-000000000001".into());
        l.partitions[1].flags = vec![Flag::Boot];
        insta::assert_yaml_snapshot!(plan(&l, GIB).expect("plan"));
    }

    #[test]
    fn gpt_percentages_share_what_fixed_sizes_leave() {
        let l = layout(
            Label::Gpt,
            &[
                ("bios", "1MiB", "EF02"),
                ("ESP", "100MiB", "esp"),
                ("root", "60%", "8304"),
                ("home", "40%", "8302"),
            ],
        );
        let p = plan(&l, 2 * GIB).expect("plan").table;
        let sizes: Vec<u64> = p.partitions.iter().map(|p| p.size_bytes).collect();
        // 2 GiB minus 1 MiB lead-in, 1 MiB tail (aligned down past the backup GPT), 101 MiB.
        let avail = 2 * GIB - (1 << 20) - (1 << 20) - (101 << 20);
        assert_eq!(sizes[2], avail * 60 / 100 / (1 << 20) * (1 << 20));
        assert_eq!(sizes[3], avail * 40 / 100 / (1 << 20) * (1 << 20));
        assert!(p.partitions.iter().all(|p| p.start_bytes % (1 << 20) == 0));
        insta::assert_yaml_snapshot!(p);
    }

    #[test]
    fn mbr_more_than_four_makes_logicals() {
        let mut l = layout(
            Label::Mbr,
            &[
                ("boot", "256MiB", "0x83"),
                ("swap", "512MiB", "8200"),
                ("lvm", "300MiB", "8E00"),
                ("a", "100MiB", "0x83"),
                ("b", "100MiB", "0x0c"),
                ("c", "rest", "FD00"),
            ],
        );
        l.disk_uuid = Some("0xdeadbeef".into());
        l.partitions[0].flags = vec![Flag::Boot];
        let p = plan(&l, 2 * GIB).expect("plan").table;
        let kinds: Vec<(u32, PartKind)> = p.partitions.iter().map(|p| (p.number, p.kind)).collect();
        assert_eq!(
            kinds,
            [
                (1, PartKind::Primary),
                (2, PartKind::Primary),
                (3, PartKind::Primary),
                (5, PartKind::Logical),
                (6, PartKind::Logical),
                (7, PartKind::Logical)
            ]
        );
        insta::assert_yaml_snapshot!(p);
    }

    #[test]
    fn mbr_flags_choose_logical_and_primary() {
        let mut l = layout(
            Label::Mbr,
            &[
                ("a", "10MiB", "8300"),
                ("b", "10MiB", "8300"),
                ("c", "10MiB", "8300"),
            ],
        );
        l.partitions[1].flags = vec![Flag::Logical];
        l.partitions[2].flags = vec![Flag::Primary];
        l.align = Some("4KiB".into());
        let p = plan(&l, 64 << 20).expect("plan").table;
        let got: Vec<(u32, PartKind, u64, Option<u64>)> = p
            .partitions
            .iter()
            .map(|p| (p.number, p.kind, p.start_lba, p.ebr_lba))
            .collect();
        // a: primary at 4 KiB; b: EBR at the next 4 KiB boundary, data 4 KiB later; c: primary
        // (unflagged, it would have stayed logical like the partition before it).
        let a_end = 8 + 20480;
        assert_eq!(
            got,
            [
                (1, PartKind::Primary, 8, None),
                (5, PartKind::Logical, a_end + 8, Some(a_end)),
                (3, PartKind::Primary, a_end + 8 + 20480, None)
            ]
        );
        let ext = p.extended.expect("extended");
        assert_eq!(
            (ext.number, ext.start_lba, ext.size_lba),
            (2, a_end, 8 + 20480)
        );
    }

    #[test]
    fn explicit_start_and_4k_sectors() {
        let mut l = layout(Label::Gpt, &[("a", "8MiB", "8300"), ("b", "8MiB", "8300")]);
        l.sector_size = Some(4096);
        l.partitions[1].start = Some("32MiB".into());
        let p = plan(&l, 64 << 20).expect("plan").table;
        assert_eq!(p.first_usable_lba, 6);
        assert_eq!(p.last_usable_lba, (64 << 20) / 4096 - 6);
        assert_eq!(p.partitions[0].start_bytes, 1 << 20);
        assert_eq!(p.partitions[1].start_bytes, 32 << 20);
        assert_eq!(p.partitions[1].start_lba, (32 << 20) / 4096);
    }

    #[test]
    fn seeded_uuids_are_stable_and_distinct() {
        let mut a = layout(Label::Gpt, &[("a", "1MiB", "8300"), ("b", "1MiB", "8300")]);
        let mut b = a.clone();
        a.seed_uuids("image-1");
        b.seed_uuids("image-1");
        assert_eq!(a, b);
        assert_ne!(a.partitions[0].uuid, a.partitions[1].uuid);
        let mut c = layout(Label::Gpt, &[("a", "1MiB", "8300")]);
        c.seed_uuids("image-2");
        assert_ne!(a.partitions[0].uuid, c.partitions[0].uuid);
        let mut m = layout(Label::Mbr, &[("a", "1MiB", "8300")]);
        m.seed_uuids("image-1");
        assert!(
            m.disk_uuid
                .as_deref()
                .is_some_and(|s| s.starts_with("0x") && s.len() == 10)
        );
        assert_eq!(m.partitions[0].uuid, None);
        insta::assert_yaml_snapshot!((a.disk_uuid, m.disk_uuid, &a.partitions[0].uuid));
    }

    #[test]
    fn add_to_existing_tables() {
        // GPT: after the last partition, numbered on.
        let base = plan(&layout(Label::Gpt, &[("a", "100MiB", "8300")]), GIB).expect("plan");
        let add = [PartSpec::new("b", "25%"), PartSpec::new("c", "rest")];
        let p = plan_add(&base.table, &add, None).expect("add").table;
        assert_eq!(
            p.partitions.iter().map(|p| p.number).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert_eq!(p.partitions[1].start_bytes, 101 << 20);
        // MBR: one free slot left and two new partitions: an extended one with two logicals.
        let base = plan(
            &layout(
                Label::Mbr,
                &[
                    ("a", "10MiB", "0x83"),
                    ("b", "10MiB", "0x82"),
                    ("c", "10MiB", "0x8e"),
                ],
            ),
            GIB,
        )
        .expect("plan");
        let add = [PartSpec::new("d", "10MiB"), PartSpec::new("e", "rest")];
        let p = plan_add(&base.table, &add, Some("4MiB"))
            .expect("add")
            .table;
        insta::assert_yaml_snapshot!(p);
        // No primary slot is left.
        let mut q = PartSpec::new("f", "1MiB").with_flag(Flag::Primary);
        q.start = Some(format!("{}", p.partitions[3].start_bytes));
        let err = plan_add(&p, &[q], None).expect_err("full").to_string();
        assert!(
            err.starts_with("partition 6 (f): flags=\"primary\": too many primary"),
            "{err}"
        );
    }

    /// Every error path: the message names the partition (position and name), field and value.
    #[test]
    fn errors_name_partition_field_and_value() {
        let gpt = |parts: &[(&str, &str, &str)]| layout(Label::Gpt, parts);
        let mbr = |parts: &[(&str, &str, &str)]| layout(Label::Mbr, parts);
        let with = |mut l: Layout, f: &dyn Fn(&mut Layout)| {
            f(&mut l);
            l
        };
        let cases: Vec<(Layout, u64, &str)> = vec![
            (
                gpt(&[("a", "1MiB", "8300"), ("b", "12X", "8300")]),
                GIB,
                "partition 2 (b): size=\"12X\": unknown unit \"X\"",
            ),
            (
                gpt(&[("a", "", "8300")]),
                GIB,
                "partition 1 (a): size=\"\": empty size",
            ),
            (
                gpt(&[("a", "1MiB", "8399")]),
                GIB,
                "partition 1 (a): type=\"8399\": unknown type",
            ),
            (
                mbr(&[("bios", "1MiB", "EF02")]),
                GIB,
                "partition 1 (bios): type=\"EF02\": EF02 (BIOS boot partition) has no MBR type byte",
            ),
            (
                gpt(&[
                    ("a", "60%", "8300"),
                    ("b", "30%", "8300"),
                    ("c", "20%", "8300"),
                ]),
                GIB,
                "partition 3 (c): size=\"20%\": percentages add up to 110% (more than 100%)",
            ),
            (
                gpt(&[("a", "512MiB", "8300"), ("b", "600MiB", "8300")]),
                GIB,
                "partition 2 (b): size=\"600MiB\": does not fit: 629145600 bytes from byte 537919488 end past the usable area, which ends at byte 1073724928",
            ),
            (
                gpt(&[("a", "rest", "8300"), ("b", "rest", "8300")]),
                GIB,
                "partition 2 (b): size=\"rest\": only one partition can take the rest; partition 1 (a) already does",
            ),
            (
                gpt(&[("a", "1022MiB", "8300"), ("b", "rest", "8300")]),
                GIB,
                "partition 2 (b): size=\"rest\": no space left for it",
            ),
            (
                with(
                    gpt(&[("a", "100MiB", "8300"), ("b", "10MiB", "8300")]),
                    &|l| l.partitions[1].start = Some("50MiB".into()),
                ),
                GIB,
                "partition 2 (b): start=\"50MiB\": overlaps partition 1 (a) (sectors 2048..=206847)",
            ),
            (
                with(gpt(&[("a", "1MiB", "8300")]), &|l| {
                    l.partitions[0].start = Some("8KiB".into())
                }),
                GIB,
                "partition 1 (a): start=\"8KiB\": overlaps the GPT header and entries (sectors 0..=33)",
            ),
            (
                with(gpt(&[("a", "1MiB", "8300")]), &|l| {
                    l.partitions[0].start = Some("1000".into())
                }),
                GIB,
                "partition 1 (a): start=\"1000\": not a multiple of the 512-byte sector",
            ),
            (
                with(
                    mbr(&[
                        ("a", "1MiB", "8300"),
                        ("b", "1MiB", "8300"),
                        ("c", "1MiB", "8300"),
                        ("d", "1MiB", "8300"),
                        ("e", "1MiB", "8300"),
                    ]),
                    &|l| {
                        l.partitions
                            .iter_mut()
                            .for_each(|p| p.flags = vec![Flag::Primary])
                    },
                ),
                GIB,
                "partition 5 (e): flags=\"primary\": too many primary partitions: an MBR holds 4; more need logical ones (drop `primary`)",
            ),
            (
                with(
                    mbr(&[
                        ("a", "1MiB", "8300"),
                        ("b", "1MiB", "8300"),
                        ("c", "1MiB", "8300"),
                        ("d", "1MiB", "8300"),
                        ("e", "1MiB", "8300"),
                    ]),
                    &|l| l.partitions[3].flags = vec![Flag::Primary],
                ),
                GIB,
                "partition 4 (d): flags=\"primary\": too many primary partitions: an MBR holds 3 besides the extended partition",
            ),
            (
                with(
                    mbr(&[
                        ("a", "1MiB", "8300"),
                        ("b", "1MiB", "8300"),
                        ("c", "1MiB", "8300"),
                    ]),
                    &|l| {
                        l.partitions[0].flags = vec![Flag::Logical];
                        l.partitions[1].flags = vec![Flag::Primary];
                        l.partitions[2].flags = vec![Flag::Logical];
                    },
                ),
                GIB,
                "partition 3 (c): flags=\"logical\": logical partitions must be consecutive",
            ),
            (
                with(gpt(&[("a", "1MiB", "8300")]), &|l| {
                    l.partitions[0].flags = vec![Flag::Logical]
                }),
                GIB,
                "partition 1 (a): flags=\"logical\": logical partitions exist only on MBR",
            ),
            (
                with(mbr(&[("a", "1MiB", "8300")]), &|l| {
                    l.partitions[0].flags = vec![Flag::Primary, Flag::Logical]
                }),
                GIB,
                "partition 1 (a): flags=\"primary+logical\": primary and logical exclude each other",
            ),
            (
                with(gpt(&[("a", "1MiB", "8300")]), &|l| {
                    l.partitions[0].uuid = Some("nope".into())
                }),
                GIB,
                "partition 1 (a): uuid=\"nope\": not a GUID",
            ),
            (
                with(mbr(&[("a", "1MiB", "8300")]), &|l| {
                    l.partitions[0].uuid = Some("nope".into())
                }),
                GIB,
                "partition 1 (a): uuid=\"nope\": MBR partitions have no UUID",
            ),
            (
                gpt(&[(
                    "a-name-that-is-far-too-long-for-a-gpt-entry",
                    "1MiB",
                    "8300",
                )]),
                GIB,
                "partition 1 (a-name-that-is-far-too-long-for-a-gpt-entry): name=\"a-name-that-is-far-too-long-for-a-gpt-entry\": longer than the 36 UTF-16 units",
            ),
            (
                with(gpt(&[("a", "1MiB", "8300")]), &|l| {
                    l.align = Some("1000".into())
                }),
                GIB,
                "align=\"1000\": must be a positive multiple of the 512-byte sector",
            ),
            (
                with(gpt(&[("a", "1MiB", "8300")]), &|l| {
                    l.disk_uuid = Some("0x1234".into())
                }),
                GIB,
                "disk_uuid=\"0x1234\": not a GUID",
            ),
            (
                with(mbr(&[("a", "1MiB", "8300")]), &|l| {
                    l.disk_uuid = Some("0x123456789".into())
                }),
                GIB,
                "disk_uuid=\"0x123456789\": an MBR disk identifier is 32 bits of hex",
            ),
            (
                with(gpt(&[("a", "1MiB", "8300")]), &|l| {
                    l.sector_size = Some(1024)
                }),
                GIB,
                "sector_size=\"1024\": must be 512 or 4096",
            ),
            (
                gpt(&[("a", "1MiB", "8300")]),
                16 << 10,
                "disk size=\"16384\": too small for a gpt table",
            ),
            (
                with(mbr(&[("a", "1MiB", "8300"), ("b", "1MiB", "8300")]), &|l| {
                    l.partitions[1].flags = vec![Flag::Logical];
                    l.partitions[1].start = Some("100MiB".into());
                }),
                GIB,
                "partition 2 (b): start=\"100MiB\": logical partitions are placed after their EBR",
            ),
        ];
        let huge = "18446744073709551615";
        let cases = cases.into_iter().chain([
            // Sizes whose sector count times the sector size overflows u64.
            (
                gpt(&[("a", huge, "8300")]),
                GIB,
                "partition 1 (a): size=\"18446744073709551615\": does not fit: 18446744073709551615 bytes from byte 1048576 end past the usable area, which ends at byte 1073724928",
            ),
            (
                mbr(&[("a", huge, "8300")]),
                GIB,
                "partition 1 (a): size=\"18446744073709551615\": does not fit: 18446744073709551615 bytes from byte 1048576 end past the usable area, which ends at byte 1073741824",
            ),
            (
                mbr(&[("a", "1MiB", "8300"), ("b", huge, "8300")]),
                GIB,
                "partition 2 (b): size=\"18446744073709551615\": does not fit: 18446744073709551615 bytes from byte 2097152",
            ),
            (
                with(gpt(&[("a", "1MiB", "8300")]), &|l| {
                    l.partitions[0].start = Some("18446744073709551104".into())
                }),
                GIB,
                "partition 1 (a): size=\"1MiB\": does not fit: 1048576 bytes from byte 18446744073709551104",
            ),
            (
                with(gpt(&[("a", huge, "8300")]), &|l| {
                    l.partitions[0].start = Some("18446744073709551104".into())
                }),
                GIB,
                "partition 1 (a): size=\"18446744073709551615\": does not fit: 18446744073709551615 bytes from byte 18446744073709551104",
            ),
            (
                gpt(&[("a", "99999999PiB", "8300")]),
                GIB,
                "partition 1 (a): size=\"99999999PiB\": too large",
            ),
            (
                gpt(&[("a", "-1G", "8300")]),
                GIB,
                "partition 1 (a): size=\"-1G\": sizes cannot be negative",
            ),
            (
                gpt(&[("a", "0", "8300")]),
                GIB,
                "partition 1 (a): size=\"0\": a partition cannot be 0 bytes",
            ),
            (
                gpt(&[("a", "1gib", "8300")]),
                GIB,
                "partition 1 (a): size=\"1gib\": unknown unit \"gib\"; units are case-sensitive: did you mean GiB?",
            ),
            (
                gpt(&[("a", "12.5%", "8300"), ("b", "87.6%", "8300")]),
                GIB,
                "partition 2 (b): size=\"87.6%\": percentages add up to 100.1% (more than 100%)",
            ),
            // Control characters in names: refused, the value and the partition escaped.
            (
                gpt(&[("a\nb", "1MiB", "8300")]),
                GIB,
                "partition 1 (a\\nb): name=\"a\\nb\": contains the control character U+000A",
            ),
            (
                gpt(&[("tab\there", "1MiB", "8300")]),
                GIB,
                "partition 1 (tab\\there): name=\"tab\\there\": contains the control character U+0009",
            ),
            (
                gpt(&[("del\u{7f}", "1MiB", "8300")]),
                GIB,
                "partition 1 (del\\u{7f}): name=\"del\\u{7f}\": contains the control character U+007F",
            ),
        ]);
        for (l, size, want) in cases {
            let err = plan(&l, size).expect_err(want).to_string();
            assert!(err.starts_with(want), "\n got: {err}\nwant: {want}");
        }
        // Unnamed partitions are named by position only.
        let mut l = Layout::new(Label::Gpt);
        l.partitions.push(PartSpec {
            size: "x".into(),
            ..Default::default()
        });
        assert!(
            plan(&l, GIB)
                .expect_err("bad")
                .to_string()
                .starts_with("partition 1: size=\"x\"")
        );
    }

    /// Duplicate GPT names are allowed but warned about; unique names and MBR names are not.
    #[test]
    fn duplicate_gpt_names_warn() {
        let l = layout(
            Label::Gpt,
            &[
                ("root", "1MiB", "8300"),
                ("data", "1MiB", "8300"),
                ("root", "1MiB", "8300"),
                ("root", "1MiB", "8300"),
                ("", "1MiB", "8300"),
                ("", "1MiB", "8300"),
            ],
        );
        let p = plan(&l, GIB).expect("duplicates are allowed");
        assert_eq!(
            p.warnings,
            [Warning::DuplicateName {
                name: "root".into(),
                numbers: vec![1, 3, 4]
            }]
        );
        assert_eq!(
            p.warnings[0].to_string(),
            "partitions 1, 3, 4 share the name \"root\": PARTLABEL=\"root\" finds only one of them"
        );
        // Adding a partition with an existing name warns too.
        let added = plan_add(&p.table, &[PartSpec::new("data", "1MiB")], None).expect("add");
        assert_eq!(added.warnings.len(), 2, "{:?}", added.warnings);
        let unique = layout(Label::Gpt, &[("a", "1MiB", "8300"), ("b", "1MiB", "8300")]);
        assert!(plan(&unique, GIB).expect("plan").warnings.is_empty());
        let mbr = layout(Label::Mbr, &[("a", "1MiB", "8300"), ("a", "1MiB", "8300")]);
        assert!(plan(&mbr, GIB).expect("plan").warnings.is_empty());
    }

    /// The one size grammar: bare letters are decimal, `KiB`… binary.
    #[test]
    fn bare_unit_letters_are_decimal() {
        let l = layout(
            Label::Gpt,
            &[
                ("g", "1G", "8300"),
                ("gib", "1GiB", "8300"),
                ("m", "1.5M", "8300"),
            ],
        );
        let t = plan(&l, 4 * GIB).expect("plan").table;
        let sizes: Vec<u64> = t.partitions.iter().map(|p| p.size_bytes).collect();
        // 10^9 and 1.5 * 10^6 bytes, rounded up to whole 512-byte sectors.
        assert_eq!(
            sizes,
            [1_000_000_000u64.next_multiple_of(512), GIB, 1_500_160]
        );
    }
}
