//! Parsers against real `qemu-img` 7.2 output captured into `tests/fixtures/` (no qemu-img run).

use qemu_img_cmd::{Measurement, parse_backing_chain, parse_check, parse_info, parse_progress};

fn fixture(name: &str) -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

#[test]
fn info_each_format() {
    for (file, format, size) in [
        ("info-raw.json", "raw", 67108864),
        ("info-vhdx.json", "vhdx", 67108864),
        ("info-vmdk.json", "vmdk", 67108864),
        ("info-vpc.json", "vpc", 67125248),
        ("info-qcow2-compressed.json", "qcow2", 67108864),
    ] {
        let info = parse_info(&fixture(file)).unwrap();
        assert_eq!(info.format, format, "{file}");
        assert_eq!(info.virtual_size, size, "{file}");
        insta::assert_yaml_snapshot!(file, info);
    }
    let q = parse_info(&fixture("info-qcow2-compressed.json")).unwrap();
    assert_eq!(q.qcow2_compat(), Some("1.1"));
}

#[test]
fn backing_chain() {
    let chain = parse_backing_chain(&fixture("info-backing-chain.json")).unwrap();
    assert_eq!(chain.len(), 2);
    assert_eq!(chain[0].backing_filename.as_deref(), Some("base.qcow2"));
    assert_eq!(chain[0].backing_filename_format.as_deref(), Some("qcow2"));
    assert_eq!(chain[1].backing_filename, None);
    insta::assert_yaml_snapshot!(chain);
}

#[test]
fn check_reports() {
    let clean = parse_check(&fixture("check-clean.json")).unwrap();
    assert!(clean.is_clean());
    let leaks = parse_check(&fixture("check-leaks.json")).unwrap();
    assert_eq!((leaks.leaks, leaks.corruptions), (1, 0));
    assert!(!leaks.is_clean());
    let corrupt = parse_check(&fixture("check-corrupt.json")).unwrap();
    assert_eq!(corrupt.corruptions, 2);
    insta::assert_yaml_snapshot!([clean, leaks, corrupt]);
}

#[test]
fn measure_and_progress() {
    let m: Measurement = serde_json::from_str(&fixture("measure.json")).unwrap();
    assert_eq!(m.required, 2490368);
    assert_eq!(m.fully_allocated, 67436544);
    let meter = fixture("convert-progress.txt");
    let seen: Vec<f64> = meter
        .split(['\r', '\n'])
        .filter_map(parse_progress)
        .collect();
    assert_eq!(seen.first(), Some(&0.0));
    assert_eq!(seen.last(), Some(&100.0));
}
