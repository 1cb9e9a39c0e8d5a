//! Plan snapshots of the shipped example configs, and tree/graph spellings of the same
//! layout giving the same plan (pairs from diskimage-builder's own test configs).

use std::path::PathBuf;

use diskforge_blockdev::{PlanOptions, plan_text};

fn opts() -> PlanOptions {
    PlanOptions {
        image_size: Some(4 << 30),
        image_dir: PathBuf::from("/images"),
        root: Some(PathBuf::from("/tree")),
        uuid_seed: Some("snapshot".into()),
        ..Default::default()
    }
}

fn dir(sub: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(sub)
}

#[test]
fn example_plans() {
    let mut names = Vec::new();
    for e in std::fs::read_dir(dir("examples/configs")).expect("examples") {
        let p = e.expect("entry").path();
        let name = p.file_stem().expect("stem").to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&p).expect("read");
        let plan = plan_text(&text, &opts()).unwrap_or_else(|e| panic!("{name}: {e}"));
        insta::assert_yaml_snapshot!(format!("example-{name}"), plan);
        names.push(name);
    }
    names.sort();
    assert_eq!(
        names,
        [
            "efi",
            "gpt-bios-esp-root",
            "lvm-one-pv",
            "lvm-two-pvs",
            "mbr-logical",
            "mbr-single-root",
            "two-disks"
        ]
    );
}

#[test]
fn tree_and_graph_spellings_plan_the_same() {
    for pair in ["deep", "lvm", "multiple_partitions", "gpt_efi"] {
        let read = |form: &str| {
            let p = dir("tests/pairs").join(format!("{pair}_{form}.yaml"));
            std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        };
        let tree = plan_text(&read("tree"), &opts()).unwrap_or_else(|e| panic!("{pair} tree: {e}"));
        let graph =
            plan_text(&read("graph"), &opts()).unwrap_or_else(|e| panic!("{pair} graph: {e}"));
        // Warnings carry YAML lines, which differ between the spellings.
        let strip = |mut p: diskforge_blockdev::Plan| {
            p.warnings.iter_mut().for_each(|w| w.line = None);
            p
        };
        assert_eq!(strip(tree), strip(graph), "{pair}");
    }
}

/// With a root tree measured, a filesystem too small for its part of the tree is a problem
/// naming both sizes; nested mount points count for their own filesystem only.
#[test]
fn root_tree_must_fit_its_filesystems() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    std::fs::create_dir_all(root.join("srv")).expect("mkdir");
    std::fs::write(root.join("srv/big"), vec![1u8; 20 << 20]).expect("write");
    std::fs::write(root.join("small"), "x").expect("write");
    let text = "- local_loop: {name: image0, size: 32MiB}\n\
                - partitioning:\n    base: image0\n    label: gpt\n    partitions:\n\
                \x20     - {name: root, size: 50%, mkfs: {type: ext4, mount: {mount_point: /}}}\n\
                \x20     - {name: srv, size: 100%, mkfs: {type: ext4, mount: {mount_point: /srv}}}\n";
    let mut o = opts();
    o.root = Some(root.to_owned());
    let cfg = diskforge_blockdev::load(text, &o).expect("load");
    o.content = diskforge_blockdev::measure_tree(root, &cfg).expect("measure");
    assert!(o.content["/"] < 1 << 20, "{:?}", o.content);
    assert!(o.content["/srv"] > 20 << 20, "{:?}", o.content);
    let e = plan_text(text, &o).expect_err("too small").to_string();
    assert!(
        e.contains(
            "line 7: mkfs \"mkfs_srv\": base: the root tree under /srv needs about 20.0 MiB"
        ),
        "{e}"
    );
    assert!(!e.contains("mkfs_root"), "{e}");
    // The advice: what an ext4 holding it needs, and the smallest image where 100% of the
    // free space after root's 50% is that much.
    let need = diskforge_blockdev::fs_size_for(diskforge_mkfs::FsType::Ext4, o.content["/srv"]);
    assert!(
        e.contains(&format!(
            "needs about {} ({need} bytes",
            diskforge_blockdev::size::human(need)
        )),
        "{e}"
    );
    let min: u64 = e
        .split("the smallest image where that is enough is ")
        .nth(1)
        .and_then(|r| r.split_once('(')?.1.split_once(' ')?.0.parse().ok())
        .unwrap_or_else(|| panic!("no smallest image in {e}"));
    let mut fit = opts();
    fit.image_size = Some(min);
    fit.root = o.root.clone();
    fit.content = o.content.clone();
    let big = text.replace("size: 32MiB", &format!("size: {min}"));
    let p = plan_text(&big, &fit).expect("the advised size fits");
    let srv = p
        .filesystems
        .iter()
        .find(|f| f.name == "mkfs_srv")
        .expect("srv");
    assert!(srv.device.size() >= need, "{}", srv.device.size());
    let smaller = text.replace("size: 32MiB", &format!("size: {}", min - (1 << 20)));
    let p = plan_text(&smaller, &fit).expect("plans (20 MiB fit)");
    let srv = p
        .filesystems
        .iter()
        .find(|f| f.name == "mkfs_srv")
        .expect("srv");
    assert!(srv.device.size() < need, "1 MiB less is not enough");
}

/// LVs over 100% of their VG: the advice names the smallest VG and the smallest image, and
/// that image is exactly enough (1 MiB less is not).
#[test]
fn lvm_over_100_percent_advises_the_smallest_image() {
    let bad = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/bad/lvm-over-100-percent.yaml"),
    )
    .expect("read");
    let e = plan_text(&bad, &opts()).expect_err("over 100%").to_string();
    let min: u64 = e
        .split("the smallest image where that is enough is ")
        .nth(1)
        .and_then(|r| r.split_once('(')?.1.split_once(' ')?.0.parse().ok())
        .unwrap_or_else(|| panic!("no smallest image in {e}"));
    let fits = bad.replace("size: 2GiB", &format!("size: {min}"));
    plan_text(&fits, &opts()).unwrap_or_else(|e| panic!("{min} bytes: {e}"));
    let short = bad.replace("size: 2GiB", &format!("size: {}", min - (1 << 20)));
    plan_text(&short, &opts()).expect_err("1 MiB less");
}
