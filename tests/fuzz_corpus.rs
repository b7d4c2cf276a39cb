//! The fuzzers' corpora, replayed: every input any fuzz target in `fuzz/`
//! was seeded with, or found and kept (`fuzz/corpus/<target>/`), goes
//! through the same entry point in `corral::fuzzing`, so a crash found once
//! stays fixed on stable Rust, without the fuzzer.

use std::path::PathBuf;

use crate::support::workspace;

/// Every file of `fuzz/corpus/<target>`, in name order.
fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = workspace().join("fuzz/corpus").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} holds no inputs", dir.display());
    files
        .into_iter()
        .map(|path| {
            let data = std::fs::read(&path).unwrap();
            (path, data)
        })
        .collect()
}

fn replay(target: &str, run: fn(&[u8])) {
    for (path, data) in corpus(target) {
        let outcome = std::panic::catch_unwind(|| run(&data));
        assert!(outcome.is_ok(), "{} fails again", path.display());
    }
}

#[test]
fn the_config_corpus_replays() {
    replay("config", corral::fuzzing::config);
}

#[test]
fn the_sql_corpus_replays() {
    replay("sql", corral::fuzzing::sql);
}

#[test]
fn the_guest_response_corpus_replays() {
    replay("guest_response", corral::fuzzing::guest_response);
}

#[test]
fn the_http_request_corpus_replays() {
    replay("http_request", corral::fuzzing::http_request);
}
