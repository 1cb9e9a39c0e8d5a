//! Hostile configs from the hardening corpus (`tests/corpus/block-device/`) that found
//! defects: each is refused, and the message stays one short, printable line per problem.

use diskforge_blockdev::{Error, PlanOptions, Problems, plan_text};

fn problems(text: &str) -> Problems {
    let opts = PlanOptions {
        image_size: Some(1 << 30),
        image_dir: "/images".into(),
        ..Default::default()
    };
    match plan_text(text, &opts) {
        Err(Error::Invalid(p)) => p,
        Err(e) => panic!("not a config error: {e}"),
        Ok(_) => panic!("accepted: {text:?}"),
    }
}

/// U+202E (and the other bidirectional and zero-width formatting characters) would make a
/// terminal show another name than the file, label or path made: refused, and shown escaped.
#[test]
fn bidi_and_invisible_characters_are_refused_and_escaped() {
    for (text, field) in [
        (
            "- local_loop: {name: \"image\\u202Eexe.war\", size: 64MiB}\n",
            "name",
        ),
        (
            "- local_loop: {name: \"ima\\u200Bge\", size: 64MiB}\n",
            "name",
        ),
        (
            "- local_loop: {name: image0, size: 64MiB}\n\
             - mkfs: {name: root, base: image0, type: ext4, label: \"root\\u202Etoor\", \
             mount: {mount_point: /}}\n",
            "label",
        ),
        (
            "- local_loop: {name: image0, size: 64MiB}\n\
             - mkfs: {name: root, base: image0, type: ext4, \
             mount: {mount_point: \"/srv\\u2066x\"}}\n",
            "mount_point",
        ),
    ] {
        let p = problems(text);
        let line = p.to_string();
        assert!(
            p.0.iter()
                .any(|p| p.field.as_deref() == Some(field) && p.message.contains("bidirectional")),
            "{text:?}: {line}"
        );
        assert!(
            !line.contains(['\u{202e}', '\u{200b}', '\u{2066}']),
            "raw formatting character in {line:?}"
        );
        assert!(line.contains("\\u{"), "not escaped: {line}");
    }
}

/// A 10 MB name is refused with a line of bounded length (the value is cut, its length said).
#[test]
fn huge_values_are_cut_in_messages() {
    let name = "a".repeat(10 << 20);
    let p = problems(&format!(
        "- local_loop:\n    name: {name}\n    size: 64MiB\n"
    ));
    let text = p.to_string();
    assert!(text.contains("longer than 128 bytes"), "{}", &text[..200]);
    assert!(text.contains("more bytes)"), "{}", &text[..200]);
    for line in text.lines() {
        assert!(line.len() < 1000, "a line of {} bytes", line.len());
    }
}
