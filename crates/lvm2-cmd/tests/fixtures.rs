//! Report parsers against real lvm2 2.03.16 `--reportformat json` output in `tests/fixtures/`,
//! captured by `tests/fixtures/capture.sh` on a loop device with activation off (hence the
//! `X` state flags and `lv_active` "unknown" in `lvs-no-dm.json`; see the fixtures' README).
//! No root, no lvm run.

use lvm2_cmd::{Lv, Pv, Vg, parse_report};

fn fixture(name: &str) -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

#[test]
fn pvs() {
    let pvs: Vec<Pv> = parse_report(&fixture("pvs.json"), "pv").unwrap();
    assert_eq!(pvs.len(), 1);
    assert_eq!(pvs[0].vg_name.as_deref(), Some("dfcap"));
    assert_eq!(pvs[0].pv_size, 62914560);
    insta::assert_yaml_snapshot!(pvs);
}

#[test]
fn vgs() {
    let vgs: Vec<Vg> = parse_report(&fixture("vgs.json"), "vg").unwrap();
    assert_eq!(vgs[0].vg_extent_size, 4 << 20);
    assert_eq!(
        (
            vgs[0].vg_extent_count,
            vgs[0].vg_free_count,
            vgs[0].lv_count
        ),
        (15, 6, 2)
    );
    insta::assert_yaml_snapshot!(vgs);
}

#[test]
fn lvs() {
    let lvs: Vec<Lv> = parse_report(&fixture("lvs-no-dm.json"), "lv").unwrap();
    assert_eq!(lvs.len(), 2);
    assert_eq!(lvs[1].lv_size, 20 << 20);
    assert_eq!(lvs[0].lv_dm_path, "/dev/mapper/dfcap-lv0");
    assert_eq!(lvs[0].lv_active.as_deref(), Some("unknown"));
    assert!(!lvs[0].is_active());
    insta::assert_yaml_snapshot!(lvs);
    let none: Vec<Lv> = parse_report(&fixture("lvs-missing-vg.json"), "lv").unwrap();
    assert!(none.is_empty());
    assert!(parse_report::<Lv>("{\"report\": [{\"lv\": [{\"lv_name\": 3}]}]}", "lv").is_err());
}
