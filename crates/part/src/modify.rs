//! Changes to an existing table: delete partitions, change a partition's name, type, UUID or
//! flags. Each returns a [`Plan`] for [`crate::apply`]; adding partitions is
//! [`crate::plan_add`].

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::layout::{Flag, Label};
use crate::plan::{
    ATTR_LEGACY_BOOT, ATTR_REQUIRED, Plan, check_name, compact_gpt_numbers, mbr_partuuid,
};
use crate::types::resolve;
use crate::{Error, PartKind, PartRef, Result, Table};

/// What to change in one partition; `None` keeps the current value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartChange {
    /// New GPT name (MBR stores none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// New type, as in [`crate::PartSpec::type_code`].
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub type_code: Option<String>,
    /// New GPT partition GUID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// New flags (replacing `boot`/`legacy_boot`/`required`; other GPT attribute bits stay).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flags: Option<Vec<Flag>>,
}

fn find(t: &Table, number: u32) -> Result<usize> {
    t.partitions
        .iter()
        .position(|p| p.number == number)
        .ok_or(Error::NoSuchPartition { number })
}

/// Plan removing partitions `numbers` from `existing`.
///
/// GPT: the others are renumbered 1, 2, … in order (the `gpt` crate writes the entry array
/// compactly). MBR: primaries keep their slots; logical partitions after a removed one move
/// down a number (the kernel numbers them along the EBR chain), and the extended partition
/// goes when its last logical partition does.
pub fn plan_delete(existing: &Table, numbers: &[u32]) -> Result<Plan> {
    let mut t = existing.clone();
    for n in numbers {
        let i = find(&t, *n)?;
        t.partitions.remove(i);
    }
    match t.label {
        Label::Gpt => compact_gpt_numbers(&mut t),
        Label::Mbr => {
            for (p, n) in t
                .partitions
                .iter_mut()
                .filter(|p| p.kind == PartKind::Logical)
                .zip(5..)
            {
                p.number = n;
            }
            // The extended partition now runs from the first remaining EBR (the chain must
            // start at its first sector) to the last remaining logical partition.
            let logical: Vec<_> = t
                .partitions
                .iter()
                .filter(|p| p.kind == PartKind::Logical)
                .map(|p| (p.ebr_lba.unwrap_or(p.start_lba - 1), p.end_lba))
                .collect();
            match (logical.first(), logical.last(), t.extended.as_mut()) {
                (Some((start, _)), Some((_, end)), Some(ext)) => {
                    ext.start_lba = *start;
                    ext.size_lba = end + 1 - start;
                }
                _ => t.extended = None,
            }
            if let Some(sig) = t.disk_uuid.clone() {
                for p in &mut t.partitions {
                    p.uuid = Some(mbr_partuuid(&sig, p.number));
                }
            }
        }
    }
    Ok(Plan::new(t))
}

/// Plan changing partition `number` of `existing` as `change` says. Errors name the partition
/// and the field, as [`crate::plan`]'s do.
pub fn plan_set(existing: &Table, number: u32, change: &PartChange) -> Result<Plan> {
    let mut t = existing.clone();
    let label = t.label;
    let i = find(&t, number)?;
    let p = &mut t.partitions[i];
    let part = PartRef {
        index: i + 1,
        name: p.name.clone(),
    };
    let invalid = |field: &'static str, value: &str, reason: String| Error::InvalidField {
        part: part.clone(),
        field,
        value: value.to_owned(),
        reason,
    };
    if let Some(n) = &change.name {
        if label == Label::Mbr {
            return Err(invalid("name", n, "MBR partitions have no names".into()));
        }
        check_name(label, n).map_err(|reason| invalid("name", n, reason))?;
        p.name = (!n.is_empty()).then(|| n.clone());
    }
    if let Some(ty) = &change.type_code {
        p.part_type = resolve(ty, label).map_err(|reason| Error::UnknownType {
            part: part.clone(),
            value: ty.clone(),
            reason,
        })?;
    }
    if let Some(u) = &change.uuid {
        if label == Label::Mbr {
            return Err(invalid("uuid", u, "MBR partitions have no UUID".into()));
        }
        let g = Uuid::parse_str(u.trim())
            .map_err(|e| invalid("uuid", u, format!("not a GUID: {e}")))?;
        p.uuid = Some(g.hyphenated().to_string());
    }
    if let Some(flags) = &change.flags {
        let text = flags
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("+");
        let has = |f: Flag| flags.contains(&f);
        if has(Flag::Primary) || has(Flag::Logical) {
            return Err(invalid(
                "flags",
                &text,
                "primary/logical cannot be changed in place".into(),
            ));
        }
        let boot = has(Flag::Boot) || has(Flag::LegacyBoot);
        match label {
            Label::Gpt => {
                p.attributes &= !(ATTR_REQUIRED | ATTR_LEGACY_BOOT);
                p.flags.clear();
                if has(Flag::Required) {
                    p.attributes |= ATTR_REQUIRED;
                    p.flags.push(Flag::Required);
                }
                if boot {
                    p.attributes |= ATTR_LEGACY_BOOT;
                    p.flags.push(Flag::LegacyBoot);
                }
            }
            Label::Mbr => {
                if has(Flag::Required) {
                    return Err(invalid(
                        "flags",
                        &text,
                        "required is a GPT attribute".into(),
                    ));
                }
                p.flags = if boot { vec![Flag::Boot] } else { Vec::new() };
            }
        }
    }
    Ok(Plan::new(t))
}
