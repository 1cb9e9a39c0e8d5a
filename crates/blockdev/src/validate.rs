//! Graph checks on a [`Config`]: unique names, mount points and labels; every `base` names a
//! node of a kind that can carry it; no device used twice; no cycles; MBR primaries; types
//! that exist on the table's label. Every problem is collected, none stops the others.

use std::collections::BTreeMap;

use diskforge_part::Label;

use crate::config::{Config, suggest};
use crate::problem::Problem;

/// What a node name refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Image,
    Partition,
    Pv,
    Vg,
    Lv,
    Lvm,
    Mkfs,
    Mount,
    Fstab,
}

impl Kind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::Image => "local_loop",
            Kind::Partition => "partition",
            Kind::Pv => "pv",
            Kind::Vg => "vg",
            Kind::Lv => "lv",
            Kind::Lvm => "lvm",
            Kind::Mkfs => "mkfs",
            Kind::Mount => "mount",
            Kind::Fstab => "fstab",
        }
    }
}

/// Every node by name: its kind, line, and the names it depends on.
pub(crate) struct Index {
    pub nodes: BTreeMap<String, (Kind, usize)>,
}

impl Index {
    pub(crate) fn kind(&self, name: &str) -> Option<Kind> {
        self.nodes.get(name).map(|(k, _)| *k)
    }
}

/// Check `cfg`, pushing every problem; returns the node index for planning.
pub(crate) fn validate(cfg: &Config, probs: &mut Vec<Problem>) -> Index {
    let mut nodes: BTreeMap<String, (Kind, usize)> = BTreeMap::new();
    let mut add = |name: &str, kind: Kind, line: usize, probs: &mut Vec<Problem>| {
        if let Some((k0, l0)) = nodes.get(name) {
            probs.push(
                Problem::at(
                    line,
                    format!("duplicate name: {} at line {l0} has it too", k0.as_str()),
                )
                .node(kind.as_str(), name)
                .field("name", name),
            );
        } else {
            nodes.insert(name.to_owned(), (kind, line));
        }
    };
    for i in &cfg.images {
        add(&i.name, Kind::Image, i.line, probs);
    }
    for t in &cfg.tables {
        for p in &t.partitions {
            add(&p.name, Kind::Partition, p.line, probs);
        }
    }
    for l in &cfg.lvms {
        add(&l.name, Kind::Lvm, l.line, probs);
        for x in &l.pvs {
            add(&x.name, Kind::Pv, x.line, probs);
        }
        for x in &l.vgs {
            add(&x.name, Kind::Vg, x.line, probs);
        }
        for x in &l.lvs {
            add(&x.name, Kind::Lv, x.line, probs);
        }
    }
    for m in &cfg.filesystems {
        add(&m.name, Kind::Mkfs, m.line, probs);
    }
    for m in &cfg.mounts {
        add(&m.name, Kind::Mount, m.line, probs);
    }
    for m in &cfg.fstabs {
        add(&m.name, Kind::Fstab, m.line, probs);
    }
    let idx = Index { nodes };

    // Every base names a node of a kind that can carry this one.
    let names: Vec<&str> = idx.nodes.keys().map(String::as_str).collect();
    let check = |kind: &str,
                 name: &str,
                 line: usize,
                 base: &str,
                 allowed: &[Kind],
                 what: &str,
                 probs: &mut Vec<Problem>|
     -> bool {
        match idx.kind(base) {
            // A missing base was reported where it was read.
            None if base.is_empty() => false,
            None => {
                let hint = if base.is_empty() {
                    String::new()
                } else {
                    suggest(base, &names)
                };
                probs.push(
                    Problem::at(line, format!("no node is called {base:?}{hint}"))
                        .node(kind, name)
                        .field("base", base),
                );
                false
            }
            Some(k) if !allowed.contains(&k) => {
                probs.push(
                    Problem::at(
                        line,
                        format!("names a {} node; a {kind} is made on {what}", k.as_str()),
                    )
                    .node(kind, name)
                    .field("base", base),
                );
                false
            }
            Some(_) => true,
        }
    };
    // Who uses each block device (one table, PV or filesystem each).
    let mut users: BTreeMap<String, (String, usize)> = BTreeMap::new();
    let mut claim =
        |dev: &str, who: String, line: usize, kind: &str, name: &str, probs: &mut Vec<Problem>| {
            if let Some((other, l0)) = users.get(dev) {
                probs.push(
                    Problem::at(
                        line,
                        format!("{dev:?} is already used by {other} (line {l0})"),
                    )
                    .node(kind, name)
                    .field("base", dev),
                );
            } else {
                users.insert(dev.to_owned(), (who, line));
            }
        };
    for t in &cfg.tables {
        if check(
            "partitioning",
            &t.name,
            t.line,
            &t.base,
            &[Kind::Image, Kind::Lv],
            "a local_loop image or a logical volume",
            probs,
        ) {
            claim(
                &t.base,
                format!("partitioning {:?}", t.name),
                t.line,
                "partitioning",
                &t.name,
                probs,
            );
        }
        check_table(t, probs);
    }
    for l in &cfg.lvms {
        for pv in &l.pvs {
            if check(
                "pv",
                &pv.name,
                pv.line,
                &pv.base,
                &[Kind::Partition, Kind::Image],
                "a partition or a local_loop image",
                probs,
            ) {
                claim(
                    &pv.base,
                    format!("pv {:?}", pv.name),
                    pv.line,
                    "pv",
                    &pv.name,
                    probs,
                );
            }
        }
        for vg in &l.vgs {
            for b in &vg.base {
                if check(
                    "vg",
                    &vg.name,
                    vg.line,
                    b,
                    &[Kind::Pv],
                    "physical volumes",
                    probs,
                ) {
                    claim(
                        b,
                        format!("vg {:?}", vg.name),
                        vg.line,
                        "vg",
                        &vg.name,
                        probs,
                    );
                }
            }
        }
        for lv in &l.lvs {
            check(
                "lv",
                &lv.name,
                lv.line,
                &lv.base,
                &[Kind::Vg],
                "a volume group",
                probs,
            );
            if let Some(pool) = &lv.thin_pool {
                let ok = l.lvs.iter().any(|p| {
                    &p.name == pool
                        && p.lv_type.as_deref() == Some("thin-pool")
                        && p.base == lv.base
                });
                if !ok {
                    probs.push(
                        Problem::at(
                            lv.line,
                            format!("no thin-pool LV {pool:?} in volume group {:?}", lv.base),
                        )
                        .node("lv", &lv.name)
                        .field("thin-pool", pool),
                    );
                }
            }
        }
    }
    for m in &cfg.filesystems {
        if check(
            "mkfs",
            &m.name,
            m.line,
            &m.base,
            &[Kind::Partition, Kind::Image, Kind::Lv],
            "a partition, a local_loop image or a logical volume",
            probs,
        ) {
            claim(
                &m.base,
                format!("mkfs {:?}", m.name),
                m.line,
                "mkfs",
                &m.name,
                probs,
            );
        }
    }
    let mut mounted: BTreeMap<&str, usize> = BTreeMap::new();
    let mut points: BTreeMap<&str, (&str, usize)> = BTreeMap::new();
    for m in &cfg.mounts {
        if check(
            "mount",
            &m.name,
            m.line,
            &m.base,
            &[Kind::Mkfs],
            "a filesystem (mkfs)",
            probs,
        ) {
            if let Some(l0) = mounted.insert(&m.base, m.line) {
                probs.push(
                    Problem::at(
                        m.line,
                        format!(
                            "filesystem {:?} is already mounted by the mount at line {l0}",
                            m.base
                        ),
                    )
                    .node("mount", &m.name)
                    .field("base", &m.base),
                );
            }
            let swap = cfg
                .filesystems
                .iter()
                .any(|f| f.name == m.base && f.fs_type == diskforge_mkfs::FsType::Swap);
            if swap && m.mount_point != "none" {
                probs.push(
                    Problem::at(m.line, "swap is not mounted: use mount_point: none")
                        .node("mount", &m.name)
                        .field("mount_point", &m.mount_point),
                );
            } else if !swap && m.mount_point == "none" {
                probs.push(
                    Problem::at(m.line, "only swap takes mount_point none")
                        .node("mount", &m.name)
                        .field("mount_point", &m.mount_point),
                );
            }
        }
        if m.mount_point != "none"
            && let Some((other, l0)) = points.insert(&m.mount_point, (&m.name, m.line))
        {
            {
                probs.push(
                    Problem::at(
                        m.line,
                        format!("mount point used twice: mount {other:?} at line {l0} has it too"),
                    )
                    .node("mount", &m.name)
                    .field("mount_point", &m.mount_point),
                );
            }
        }
    }
    let mut entries: BTreeMap<&str, usize> = BTreeMap::new();
    for f in &cfg.fstabs {
        if check(
            "fstab",
            &f.name,
            f.line,
            &f.base,
            &[Kind::Mount],
            "a mount",
            probs,
        ) && let Some(l0) = entries.insert(&f.base, f.line)
        {
            probs.push(
                Problem::at(
                    f.line,
                    format!(
                        "mount {:?} already has the fstab entry at line {l0}",
                        f.base
                    ),
                )
                .node("fstab", &f.name)
                .field("base", &f.base),
            );
        }
    }
    // Labels are unique (dib: they are how fstab finds filesystems).
    let mut labels: BTreeMap<&str, (&str, usize)> = BTreeMap::new();
    for m in &cfg.filesystems {
        if m.fs_type.max_label().is_none() {
            continue;
        }
        if let Some((other, l0)) = labels.insert(&m.label, (&m.name, m.line)) {
            probs.push(
                Problem::at(
                    m.line,
                    format!("label used twice: mkfs {other:?} at line {l0} has it too"),
                )
                .node("mkfs", &m.name)
                .field("label", &m.label),
            );
        }
    }
    check_cycles(cfg, &idx, probs);
    idx
}

fn check_table(t: &crate::config::Table, probs: &mut Vec<Problem>) {
    let mut seen_logical = false;
    let mut primaries = 0;
    for p in &t.partitions {
        if let Some(ty) = &p.type_code
            && let Err(why) = diskforge_part::resolve_type(&normal_type(ty, t.label), t.label)
        {
            probs.push(
                Problem::at(p.line, why)
                    .node("partition", &p.name)
                    .field("type", ty),
            );
        }
        match t.label {
            Label::Gpt => {
                if p.primary {
                    probs.push(
                        Problem::at(
                            p.line,
                            "primary is an MBR flag; every GPT partition is primary",
                        )
                        .node("partition", &p.name)
                        .field("flags", "primary"),
                    );
                }
            }
            Label::Mbr => {
                if p.primary {
                    primaries += 1;
                    if seen_logical {
                        probs.push(Problem::at(p.line, "primary partitions must come before the logical ones (a partition without `primary` is logical on MBR)").node("partition", &p.name).field("flags", "primary"));
                    } else if primaries == 5 {
                        probs.push(Problem::at(p.line, "more than 4 primary partitions: an MBR holds 4 (3 when there are logical ones); drop `primary` to make the rest logical").node("partition", &p.name).field("flags", "primary"));
                    }
                } else {
                    if !seen_logical && primaries == 4 {
                        probs.push(Problem::at(p.line, "4 primary partitions leave no MBR slot for the extended partition that logical ones need; make one fewer primary").node("partition", &p.name).field("flags", ""));
                    }
                    seen_logical = true;
                }
            }
        }
    }
}

/// The type as diskforge-part reads it: dib reads MBR types as hex (`83` is 0x83).
pub(crate) fn normal_type(t: &str, label: Label) -> String {
    let t = t.trim();
    if label == Label::Mbr
        && t.len() <= 2
        && !t.is_empty()
        && t.bytes().all(|b| b.is_ascii_hexdigit())
    {
        format!("0x{t}")
    } else {
        t.to_owned()
    }
}

/// Dependency cycles (possible when a partition table sits on a logical volume).
fn check_cycles(cfg: &Config, idx: &Index, probs: &mut Vec<Problem>) {
    let mut deps: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for t in &cfg.tables {
        for p in &t.partitions {
            deps.entry(&p.name).or_default().push(&t.base);
        }
    }
    for l in &cfg.lvms {
        for pv in &l.pvs {
            deps.entry(&pv.name).or_default().push(&pv.base);
        }
        for vg in &l.vgs {
            deps.entry(&vg.name)
                .or_default()
                .extend(vg.base.iter().map(String::as_str));
        }
        for lv in &l.lvs {
            deps.entry(&lv.name).or_default().push(&lv.base);
        }
    }
    for m in &cfg.filesystems {
        deps.entry(&m.name).or_default().push(&m.base);
    }
    // Iterative DFS: 0 new, 1 on the stack, 2 done.
    let mut state: BTreeMap<&str, u8> = BTreeMap::new();
    let mut reported = false;
    for start in deps.keys().copied() {
        if state.get(start).copied().unwrap_or(0) != 0 || reported {
            continue;
        }
        let mut stack: Vec<(&str, usize)> = vec![(start, 0)];
        state.insert(start, 1);
        while let Some((node, i)) = stack.pop() {
            let next = deps.get(node).and_then(|d| d.get(i)).copied();
            match next {
                None => {
                    state.insert(node, 2);
                }
                Some(n) => {
                    stack.push((node, i + 1));
                    match state.get(n).copied().unwrap_or(0) {
                        0 => {
                            state.insert(n, 1);
                            stack.push((n, 0));
                        }
                        1 => {
                            let pos = stack.iter().position(|(s, _)| *s == n).unwrap_or(0);
                            let mut cycle: Vec<&str> =
                                stack[pos..].iter().map(|(s, _)| *s).collect();
                            cycle.push(n);
                            let (kind, line) =
                                idx.nodes.get(n).copied().unwrap_or((Kind::Image, 0));
                            probs.push(
                                Problem::at(
                                    line,
                                    format!(
                                        "dependency cycle: {}",
                                        cycle
                                            .iter()
                                            .map(|c| format!("{c:?}"))
                                            .collect::<Vec<_>>()
                                            .join(" -> ")
                                    ),
                                )
                                .node(kind.as_str(), n)
                                .key("base"),
                            );
                            reported = true;
                            break;
                        }
                        _ => {}
                    }
                }
            }
        }
    }
}
