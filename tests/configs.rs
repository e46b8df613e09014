//! Every example in `configs/` must stay valid.

use std::path::Path;

#[test]
fn every_example_config_parses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "expected at least 5 example configs, found {files:?}");
    for file in &files {
        if let Err(errors) = switchyard::config::load(file) {
            let name = file.display().to_string();
            let rendered: Vec<_> = errors.iter().map(|e| e.render(&name)).collect();
            panic!("{name} is invalid:\n{}", rendered.join("\n"));
        }
    }
}
