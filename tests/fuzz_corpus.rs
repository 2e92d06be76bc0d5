//! Replays the kept fuzz corpus (fuzz/corpus/<target>/) through the same
//! harness the cargo-fuzz targets run (fuzz/harness.rs), so an input that
//! once found a bug, or reached new code, is tried on every test run.
//! Fuzzing itself: fuzz/README.md.

use std::path::PathBuf;

#[path = "../fuzz/harness.rs"]
mod harness;

fn replay(target: &str) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("corpus entry").path())
        .filter(|path| path.is_file())
        .collect();
    assert!(!files.is_empty(), "{} is empty", dir.display());
    files.sort();
    for path in files {
        let data = std::fs::read(&path).expect("corpus file");
        // The panic's own message is printed first; this names the input.
        if std::panic::catch_unwind(|| harness::run(target, &data)).is_err() {
            panic!("{target} failed on {}", path.display());
        }
    }
}

#[test]
fn stomp_decoder_corpus() {
    replay("stomp_decoder");
}

#[test]
fn sockjs_frame_corpus() {
    replay("sockjs_frame");
}

#[test]
fn cdr_corpus() {
    replay("cdr");
}

#[test]
fn forwarded_for_corpus() {
    replay("forwarded_for");
}
