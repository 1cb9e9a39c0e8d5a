//! Property tests of the YAML normaliser and the partition-layout solver:
//!
//! - reading any text (parse → normalise → validate) never panics;
//! - a generated layout written in dib's tree spelling and in its graph spelling (nodes in any
//!   order) normalises to the same [`Config`], and the normalised config written back out in
//!   the graph spelling normalises to itself again (normalising twice is stable);
//! - the solver either refuses a layout or places every partition inside its disk (after the
//!   table's own sectors and before GPT's backup), aligned, without overlaps — never panics.

use std::fmt::Write as _;

use diskforge_blockdev::{Config, Plan, PlanOptions, load, plan, plan_text};
use proptest::prelude::*;

const SECTOR: u64 = 512;

/// A generated partition: size text, flags, and an optional filesystem with mount point.
#[derive(Debug, Clone)]
struct GenPart {
    size: String,
    primary: bool,
    boot: bool,
    fs: Option<(&'static str, Option<&'static str>)>,
}

/// A generated image with an optional table.
#[derive(Debug, Clone)]
struct GenImage {
    size: String,
    table: Option<(&'static str, Vec<GenPart>)>,
}

fn size_text() -> impl Strategy<Value = String> {
    prop_oneof![
        (1u64..200).prop_map(|n| format!("{n}MiB")),
        (1u64..50_000).prop_map(|n| format!("{n}KiB")),
        (1u64..300).prop_map(|n| format!("{n}M")),
        (1u32..=100).prop_map(|n| format!("{n}%")),
        (1u32..1000).prop_map(|n| format!("{}.{}%", n / 10, n % 10)),
        (1u64..(1 << 30)).prop_map(|n| n.to_string()),
    ]
}

fn part() -> impl Strategy<Value = GenPart> {
    let fs = prop_oneof![
        Just(None),
        Just(Some(("ext4", None))),
        Just(Some(("ext4", Some("/srv")))),
        Just(Some(("xfs", Some("/var")))),
        Just(Some(("vfat", Some("/boot/efi")))),
        Just(Some(("swap", None))),
    ];
    (size_text(), any::<bool>(), any::<bool>(), fs).prop_map(|(size, primary, boot, fs)| GenPart {
        size,
        primary,
        boot,
        fs,
    })
}

fn image() -> impl Strategy<Value = GenImage> {
    let table = prop_oneof![
        Just(None),
        (
            prop_oneof![Just("mbr"), Just("gpt")],
            prop::collection::vec(part(), 1..7)
        )
            .prop_map(Some),
    ];
    (
        prop_oneof![
            (8u64..2048).prop_map(|n| format!("{n}MiB")),
            (1u64..4).prop_map(|n| format!("{n}GiB"))
        ],
        table,
    )
        .prop_map(|(size, table)| GenImage { size, table })
}

/// A partition's list entry (name, size, MBR flags), the same in both spellings.
fn partition_entry(s: &mut String, i: usize, j: usize, p: &GenPart, label: &str) {
    let _ = writeln!(s, "      - name: i{i}p{j}\n        size: '{}'", p.size);
    let mut flags = Vec::new();
    if p.primary {
        flags.push("primary");
    }
    if p.boot {
        flags.push("boot");
    }
    if !flags.is_empty() && label == "mbr" {
        let _ = writeln!(s, "        flags: [{}]", flags.join(", "));
    }
}

/// The layout in dib's tree spelling (filesystems nested in their partitions).
fn tree(images: &[GenImage]) -> String {
    let mut s = String::new();
    for (i, img) in images.iter().enumerate() {
        let _ = writeln!(
            s,
            "- local_loop:\n    name: image{i}\n    size: {}",
            img.size
        );
        if let Some((label, parts)) = &img.table {
            let _ = writeln!(
                s,
                "- partitioning:\n    base: image{i}\n    label: {label}\n    partitions:"
            );
            for (j, p) in parts.iter().enumerate() {
                partition_entry(&mut s, i, j, p, label);
                if let Some((t, mp)) = p.fs {
                    let _ = writeln!(
                        s,
                        "        mkfs:\n          name: fs_i{i}p{j}\n          type: {t}"
                    );
                    if let Some(mp) = mp {
                        let _ = writeln!(s, "          mount:\n            mount_point: {mp}");
                    }
                }
            }
        }
    }
    s
}

/// The same layout in the graph spelling (every node at the top, `base` links), nodes in the
/// order `perm` gives.
fn graph(images: &[GenImage], perm: &[usize]) -> String {
    let mut nodes = Vec::new();
    for (i, img) in images.iter().enumerate() {
        nodes.push(format!(
            "- local_loop:\n    name: image{i}\n    size: {}\n",
            img.size
        ));
        if let Some((label, parts)) = &img.table {
            let mut t = format!(
                "- partitioning:\n    base: image{i}\n    label: {label}\n    partitions:\n"
            );
            for (j, p) in parts.iter().enumerate() {
                partition_entry(&mut t, i, j, p, label);
                if let Some((ty, mp)) = p.fs {
                    nodes.push(format!(
                        "- mkfs:\n    name: fs_i{i}p{j}\n    base: i{i}p{j}\n    type: {ty}\n"
                    ));
                    if let Some(mp) = mp {
                        nodes.push(format!(
                            "- mount:\n    name: mount_fs_i{i}p{j}\n    base: fs_i{i}p{j}\n    mount_point: {mp}\n"
                        ));
                    }
                }
            }
            nodes.push(t);
        }
    }
    let mut out = String::new();
    for k in 0..nodes.len() {
        let idx = perm.get(k).copied().unwrap_or(k) % nodes.len();
        out.push_str(&nodes[idx]);
        nodes[idx].clear();
    }
    // Whatever the permutation skipped (collisions), in order.
    for n in nodes {
        out.push_str(&n);
    }
    out
}

fn q(s: &str) -> String {
    format!("{s:?}")
}

/// A normalised config written back out in the graph spelling, every field explicit.
fn render(cfg: &Config) -> String {
    let mut s = String::new();
    for i in &cfg.images {
        let _ = writeln!(s, "- local_loop:\n    name: {}", q(&i.name));
        if let Some(sz) = i.size {
            let _ = writeln!(s, "    size: {}", sz.bytes());
        }
        if let Some(d) = &i.directory {
            let _ = writeln!(s, "    directory: {}", q(d));
        }
        if let Some(b) = i.block_size {
            let _ = writeln!(s, "    block_size: {b}");
        }
    }
    for t in &cfg.tables {
        let label = format!("{:?}", t.label).to_lowercase();
        let _ = writeln!(
            s,
            "- partitioning:\n    name: {}\n    base: {}\n    label: {label}",
            q(&t.name),
            q(&t.base)
        );
        if let Some(a) = t.align {
            let _ = writeln!(s, "    align: {a}");
        }
        let _ = writeln!(s, "    partitions:");
        for p in &t.partitions {
            let _ = writeln!(
                s,
                "      - name: {}\n        size: {}",
                q(&p.name),
                q(&p.size_text)
            );
            if let Some(ty) = &p.type_code {
                let _ = writeln!(s, "        type: {}", q(ty));
            }
            let mut flags = Vec::new();
            if p.primary {
                flags.push("primary");
            }
            if p.boot {
                flags.push("boot");
            }
            if !flags.is_empty() {
                let _ = writeln!(s, "        flags: [{}]", flags.join(", "));
            }
        }
    }
    for f in &cfg.filesystems {
        let _ = writeln!(
            s,
            "- mkfs:\n    name: {}\n    base: {}\n    type: {}\n    label: {}",
            q(&f.name),
            q(&f.base),
            f.fs_type,
            q(&f.label)
        );
        if !f.opts.is_empty() {
            let _ = writeln!(s, "    opts: {}", q(&f.opts.join(" ")));
        }
        if let Some(u) = &f.uuid {
            let _ = writeln!(s, "    uuid: {}", q(u));
        }
    }
    for m in &cfg.mounts {
        let _ = writeln!(
            s,
            "- mount:\n    name: {}\n    base: {}\n    mount_point: {}",
            q(&m.name),
            q(&m.base),
            q(&m.mount_point)
        );
    }
    for f in &cfg.fstabs {
        let _ = writeln!(
            s,
            "- fstab:\n    name: {}\n    base: {}\n    options: {}\n    dump-freq: {}\n    fsck-passno: {}",
            q(&f.name),
            q(&f.base),
            q(&f.options),
            f.dump_freq,
            f.fsck_passno
        );
    }
    s
}

/// The config without YAML lines (which differ between spellings), for comparison.
fn value(cfg: &Config) -> serde_json::Value {
    serde_json::to_value(cfg).expect("a config serialises")
}

fn opts() -> PlanOptions {
    PlanOptions {
        image_size: Some(1 << 30),
        image_dir: "/images".into(),
        ..Default::default()
    }
}

/// Every partition inside its disk (after the table's sectors, before GPT's backup entries),
/// aligned, and no two overlapping.
fn check_layout(plan: &Plan) -> Result<(), TestCaseError> {
    for d in &plan.disks {
        let Some(t) = &d.table else { continue };
        let gpt = format!("{:?}", t.label).to_lowercase() == "gpt";
        let first = if gpt { 34 * SECTOR } else { SECTOR };
        let end = if gpt { d.size - 33 * SECTOR } else { d.size };
        let mut spans: Vec<(u64, u64, &str)> = Vec::new();
        for p in &t.partitions {
            prop_assert!(p.size > 0, "{}: empty partition {}", d.name, p.name);
            prop_assert!(
                p.start >= first,
                "{}: {} starts in the table",
                d.name,
                p.name
            );
            prop_assert!(
                p.start.checked_add(p.size).is_some_and(|e| e <= end),
                "{}: {} ends past the disk ({} + {} > {end})",
                d.name,
                p.name,
                p.start,
                p.size
            );
            prop_assert_eq!(p.start % t.align, 0, "{}: {} not aligned", &d.name, &p.name);
            spans.push((p.start, p.start + p.size, &p.name));
        }
        spans.sort();
        for w in spans.windows(2) {
            prop_assert!(
                w[0].1 <= w[1].0,
                "{}: {} and {} overlap",
                d.name,
                w[0].2,
                w[1].2
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn reading_any_text_never_panics(s in "\\PC{0,400}") {
        let _ = load(&s, &opts());
        let _ = plan_text(&s, &opts());
    }

    #[test]
    fn reading_yaml_shaped_text_never_panics(
        parts in prop::collection::vec(prop_oneof![
            Just("- ".to_owned()), Just("\n".to_owned()), Just("    ".to_owned()),
            Just(": ".to_owned()), Just("&a ".to_owned()), Just("*a".to_owned()),
            Just("[".to_owned()), Just("]".to_owned()), Just("{".to_owned()), Just("}".to_owned()),
            Just("local_loop".to_owned()), Just("partitioning".to_owned()), Just("mkfs".to_owned()),
            Just("mount".to_owned()), Just("lvm".to_owned()), Just("name".to_owned()),
            Just("base".to_owned()), Just("size".to_owned()), Just("partitions".to_owned()),
            Just("label: gpt".to_owned()), Just("type: ext4".to_owned()), Just("100%".to_owned()),
            Just("-1G".to_owned()), Just("10 GiBB".to_owned()), Just("1e30".to_owned()),
            Just("mount_point: /".to_owned()), Just("..".to_owned()), Just("\u{202e}".to_owned()),
            "[a-z0-9/]{1,8}",
        ], 0..80)
    ) {
        let s = parts.concat();
        if let Ok(cfg) = load(&s, &opts()) {
            let _ = plan(&cfg, &opts());
        }
        let _ = plan_text(&s, &opts());
    }

    #[test]
    fn spellings_normalise_alike_and_twice_is_stable(
        images in prop::collection::vec(image(), 1..3),
        perm in prop::collection::vec(0usize..64, 0..64),
    ) {
        let t = load(&tree(&images), &opts());
        let g = load(&graph(&images, &perm), &opts());
        match (&t, &g) {
            (Ok(t), Ok(g)) => {
                prop_assert_eq!(value(t), value(g));
                let again = load(&render(t), &opts())
                    .map_err(|e| TestCaseError::fail(format!("re-reading {}: {e}", render(t))))?;
                prop_assert_eq!(value(&again), value(t));
            }
            (Err(_), Err(_)) => {}
            (t, g) => prop_assert!(false, "tree {:?} but graph {:?}", t.is_ok(), g.is_ok()),
        }
    }

    #[test]
    fn the_solver_places_partitions_inside_aligned_and_apart_or_refuses(
        images in prop::collection::vec(image(), 1..3),
    ) {
        if let Ok(p) = plan_text(&tree(&images), &opts()) {
            check_layout(&p)?;
        }
    }
}
