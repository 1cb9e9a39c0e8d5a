//! A run killed halfway through its teardown leaves a directory whose lock is free; the next
//! `reclaim` removes it, while a live run's directory stays.
use diskforge_rundir::{RunDir, reclaim};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let parent = tempfile::tempdir()?;
    let live = RunDir::create(parent.path(), "example-run.")?;
    // A dead run: created and filled, then "killed" (its lock released without removal).
    let dead = RunDir::create(parent.path(), "example-run.")?;
    std::fs::write(dead.path().join("half-written"), b"...")?;
    let dead = dead.keep();
    let gone = reclaim(parent.path(), "example-run.", |p| {
        println!("undo for {}", p.display());
        Ok(())
    })?;
    println!(
        "reclaimed {gone:?}; live run still at {}",
        live.path().display()
    );
    assert_eq!(gone, [dead]);
    live.remove()?;
    Ok(())
}
