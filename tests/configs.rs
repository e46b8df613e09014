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

/// The config shipped in `deploy/` is valid, and the Kubernetes ConfigMap carries the same
/// config (comments aside), so the image and the cluster run what `check` passed.
#[test]
fn the_deployment_config_is_valid_and_the_configmap_carries_the_same() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // The admin token is a Secret mounted at run time: a stand-in file here.
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("admin-token");
    std::fs::write(&token, "a-stand-in-token-for-the-test\n").unwrap();
    let parse = |name: &str, text: &str| {
        let text = text.replace("/var/run/secrets/switchyard/admin-token", token.to_str().unwrap());
        switchyard::config::parse(&text, Path::new("/etc/switchyard")).unwrap_or_else(|errors| {
            let rendered: Vec<_> = errors.iter().map(|e| e.render(name)).collect();
            panic!("{name} is invalid:\n{}", rendered.join("\n"))
        })
    };
    let shipped_text = std::fs::read_to_string(root.join("deploy/switchyard.yaml")).unwrap();
    let shipped = parse("deploy/switchyard.yaml", &shipped_text);
    // The block scalar under `switchyard.yaml: |`, indented by four spaces.
    let cm = std::fs::read_to_string(root.join("deploy/k8s/configmap.yaml")).unwrap();
    let embedded: String = cm
        .lines()
        .skip_while(|l| l.trim() != "switchyard.yaml: |")
        .skip(1)
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or("")))
        .collect();
    assert!(embedded.contains("listeners:"), "no config found in the ConfigMap");
    assert_eq!(parse("deploy/k8s/configmap.yaml", &embedded), shipped);
    // What the deployment relies on.
    assert!(shipped.listeners[0].proxy_protocol);
    assert!(!shipped.limits.trusted_proxies.is_empty());
    assert!(shipped.pools["chat"].backends[0].discover.is_some());
}
