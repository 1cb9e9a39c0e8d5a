//! The bad-input suite: every config under `tests/bad/` is refused with all its problems at
//! once, each naming line, node, field and value; the list is snapshot-tested. Nothing here
//! touches a file (planning is pure), and none of them may panic.

use std::path::PathBuf;

use diskforge_blockdev::{Error, PlanOptions, decode, plan_text};

#[test]
fn every_bad_config_is_refused_with_its_problems() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/bad");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/bad")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 40, "only {} bad configs", files.len());
    for p in files {
        let name = p.file_stem().expect("stem").to_string_lossy().into_owned();
        let bytes = std::fs::read(&p).expect("read");
        let opts = PlanOptions {
            image_size: (name != "image-size-missing").then_some(1 << 30),
            image_dir: "/images".into(),
            ..Default::default()
        };
        let res = decode(&bytes).and_then(|text| plan_text(text, &opts));
        let problems = match res {
            Err(Error::Invalid(p)) => p,
            Err(e) => panic!("{name}: not a config error: {e}"),
            Ok(_) => panic!("{name}: accepted"),
        };
        assert!(!problems.0.is_empty(), "{name}");
        let text = problems.to_string();
        // Never raw control characters or binary on the terminal.
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\n'),
            "{name}: raw control characters in {text:?}"
        );
        assert!(
            problems
                .0
                .iter()
                .all(|p| p.line.is_some() || p.node.is_some()),
            "{name}: a problem names neither line nor node: {text}"
        );
        insta::assert_snapshot!(format!("bad-{name}"), text);
    }
}
