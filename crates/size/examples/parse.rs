//! Parse each argument as a size (or a relative size) and print its byte count.
//!
//! `cargo run -p diskforge-size --example parse -- 1.5GiB 2G 50% rest`

use diskforge_size::SizeSpec;

fn main() {
    for arg in std::env::args().skip(1) {
        match arg.parse::<SizeSpec>() {
            Ok(SizeSpec::Absolute(s)) => println!("{arg}: {} bytes ({s})", s.bytes()),
            Ok(spec) => println!("{arg}: relative size {spec}"),
            Err(e) => println!("{e}"),
        }
    }
}
