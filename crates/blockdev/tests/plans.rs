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
