//! The Kubernetes manifests of `deploy/k8s`, checked as `kubectl apply -k` would take them:
//! the kustomization lists every manifest in the folder and nothing else, rendering it (the
//! listed files in order, as kustomize does without generators or patches) gives objects
//! with distinct kinds and names, and every object passes the Kubernetes schemas in strict
//! mode (`kubernetes-validate` from PyPI: unknown fields are errors), which a broken copy
//! does not. The Switchyard config inside the ConfigMap is checked by tests/configs.rs.
//! Without the validator the test says so and passes, except under CI, where it fails.

use std::path::Path;
use std::process::{Command, Stdio};

use yaml_rust2::{Yaml, YamlLoader};

fn k8s_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/k8s")
}

fn validator() -> bool {
    let ok = Command::new("kubernetes-validate")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(std::env::var_os("CI").is_none(), "kubernetes-validate (PyPI) is required under CI");
        eprintln!("skipping: needs kubernetes-validate (pip install kubernetes-validate)");
    }
    ok
}

/// Validates `text` (one or more YAML documents) in strict mode: (passed, output).
fn validate(dir: &Path, name: &str, text: &str) -> (bool, String) {
    let file = dir.join(name);
    std::fs::write(&file, text).unwrap();
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "--no-warn"])
        .arg(&file)
        .output()
        .expect("kubernetes-validate runs");
    (
        out.status.success(),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    )
}

/// What `kubectl kustomize deploy/k8s` renders: the resources in order, one stream.
fn render() -> (Vec<String>, String) {
    let k = std::fs::read_to_string(k8s_dir().join("kustomization.yaml")).unwrap();
    let docs = YamlLoader::load_from_str(&k).expect("kustomization.yaml is YAML");
    let k = &docs[0];
    assert_eq!(k["kind"].as_str(), Some("Kustomization"));
    // Nothing but resources: a generator or patch would need kustomize itself.
    let keys: Vec<&str> = k.as_hash().unwrap().keys().filter_map(Yaml::as_str).collect();
    assert_eq!(keys, ["apiVersion", "kind", "resources"], "only resources are rendered here");
    let files: Vec<String> = k["resources"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    let mut out = String::new();
    for f in &files {
        out.push_str(&std::fs::read_to_string(k8s_dir().join(f)).unwrap_or_else(|e| panic!("{f}: {e}")));
        out.push_str("\n---\n");
    }
    (files, out)
}

#[test]
fn the_manifests_render_as_a_kustomization_and_pass_the_kubernetes_schemas() {
    let (files, rendered) = render();
    // Every manifest of the folder is listed, and only those.
    let mut on_disk: Vec<String> = std::fs::read_dir(k8s_dir())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    on_disk.sort();
    let mut listed = files.clone();
    listed.sort();
    assert_eq!(listed, on_disk, "kustomization.yaml lists every manifest");
    // Distinct objects, each with a kind, a name and an apiVersion.
    let objects: Vec<Yaml> = YamlLoader::load_from_str(&rendered)
        .expect("the rendered stream is YAML")
        .into_iter()
        .filter(|d| !d.is_null() && !d.is_badvalue())
        .collect();
    let mut ids: Vec<String> = objects
        .iter()
        .map(|o| {
            let (kind, name) = (o["kind"].as_str().expect("kind"), o["metadata"]["name"].as_str().expect("name"));
            assert!(o["apiVersion"].as_str().is_some(), "{kind}/{name} has an apiVersion");
            format!("{kind}/{}/{name}", o["metadata"]["namespace"].as_str().unwrap_or("-"))
        })
        .collect();
    let n = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n, "two objects share a kind and name: {ids:?}");
    for kind in ["Deployment/", "Service/", "ConfigMap/"] {
        assert!(ids.iter().any(|i| i.starts_with(kind)), "a {kind} is rendered: {ids:?}");
    }
    if !validator() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (ok, out) = validate(dir.path(), "rendered.yaml", &rendered);
    assert!(ok, "the rendered manifests fail the schemas:\n{out}");
    assert_eq!(out.matches(" passed for resource ").count(), n, "every object was checked:\n{out}");
    // The validator is not a yes-man: a field the schema does not know, and a wrong type.
    let (ok, out) = validate(dir.path(), "typo.yaml", &rendered.replacen("replicas:", "replicaz:", 1));
    assert!(!ok, "an unknown field passed:\n{out}");
    let bad = rendered.replacen("containerPort: ", "containerPort: not-a-number # ", 1);
    assert_ne!(bad, rendered, "the deployment names a container port");
    let (ok, out) = validate(dir.path(), "type.yaml", &bad);
    assert!(!ok, "a port that is not a number passed:\n{out}");
}
