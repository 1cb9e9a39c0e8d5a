//! Plan a diskimage-builder block-device config and print the plan as JSON, or every problem.
//!
//! `cargo run -p diskforge-blockdev --example plan -- CONFIG.yaml [IMAGE_SIZE_BYTES]`
//! (try `examples/configs/gpt-bios-esp-root.yaml 1073741824`).

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(path) = args.next().filter(|a| a != "-h" && a != "--help") else {
        eprintln!("usage: plan CONFIG.yaml [IMAGE_SIZE_BYTES]");
        std::process::exit(2);
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{path}: {e}");
            std::process::exit(1);
        }
    };
    let opts = diskforge_blockdev::PlanOptions {
        image_size: args.next().and_then(|s| s.parse().ok()),
        image_dir: ".".into(),
        ..Default::default()
    };
    match diskforge_blockdev::plan_text(&text, &opts) {
        Ok(plan) => match serde_json::to_string_pretty(&plan) {
            Ok(j) => println!("{j}"),
            Err(e) => eprintln!("{e}"),
        },
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}
