//! Pass three named points; run with `--features inject` and `DISKFORGE_FAIL_AT=1` (or
//! `=write`) to see the second one fail, `DISKFORGE_FAULT_LOG=/dev/stderr` to list them.
fn main() {
    for name in ["attach", "write", "detach"] {
        match diskforge_fault::point(name) {
            Ok(()) => println!("{name}: ok"),
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(1);
            }
        }
    }
}
