//! Command-line flags of `cargo xtask`.

use clap::{Args, Parser, Subcommand};

/// diskforge developer tasks.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", version, about)]
pub struct Xtask {
    /// The task to run.
    #[command(subcommand)]
    pub task: Task,
}

/// The tasks.
#[derive(Debug, Subcommand)]
pub enum Task {
    /// Install (apt-get) every system tool the tests use that is missing.
    Deps(DepsArgs),
    /// Run the tests in vm-tests/ inside a QEMU VM.
    VmTest(VmTestArgs),
    /// Everything CI runs: deps, fmt check, clippy, cargo test, vm-test.
    Ci(CiArgs),
    /// Benchmarks side by side with the conventional tools.
    Bench(BenchArgs),
    /// The README's main job: build the installer-like ISO, remaster it with a kickstart and
    /// an implanted MD5, and boot the result in QEMU.
    Demo(DemoArgs),
    /// Build the tools and write their man pages and shell completions to target/dist
    /// (optionally installing binaries, man pages and completions under a prefix).
    Dist(DistArgs),
    /// Every tool through failure: a fault at each step, signals, SIGKILL, 8 parallel runs,
    /// the hostile-input corpus; prints one table (exit 1 when anything hung, crashed,
    /// escaped or leaked).
    Hardening(HardeningArgs),
}

/// `cargo xtask deps`
#[derive(Debug, Args)]
pub struct DepsArgs {
    /// Only report what is missing; install nothing (exit 1 when something is missing).
    #[arg(long)]
    pub check: bool,
}

/// `cargo xtask vm-test`
#[derive(Debug, Args, Clone)]
pub struct VmTestArgs {
    /// Run only tests whose name contains this string.
    #[arg(long)]
    pub filter: Option<String>,
    /// Whole-VM timeout in seconds (boot + all tests).
    #[arg(long, default_value_t = 900)]
    pub timeout: u64,
    /// Run every test even after a failure (default: stop at the first failure).
    #[arg(long)]
    pub keep_going: bool,
    /// Boot the same VM into an interactive shell on this terminal instead of running tests.
    #[arg(long)]
    pub shell: bool,
    /// Build the test binary in release mode.
    #[arg(long)]
    pub release: bool,
    /// Memory for the VM in MiB.
    #[arg(long, default_value_t = 4096)]
    pub memory: u32,
}

/// `cargo xtask ci`
#[derive(Debug, Args)]
pub struct CiArgs {
    /// Skip the VM tests.
    #[arg(long)]
    pub no_vm: bool,
}

/// `cargo xtask bench`
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// What to benchmark: loop, mkfs, iso, layers, blockdev, build (all when omitted).
    pub area: Option<String>,
    /// Smaller inputs and fewer rounds (for a quick check that the bench still works).
    #[arg(long)]
    pub quick: bool,
    /// With `build`: diskimage-builder 3.43 (installed into a venv under the target dir when
    /// missing) against ours on `debian-minimal`, cold and warm, per phase (several minutes;
    /// needs the Debian mirror the host's apt uses).
    #[arg(long)]
    pub vs_dib: bool,
}

/// `cargo xtask demo`
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `cargo xtask dist`
#[derive(Debug, Args)]
pub struct DistArgs {
    /// Also install binaries (PREFIX/bin), man pages (PREFIX/share/man/man1) and completions
    /// (PREFIX/share/{bash-completion/completions,zsh/site-functions,fish/vendor_completions.d}).
    #[arg(long, value_name = "PREFIX")]
    pub install: Option<std::path::PathBuf>,
    /// Build the tools in the dev profile instead of release (quicker; for checks).
    #[arg(long)]
    pub debug: bool,
}

/// `cargo xtask hardening`
#[derive(Debug, Args)]
pub struct HardeningArgs {
    /// Fewer signal/kill rounds and a corpus subset (what CI runs).
    #[arg(long)]
    pub quick: bool,
    /// Run one group only: faults, signals, parallel, corpus.
    #[arg(long)]
    pub only: Option<String>,
    /// Seed for the random signal and kill times (default: the clock; printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Print the table as JSON.
    #[arg(long)]
    pub json: bool,
}
