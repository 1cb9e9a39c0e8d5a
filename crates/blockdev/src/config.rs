//! Reading a block-device config: both of dib's spellings (a list of single-key nodes that
//! name their `base`, and the tree where children sit under their parent) become one
//! [`Config`] of typed nodes, as dib's `config_tree_to_graph` does: a nested node without
//! `base` takes its parent's name, one without `name` is called `TYPE_BASE`, and the
//! partitions of a `partitioning` take its `base`.
//!
//! Field problems (unknown keys, wrong shapes, sizes that do not parse, unsafe names) are
//! collected here, each with its line; graph problems are checked in `validate`.

use serde::{Deserialize, Serialize};

use crate::problem::{Problem, is_invisible_format};
use crate::size::{self, Size, SizeSpec};
use crate::yaml::{YKind, YNode};

/// Node types dib knows (its plugin names).
pub const NODE_TYPES: &[&str] = &[
    "local_loop",
    "partitioning",
    "lvm",
    "mkfs",
    "mount",
    "fstab",
];

/// A block device image file (`local_loop`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// Node name; the file is `DIRECTORY/NAME.raw`.
    pub name: String,
    /// Size; default: the `--image-size` given to the planner.
    pub size: Option<Size>,
    /// Directory; default: the image directory given to the planner.
    pub directory: Option<String>,
    /// Logical sector size, 512 (default) or 4096.
    pub block_size: Option<u32>,
    /// YAML line.
    #[serde(skip)]
    pub line: usize,
}

/// A partition table (`partitioning`); not a node itself, its partitions are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Table {
    /// Its name (default `partitioning_BASE`); only used in messages.
    pub name: String,
    /// The image it goes on.
    pub base: String,
    /// `mbr` or `gpt`.
    pub label: diskforge_part::Label,
    /// Partition alignment in bytes; default 1 MiB.
    pub align: Option<u64>,
    /// Its partitions, in order.
    pub partitions: Vec<Partition>,
    /// YAML line.
    #[serde(skip)]
    pub line: usize,
}

/// One partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partition {
    /// Node name (also the GPT partition name).
    pub name: String,
    /// Size: bytes, or a percentage of the space still free when it is placed.
    pub size: SizeSpec,
    /// Type as written (`8300`, `EF00`, `0x83`…); default 8300 / 0x83.
    pub type_code: Option<String>,
    /// `boot` flag (MBR active flag).
    pub boot: bool,
    /// `primary` flag (MBR; without it an MBR partition is logical, as in dib).
    pub primary: bool,
    /// YAML line.
    #[serde(skip)]
    pub line: usize,
    /// YAML line of the size, for later messages.
    #[serde(skip)]
    pub size_line: usize,
    /// The size as written.
    pub size_text: String,
}

/// An LVM stanza (`lvm`): physical volumes, volume groups, logical volumes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lvm {
    /// Node name.
    pub name: String,
    /// Physical volumes.
    pub pvs: Vec<Pv>,
    /// Volume groups.
    pub vgs: Vec<Vg>,
    /// Logical volumes.
    pub lvs: Vec<Lv>,
    /// YAML line.
    #[serde(skip)]
    pub line: usize,
}

/// A physical volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pv {
    /// Node name.
    pub name: String,
    /// The partition or image it is made on.
    pub base: String,
    /// Extra `pvcreate` arguments.
    pub options: Vec<String>,
    /// YAML line.
    #[serde(skip)]
    pub line: usize,
}

/// A volume group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vg {
    /// Node name (the VG name).
    pub name: String,
    /// Its physical volumes.
    pub base: Vec<String>,
    /// Extra `vgcreate` arguments.
    pub options: Vec<String>,
    /// YAML line.
    #[serde(skip)]
    pub line: usize,
}

/// How big a logical volume is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LvSize {
    /// `size`: bytes (rounded down to the 4 MiB extent, as dib does).
    Size(Size),
    /// `extents`: a count.
    Extents(u64),
    /// `extents`: `N%VG`, `N%FREE`, `N%PVS`.
    Percent {
        /// The share.
        share: size::Percent,
        /// `VG`, `FREE` or `PVS`.
        of: String,
    },
}

/// A logical volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lv {
    /// Node name (the LV name).
    pub name: String,
    /// Its volume group.
    pub base: String,
    /// Size or extents.
    pub size: LvSize,
    /// `thin-pool` or `thin`.
    pub lv_type: Option<String>,
    /// For `thin`: the pool.
    pub thin_pool: Option<String>,
    /// Extra `lvcreate` arguments.
    pub options: Vec<String>,
    /// The size or extents as written.
    pub size_text: String,
    /// YAML line.
    #[serde(skip)]
    pub line: usize,
}

/// A filesystem (`mkfs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mkfs {
    /// Node name.
    pub name: String,
    /// The block device (partition, image or LV).
    pub base: String,
    /// Filesystem type.
    pub fs_type: diskforge_mkfs::FsType,
    /// Label: default the node name; upper-cased for vfat (dib).
    pub label: String,
    /// Extra mkfs arguments, split on spaces (dib).
    pub opts: Vec<String>,
    /// UUID; default random (or derived for reproducible builds).
    pub uuid: Option<String>,
    /// YAML line.
    #[serde(skip)]
    pub line: usize,
}

/// A mount point (`mount`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// Node name.
    pub name: String,
    /// The filesystem.
    pub base: String,
    /// Absolute path, or `none` for swap.
    pub mount_point: String,
    /// YAML line.
    #[serde(skip)]
    pub line: usize,
}

/// An fstab entry (`fstab`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fstab {
    /// Node name.
    pub name: String,
    /// The mount.
    pub base: String,
    /// Mount options; default `defaults` (`sw` for swap).
    pub options: String,
    /// Dump frequency; default 0.
    pub dump_freq: u32,
    /// fsck pass; default 2 (dib's default, also for `/`; 0 for swap).
    pub fsck_passno: u32,
    /// YAML line.
    #[serde(skip)]
    pub line: usize,
}

/// A whole config, normalised: the same for the tree and the graph spelling.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// `local_loop` nodes.
    pub images: Vec<Image>,
    /// `partitioning` stanzas.
    pub tables: Vec<Table>,
    /// `lvm` stanzas.
    pub lvms: Vec<Lvm>,
    /// `mkfs` nodes.
    pub filesystems: Vec<Mkfs>,
    /// `mount` nodes.
    pub mounts: Vec<Mount>,
    /// `fstab` nodes.
    pub fstabs: Vec<Fstab>,
}

impl Config {
    /// Sort every list by name so that the order nodes were written in does not matter.
    pub(crate) fn canonical(mut self) -> Self {
        self.images.sort_by(|a, b| a.name.cmp(&b.name));
        self.tables.sort_by(|a, b| a.base.cmp(&b.base));
        self.lvms.sort_by(|a, b| a.name.cmp(&b.name));
        self.filesystems.sort_by(|a, b| a.name.cmp(&b.name));
        self.mounts.sort_by(|a, b| a.name.cmp(&b.name));
        self.fstabs.sort_by(|a, b| a.name.cmp(&b.name));
        self
    }
}

/// One node after tree → graph expansion, before typing.
struct Raw {
    kind: String,
    line: usize,
    name: Option<(String, usize)>,
    base: Option<YNode>,
    fields: Vec<(String, YNode)>,
}

/// Why a name cannot be used (it becomes a file name, an LVM name, a GPT name).
pub(crate) fn unsafe_name(s: &str) -> Option<&'static str> {
    if s.is_empty() {
        Some("is empty")
    } else if s.contains('\n') || s.contains('\r') {
        Some("contains a line break")
    } else if s.chars().any(char::is_control) {
        Some("contains control characters")
    } else if s.chars().any(is_invisible_format) {
        Some("contains invisible or bidirectional formatting characters (such as U+202E)")
    } else if s.contains('/') {
        Some("contains a path separator '/'")
    } else if s == ".." || s == "." {
        Some("is a relative path component")
    } else if s.len() > 128 {
        Some("is longer than 128 bytes")
    } else {
        None
    }
}

fn scalar_text(n: &YNode) -> String {
    n.brief()
}

/// Expand one `{TYPE: {...}}` entry (dib's `recurse_config`).
fn expand(entry: &YNode, parent: Option<&str>, out: &mut Vec<Raw>, probs: &mut Vec<Problem>) {
    let YKind::Map(map) = &entry.kind else {
        probs.push(Problem::at(
            entry.line,
            format!(
                "a node must be a mapping with one key (its type), not {}",
                entry.shape()
            ),
        ));
        return;
    };
    if map.len() != 1 {
        let keys: Vec<String> = map.iter().map(|(k, _)| scalar_text(k)).collect();
        probs.push(Problem::at(
            entry.line,
            format!(
                "a node has exactly one key (its type), this one has {}: {}; start each node \
                 with its own `- `",
                map.len(),
                keys.iter()
                    .map(|k| format!("{k:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
        // Still read each key as a node, so its own problems are reported too.
        for (k, v) in map {
            let single = YNode {
                line: k.line,
                kind: YKind::Map(vec![(k.clone(), v.clone())]),
            };
            expand_one(&single, k, v, parent, out, probs);
        }
        return;
    }
    let (k, v) = &map[0];
    expand_one(entry, k, v, parent, out, probs);
}

fn expand_one(
    entry: &YNode,
    key: &YNode,
    values: &YNode,
    parent: Option<&str>,
    out: &mut Vec<Raw>,
    probs: &mut Vec<Problem>,
) {
    let kind = scalar_text(key);
    if !NODE_TYPES.contains(&kind.as_str()) {
        probs.push(
            Problem::at(
                key.line,
                format!("unknown node type{}", suggest(&kind, NODE_TYPES)),
            )
            .kind(&kind),
        );
        return;
    }
    let empty = Vec::new();
    let map = match &values.kind {
        YKind::Map(m) => m,
        _ if values.is_null() => &empty,
        _ => {
            probs.push(Problem::at(
                values.line,
                format!(
                    "{kind}: the node's settings must be a mapping, not {}",
                    values.shape()
                ),
            ));
            return;
        }
    };
    let get = |name: &str| map.iter().find(|(k, _)| k.as_str() == Some(name));
    let base = get("base").map(|(_, v)| v.clone()).or_else(|| {
        parent.map(|p| YNode {
            line: entry.line,
            kind: YKind::Scalar {
                text: p.to_owned(),
                quoted: true,
            },
        })
    });
    let name = match get("name") {
        Some((_, v)) => match v.as_str() {
            Some(s) => Some((s.to_owned(), v.line)),
            None => {
                probs.push(
                    Problem::at(v.line, format!("must be a string, not {}", v.shape()))
                        .kind(&kind)
                        .key("name"),
                );
                None
            }
        },
        None => base
            .as_ref()
            .and_then(|b| b.as_str())
            .map(|b| (format!("{kind}_{b}"), entry.line)),
    };
    let this_name = name.as_ref().map(|(n, _)| n.clone());
    let mut seen: Vec<&str> = Vec::new();
    let mut fields = Vec::new();
    for (k, v) in map {
        let Some(ks) = k.as_str() else {
            probs.push(
                Problem::at(k.line, format!("a key must be a string, not {}", k.shape()))
                    .kind(&kind),
            );
            continue;
        };
        if seen.contains(&ks) {
            probs.push(Problem::at(k.line, "key given twice").kind(&kind).key(ks));
            continue;
        }
        seen.push(ks);
        if ks == "partitions" && kind == "partitioning" {
            let YKind::Seq(parts) = &v.kind else {
                probs.push(
                    Problem::at(
                        v.line,
                        format!("must be a list of partitions, not {}", v.shape()),
                    )
                    .kind(&kind)
                    .key("partitions"),
                );
                continue;
            };
            let mut kept = Vec::new();
            for p in parts {
                let YKind::Map(pm) = &p.kind else {
                    probs.push(
                        Problem::at(
                            p.line,
                            format!("a partition must be a mapping, not {}", p.shape()),
                        )
                        .kind("partition"),
                    );
                    continue;
                };
                let pname = pm
                    .iter()
                    .find(|(k, _)| k.as_str() == Some("name"))
                    .and_then(|(_, v)| v.as_str());
                let mut own = Vec::new();
                for (pk, pv) in pm {
                    let pks = pk.as_str().unwrap_or_default();
                    if NODE_TYPES.contains(&pks) {
                        match pname {
                            Some(pn) => expand(
                                &YNode {
                                    line: pk.line,
                                    kind: YKind::Map(vec![(pk.clone(), pv.clone())]),
                                },
                                Some(pn),
                                out,
                                probs,
                            ),
                            None => probs.push(Problem::at(
                                pk.line,
                                format!("{pks} under a partition without a name has no base"),
                            )),
                        }
                    } else {
                        own.push((pk.clone(), pv.clone()));
                    }
                }
                kept.push(YNode {
                    line: p.line,
                    kind: YKind::Map(own),
                });
            }
            fields.push((
                ks.to_owned(),
                YNode {
                    line: v.line,
                    kind: YKind::Seq(kept),
                },
            ));
        } else if NODE_TYPES.contains(&ks) {
            match &this_name {
                Some(n) => expand(
                    &YNode {
                        line: k.line,
                        kind: YKind::Map(vec![(k.clone(), v.clone())]),
                    },
                    Some(n),
                    out,
                    probs,
                ),
                None => probs.push(Problem::at(
                    k.line,
                    format!("{ks} nested under a {kind} without a name has no base"),
                )),
            }
        } else if ks != "name" && ks != "base" {
            fields.push((ks.to_owned(), v.clone()));
        }
    }
    out.push(Raw {
        kind,
        line: entry.line,
        name,
        base,
        fields,
    });
}

/// `, did you mean "x"?` when a known word is close.
pub(crate) fn suggest(word: &str, known: &[&str]) -> String {
    let best = known
        .iter()
        .map(|k| (distance(word, k), *k))
        .min_by_key(|(d, _)| *d);
    match best {
        Some((d, k)) if d <= 2 && d < word.len() => format!("; did you mean {k:?}?"),
        _ => format!(" (known: {})", known.join(", ")),
    }
}

fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let v = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
            cur.push(v);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Typed reading of one node's fields, collecting problems.
struct Fields<'a> {
    kind: &'a str,
    name: String,
    fields: &'a [(String, YNode)],
    probs: &'a mut Vec<Problem>,
}

impl Fields<'_> {
    fn problem(&mut self, line: usize, field: &str, value: Option<&str>, msg: impl Into<String>) {
        let mut p = Problem::at(line, msg).node(self.kind, &self.name);
        p = match value {
            Some(v) => p.field(field, v),
            None => p.key(field),
        };
        self.probs.push(p);
    }

    fn check_keys(&mut self, known: &[&str]) {
        let fields = self.fields;
        for (k, v) in fields {
            if !known.contains(&k.as_str()) && k != "name" && k != "base" {
                let mut all = known.to_vec();
                all.extend(["name", "base"]);
                let msg = format!("unknown key{}", suggest(k, &all));
                self.problem(v.line, k, None, msg);
            }
        }
    }

    fn get(&self, key: &str) -> Option<&YNode> {
        self.fields.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    fn string(&mut self, key: &str) -> Option<(String, usize)> {
        let v = self.get(key)?.clone();
        match v.as_str() {
            Some(s) => Some((s.to_owned(), v.line)),
            None => {
                self.problem(
                    v.line,
                    key,
                    None,
                    format!("must be a string, not {}", v.shape()),
                );
                None
            }
        }
    }

    fn strings(&mut self, key: &str) -> Vec<String> {
        let Some(v) = self.get(key).cloned() else {
            return Vec::new();
        };
        match &v.kind {
            YKind::Seq(items) => items
                .iter()
                .filter_map(|i| match i.as_str() {
                    Some(s) => Some(s.to_owned()),
                    None => {
                        self.problem(
                            i.line,
                            key,
                            None,
                            format!("items must be strings, not {}", i.shape()),
                        );
                        None
                    }
                })
                .collect(),
            _ => match v.as_str() {
                Some(s) => vec![s.to_owned()],
                None => Vec::new(),
            },
        }
    }

    fn number(&mut self, key: &str) -> Option<u32> {
        let (s, line) = self.string(key)?;
        match s.trim().parse::<u32>() {
            Ok(n) => Some(n),
            Err(_) => {
                self.problem(line, key, Some(&s), "must be a whole number");
                None
            }
        }
    }
}

/// dib's root-filesystem parameters, merged into the node called `mkfs_root` where it gives
/// no `type` / `label` (dib's `_merge_rootfs_params`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RootParams {
    /// `FS_TYPE`; default ext4.
    pub fs_type: Option<String>,
    /// `--root-label`; default `cloudimg-rootfs` (`img-rootfs` on xfs).
    pub label: Option<String>,
}

/// Read a YAML tree into a [`Config`], collecting every problem.
pub(crate) fn read(doc: &YNode, root: &RootParams, probs: &mut Vec<Problem>) -> Config {
    let mut raws = Vec::new();
    match &doc.kind {
        YKind::Seq(items) => {
            for item in items {
                expand(item, None, &mut raws, probs);
            }
        }
        _ if doc.is_null() => probs.push(Problem::at(doc.line, "the config is empty")),
        _ => probs.push(Problem::at(
            doc.line,
            format!(
                "the config must be a list of nodes (`- local_loop: …`), not {}",
                doc.shape()
            ),
        )),
    }
    let mut cfg = Config::default();
    for raw in &mut raws {
        if raw.kind == "mkfs" && raw.name.as_ref().is_some_and(|(n, _)| n == "mkfs_root") {
            let scalar = |t: String| YNode {
                line: raw.line,
                kind: YKind::Scalar {
                    text: t,
                    quoted: true,
                },
            };
            let has = |raw: &Raw, k: &str| raw.fields.iter().any(|(f, _)| f == k);
            if !has(raw, "type") {
                let t = root.fs_type.clone().unwrap_or_else(|| "ext4".into());
                raw.fields.push(("type".into(), scalar(t)));
            }
            if !has(raw, "label") {
                let xfs = raw
                    .fields
                    .iter()
                    .any(|(f, v)| f == "type" && v.as_str() == Some("xfs"));
                let l = root
                    .label
                    .clone()
                    .unwrap_or_else(|| if xfs { "img-rootfs" } else { "cloudimg-rootfs" }.into());
                raw.fields.push(("label".into(), scalar(l)));
            }
        }
    }
    for raw in &raws {
        type_node(raw, &mut cfg, probs);
    }
    cfg
}

fn type_node(raw: &Raw, cfg: &mut Config, probs: &mut Vec<Problem>) {
    let Some((name, name_line)) = raw.name.clone() else {
        probs.push(
            Problem::at(raw.line, "missing name (and no base to derive one from)")
                .kind(&raw.kind)
                .key("name"),
        );
        return;
    };
    if let Some(why) = unsafe_name(&name) {
        probs.push(
            Problem::at(name_line, format!("unsafe name: {why}"))
                .kind(&raw.kind)
                .field("name", &name),
        );
    }
    let base_str = raw
        .base
        .as_ref()
        .and_then(|b| b.as_str())
        .map(str::to_owned);
    let base_line = raw.base.as_ref().map_or(raw.line, |b| b.line);
    let mut f = Fields {
        kind: &raw.kind,
        name: name.clone(),
        fields: &raw.fields,
        probs,
    };
    let need_base = |f: &mut Fields| -> String {
        match (&base_str, &raw.base) {
            (Some(b), _) => b.clone(),
            (None, Some(b)) => {
                f.problem(
                    b.line,
                    "base",
                    None,
                    format!("must be a node name, not {}", b.shape()),
                );
                String::new()
            }
            (None, None) => {
                f.problem(
                    raw.line,
                    "base",
                    None,
                    "missing: name the node this one is made on",
                );
                String::new()
            }
        }
    };
    match raw.kind.as_str() {
        "local_loop" => {
            f.check_keys(&["size", "directory", "block_size"]);
            if raw.base.is_some() {
                f.problem(
                    base_line,
                    "base",
                    base_str.as_deref(),
                    "a local_loop is a disk of its own and takes no base",
                );
            }
            let size = f.string("size").and_then(|(s, l)| match size::parse(&s) {
                Ok(v) if v.bytes() == 0 => {
                    f.problem(l, "size", Some(&s), "an image cannot be 0 bytes");
                    None
                }
                Ok(v) => Some(v),
                Err(e) => {
                    f.problem(l, "size", Some(&s), e.reason.to_string());
                    None
                }
            });
            let block_size = f.number("block_size");
            if let Some(b) = block_size.filter(|b| *b != 512 && *b != 4096) {
                let line = f.get("block_size").map_or(raw.line, |v| v.line);
                f.problem(
                    line,
                    "block_size",
                    Some(&b.to_string()),
                    "must be 512 or 4096",
                );
            }
            let directory = f.string("directory").map(|(s, _)| s);
            cfg.images.push(Image {
                name,
                size,
                directory,
                block_size,
                line: raw.line,
            });
        }
        "partitioning" => {
            f.check_keys(&["label", "align", "partitions"]);
            let base = need_base(&mut f);
            let label = match f.string("label") {
                None if f.get("label").is_none() => {
                    f.problem(raw.line, "label", None, "missing: mbr or gpt");
                    None
                }
                None => None,
                Some((s, l)) => match s.as_str() {
                    "mbr" => Some(diskforge_part::Label::Mbr),
                    "gpt" => Some(diskforge_part::Label::Gpt),
                    _ => {
                        f.problem(l, "label", Some(&s), "must be mbr or gpt");
                        None
                    }
                },
            };
            let align = f.string("align").and_then(|(s, l)| match size::parse(&s) {
                Ok(v) if v.bytes() == 0 || v.bytes() % 512 != 0 => {
                    f.problem(
                        l,
                        "align",
                        Some(&s),
                        "must be a positive multiple of 512 bytes",
                    );
                    None
                }
                Ok(v) => Some(v.bytes()),
                Err(e) => {
                    f.problem(l, "align", Some(&s), e.reason.to_string());
                    None
                }
            });
            let mut partitions = Vec::new();
            match f.get("partitions").cloned() {
                None => f.problem(raw.line, "partitions", None, "missing: list the partitions"),
                Some(YNode {
                    kind: YKind::Seq(items),
                    line,
                }) => {
                    if items.is_empty() {
                        f.problem(line, "partitions", None, "the list is empty");
                    }
                    for p in &items {
                        if let Some(part) = type_partition(p, &base, f.probs) {
                            partitions.push(part);
                        }
                    }
                }
                Some(_) => {}
            }
            if let Some(label) = label {
                cfg.tables.push(Table {
                    name,
                    base,
                    label,
                    align,
                    partitions,
                    line: raw.line,
                });
            }
        }
        "lvm" => {
            f.check_keys(&["pvs", "vgs", "lvs"]);
            let lvm = type_lvm(&mut f, raw.line);
            cfg.lvms.push(Lvm { name, ..lvm });
        }
        "mkfs" => {
            f.check_keys(&["type", "label", "opts", "uuid"]);
            let base = need_base(&mut f);
            let fs_type = match f.string("type") {
                None => {
                    if f.get("type").is_none() {
                        f.problem(
                            raw.line,
                            "type",
                            None,
                            "missing: the filesystem type (ext4, xfs, vfat…)",
                        );
                    }
                    None
                }
                Some((s, l)) => match s.parse::<diskforge_mkfs::FsType>() {
                    Ok(t) => Some(t),
                    Err(e) => {
                        f.problem(l, "type", Some(&s), e);
                        None
                    }
                },
            };
            let label_given = f.string("label");
            let mut label = label_given
                .as_ref()
                .map_or(name.clone(), |(s, _)| s.clone());
            let label_line = label_given.as_ref().map_or(name_line, |(_, l)| *l);
            if fs_type == Some(diskforge_mkfs::FsType::Vfat) {
                label = label.to_uppercase();
            }
            if label.chars().any(|c| c.is_whitespace() || c.is_control()) {
                f.problem(label_line, "label", Some(&label), "contains white space or control characters, which an fstab LABEL= entry cannot hold");
            } else if label.chars().any(is_invisible_format) {
                f.problem(
                    label_line,
                    "label",
                    Some(&label),
                    "contains invisible or bidirectional formatting characters (such as U+202E)",
                );
            }
            if let Some(t) = fs_type {
                match t.max_label() {
                    Some(max) if label.len() > max => f.problem(
                        label_line,
                        "label",
                        Some(&label),
                        format!(
                            "too long for {t}: {} bytes, at most {max}{}",
                            label.len(),
                            if label_given.is_none() {
                                " (the label defaults to the node name; give a shorter `label`)"
                            } else {
                                ""
                            }
                        ),
                    ),
                    None if label_given.is_some() => f.problem(
                        label_line,
                        "label",
                        Some(&label),
                        format!("{t} has no label"),
                    ),
                    _ => {}
                }
            }
            let opts = f
                .string("opts")
                .map(|(s, _)| {
                    s.split(' ')
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            let uuid = f.string("uuid").map(|(s, l)| {
                if !valid_uuid(&s, fs_type) {
                    f.problem(
                        l,
                        "uuid",
                        Some(&s),
                        "not a UUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx; XXXX-XXXX for vfat)",
                    );
                }
                s
            });
            if let Some(fs_type) = fs_type {
                cfg.filesystems.push(Mkfs {
                    name,
                    base,
                    fs_type,
                    label,
                    opts,
                    uuid,
                    line: raw.line,
                });
            }
        }
        "mount" => {
            f.check_keys(&["mount_point"]);
            let base = need_base(&mut f);
            match f.string("mount_point") {
                None => {
                    if f.get("mount_point").is_none() {
                        f.problem(
                            raw.line,
                            "mount_point",
                            None,
                            "missing: an absolute path, or none for swap",
                        );
                    }
                }
                Some((mp, l)) => {
                    if let Some(why) = bad_mount_point(&mp) {
                        f.problem(l, "mount_point", Some(&mp), why);
                    }
                    cfg.mounts.push(Mount {
                        name,
                        base,
                        mount_point: mp,
                        line: l,
                    });
                }
            }
        }
        "fstab" => {
            f.check_keys(&["options", "dump-freq", "fsck-passno"]);
            let base = need_base(&mut f);
            let options = f.string("options").map_or_else(
                || "defaults".to_owned(),
                |(s, l)| {
                    if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
                        f.problem(
                            l,
                            "options",
                            Some(&s),
                            "must be one word of comma-separated options (no spaces)",
                        );
                    }
                    s
                },
            );
            let dump_freq = f.number("dump-freq").unwrap_or(0);
            let fsck_passno = f.number("fsck-passno").unwrap_or(2);
            if fsck_passno > 2 {
                let line = f.get("fsck-passno").map_or(raw.line, |v| v.line);
                f.problem(
                    line,
                    "fsck-passno",
                    Some(&fsck_passno.to_string()),
                    "must be 0, 1 or 2",
                );
            }
            cfg.fstabs.push(Fstab {
                name,
                base,
                options,
                dump_freq,
                fsck_passno,
                line: raw.line,
            });
        }
        _ => {}
    }
}

fn valid_uuid(s: &str, t: Option<diskforge_mkfs::FsType>) -> bool {
    let hex_groups = |lens: &[usize]| {
        let parts: Vec<&str> = s.split('-').collect();
        parts.len() == lens.len()
            && parts
                .iter()
                .zip(lens)
                .all(|(p, l)| p.len() == *l && p.bytes().all(|b| b.is_ascii_hexdigit()))
    };
    hex_groups(&[8, 4, 4, 4, 12])
        || (t == Some(diskforge_mkfs::FsType::Vfat) && hex_groups(&[4, 4]))
}

fn bad_mount_point(mp: &str) -> Option<String> {
    if mp == "none" {
        return None;
    }
    if !mp.starts_with('/') {
        return Some("must be an absolute path (or none, for swap)".into());
    }
    if mp.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Some("contains white space or control characters".into());
    }
    if mp.chars().any(is_invisible_format) {
        return Some(
            "contains invisible or bidirectional formatting characters (such as U+202E)".into(),
        );
    }
    if mp.split('/').any(|c| c == ".." || c == ".") {
        return Some("contains . or .. components".into());
    }
    if mp.contains("//") || (mp.len() > 1 && mp.ends_with('/')) {
        return Some("is not in normal form (no // and no trailing /)".into());
    }
    None
}

fn type_partition(p: &YNode, table_base: &str, probs: &mut Vec<Problem>) -> Option<Partition> {
    let YKind::Map(m) = &p.kind else { return None };
    let fields: Vec<(String, YNode)> = m
        .iter()
        .filter_map(|(k, v)| k.as_str().map(|k| (k.to_owned(), v.clone())))
        .collect();
    let name = fields
        .iter()
        .find(|(k, _)| k == "name")
        .and_then(|(_, v)| v.as_str())
        .map(str::to_owned);
    let Some(name) = name else {
        probs.push(
            Problem::at(p.line, "missing name")
                .kind("partition")
                .key("name"),
        );
        return None;
    };
    let name_line = fields
        .iter()
        .find(|(k, _)| k == "name")
        .map_or(p.line, |(_, v)| v.line);
    if let Some(why) = unsafe_name(&name) {
        probs.push(
            Problem::at(name_line, format!("unsafe name: {why}"))
                .kind("partition")
                .field("name", &name),
        );
    }
    let mut f = Fields {
        kind: "partition",
        name,
        fields: &fields,
        probs,
    };
    f.check_keys(&["flags", "size", "type"]);
    if let Some((b, l)) = f.string("base")
        && b != table_base
    {
        f.problem(l, "base", Some(&b), format!("differs from its partitioning's base {table_base:?} (a partition is always on its table's disk)"));
    }
    let mut boot = false;
    let mut primary = false;
    let flag_line = f.get("flags").map_or(p.line, |v| v.line);
    if let Some(v) = f.get("flags")
        && !matches!(v.kind, YKind::Seq(_))
    {
        f.problem(
            v.line,
            "flags",
            Some(&v.brief()),
            "must be a list, like [boot, primary]",
        );
    }
    for fl in f.strings("flags") {
        match fl.as_str() {
            "boot" => boot = true,
            "primary" => primary = true,
            _ => f.problem(
                flag_line,
                "flags",
                Some(&fl),
                format!("unknown flag{}", suggest(&fl, &["boot", "primary"])),
            ),
        }
    }
    let size_text = f.string("size").map(|(s, _)| s).unwrap_or_default();
    let (size, size_line) = match f.string("size") {
        None => {
            if f.get("size").is_none() {
                f.problem(
                    p.line,
                    "size",
                    None,
                    "missing: an absolute size (1GiB) or a percentage of the free space (100%)",
                );
            }
            (None, p.line)
        }
        Some((s, l)) => match size::parse_spec(&s) {
            Ok(SizeSpec::Absolute(z)) if z.bytes() == 0 => {
                f.problem(l, "size", Some(&s), "a partition cannot be 0 bytes");
                (None, l)
            }
            Ok(v) => (Some(v), l),
            Err(e) => {
                f.problem(l, "size", Some(&s), e);
                (None, l)
            }
        },
    };
    let type_code = f.string("type").map(|(s, _)| s);
    Some(Partition {
        name: f.name.clone(),
        size: size.unwrap_or(SizeSpec::Absolute(Size::ZERO)),
        type_code,
        boot,
        primary,
        line: p.line,
        size_line,
        size_text,
    })
    .filter(|_| size.is_some())
}

fn type_lvm(f: &mut Fields, line: usize) -> Lvm {
    let mut lvm = Lvm {
        name: String::new(),
        pvs: Vec::new(),
        vgs: Vec::new(),
        lvs: Vec::new(),
        line,
    };
    for key in ["pvs", "vgs", "lvs"] {
        let Some(v) = f.get(key).cloned() else {
            f.problem(line, key, None, "missing: LVM needs pvs, vgs and lvs");
            continue;
        };
        let YKind::Seq(items) = &v.kind else {
            f.problem(
                v.line,
                key,
                None,
                format!("must be a list, not {}", v.shape()),
            );
            continue;
        };
        for item in items {
            let YKind::Map(m) = &item.kind else {
                f.problem(
                    item.line,
                    key,
                    None,
                    format!("items must be mappings, not {}", item.shape()),
                );
                continue;
            };
            let fields: Vec<(String, YNode)> = m
                .iter()
                .filter_map(|(k, v)| k.as_str().map(|k| (k.to_owned(), v.clone())))
                .collect();
            let kind = &key[..2];
            let name = fields
                .iter()
                .find(|(k, _)| k == "name")
                .and_then(|(_, v)| v.as_str())
                .map(str::to_owned);
            let Some(name) = name else {
                f.probs.push(
                    Problem::at(item.line, "missing name")
                        .kind(kind)
                        .key("name"),
                );
                continue;
            };
            if let Some(why) = unsafe_name(&name) {
                f.probs.push(
                    Problem::at(item.line, format!("unsafe name: {why}"))
                        .kind(kind)
                        .field("name", &name),
                );
            }
            let mut g = Fields {
                kind,
                name: name.clone(),
                fields: &fields,
                probs: f.probs,
            };
            let base = g.strings("base");
            if base.is_empty() {
                g.problem(item.line, "base", None, "missing");
            }
            let options = g.strings("options");
            match key {
                "pvs" => {
                    g.check_keys(&["options"]);
                    if base.len() > 1 {
                        g.problem(
                            item.line,
                            "base",
                            Some(&base.join(",")),
                            "a physical volume is made on one device",
                        );
                    }
                    lvm.pvs.push(Pv {
                        name,
                        base: base.into_iter().next().unwrap_or_default(),
                        options,
                        line: item.line,
                    });
                }
                "vgs" => {
                    g.check_keys(&["options"]);
                    lvm.vgs.push(Vg {
                        name,
                        base,
                        options,
                        line: item.line,
                    });
                }
                _ => {
                    g.check_keys(&["options", "size", "extents", "type", "thin-pool"]);
                    let size = g.string("size");
                    let extents = g.string("extents");
                    let size_text = size
                        .as_ref()
                        .or(extents.as_ref())
                        .map(|(s, _)| s.clone())
                        .unwrap_or_default();
                    let lv_size = match (size, extents) {
                        (Some(_), Some((e, l))) => {
                            g.problem(l, "extents", Some(&e), "give size or extents, not both");
                            None
                        }
                        (None, None) => {
                            g.problem(
                                item.line,
                                "size",
                                None,
                                "missing: give size (1800MiB) or extents (28%VG)",
                            );
                            None
                        }
                        (Some((s, l)), None) => match size::parse(&s) {
                            Ok(v) if v.bytes() == 0 => {
                                g.problem(
                                    l,
                                    "size",
                                    Some(&s),
                                    "a logical volume cannot be 0 bytes",
                                );
                                None
                            }
                            Ok(v) => Some(LvSize::Size(v)),
                            Err(e) => {
                                g.problem(l, "size", Some(&s), e.reason.to_string());
                                None
                            }
                        },
                        (None, Some((e, l))) => match parse_extents(&e) {
                            Ok(v) => Some(v),
                            Err(why) => {
                                g.problem(l, "extents", Some(&e), why);
                                None
                            }
                        },
                    };
                    let lv_type = g.string("type").map(|(t, l)| {
                        if t != "thin" && t != "thin-pool" {
                            g.problem(l, "type", Some(&t), "must be thin or thin-pool");
                        }
                        t
                    });
                    let thin_pool = g.string("thin-pool").map(|(s, _)| s);
                    if lv_type.as_deref() == Some("thin") && thin_pool.is_none() {
                        g.problem(
                            item.line,
                            "thin-pool",
                            None,
                            "missing: a thin volume names its pool",
                        );
                    }
                    if base.len() > 1 {
                        g.problem(
                            item.line,
                            "base",
                            Some(&base.join(",")),
                            "a logical volume is in one volume group",
                        );
                    }
                    if let Some(size) = lv_size {
                        lvm.lvs.push(Lv {
                            name,
                            base: base.into_iter().next().unwrap_or_default(),
                            size,
                            lv_type,
                            thin_pool,
                            options,
                            size_text,
                            line: item.line,
                        });
                    }
                }
            }
        }
    }
    lvm
}

fn parse_extents(s: &str) -> Result<LvSize, String> {
    let t = s.trim();
    if let Some((num, of)) = t.split_once('%') {
        let of = of.to_ascii_uppercase();
        if !matches!(of.as_str(), "VG" | "FREE" | "PVS") {
            return Err("a relative size is N%VG, N%FREE or N%PVS".into());
        }
        match size::parse_spec(&format!("{num}%")) {
            Ok(SizeSpec::Percent(share)) => Ok(LvSize::Percent { share, of }),
            Ok(_) => Err("not a percentage".into()),
            Err(e) => Err(e),
        }
    } else {
        match t.parse::<u64>() {
            Ok(0) | Err(_) => Err("extents are a positive count, or N%VG, N%FREE, N%PVS".into()),
            Ok(n) => Ok(LvSize::Extents(n)),
        }
    }
}
