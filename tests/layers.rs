//! The dependency rule of `src/` (see `src/lib.rs`), checked on the source text so that it
//! holds without anyone remembering it: `api` imports nothing of ours; the shared leaves
//! import only `api` and each other; the operator, the gateway, the simulator and the
//! control-plane harness import `api` and the leaves and never each other; only `local.rs`
//! and `main.rs` wire the parts together.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const LEAVES: [&str; 15] = [
    "billing",
    "address_pool",
    "kubevirt",
    "ids",
    "credit_ledger",
    "tokens",
    "watch_cache",
    "preflight",
    "flags",
    "shutdown",
    "timestamps",
    "memory",
    "probe",
    "telemetry",
    "client",
];
const PARTS: [&str; 4] = ["operator", "gateway", "simulator", "controlplane"];

/// The top-level module a file of `src/` belongs to (`gateway` for `src/gateway/cache.rs`).
fn module_of(path: &Path, src: &Path) -> String {
    let rel = path.strip_prefix(src).unwrap();
    let first = rel.components().next().unwrap().as_os_str().to_string_lossy().into_owned();
    first.trim_end_matches(".rs").to_string()
}

/// What a module may import of ours (besides itself); `None`: anything.
fn allowed(module: &str) -> Option<BTreeSet<&'static str>> {
    let leaves_and_api = || LEAVES.iter().copied().chain(["api"]).collect::<BTreeSet<_>>();
    match module {
        "api" => Some(BTreeSet::new()),
        m if LEAVES.contains(&m) || PARTS.contains(&m) => Some(leaves_and_api()),
        "testbed" => Some(leaves_and_api().into_iter().chain(["controlplane"]).collect()),
        "local" | "main" | "lib" => None,
        other => panic!("src/{other}: a module the layer rule does not know; add it to tests/layers.rs"),
    }
}

/// The modules of ours a source text names: `crate::x`, `crate::{x, y::z}` and
/// `vps_operator::x` (outside the library, `main.rs`).
fn imports(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for prefix in ["crate::", "vps_operator::"] {
        let mut rest = text;
        while let Some(at) = rest.find(prefix) {
            rest = &rest[at + prefix.len()..];
            if let Some(group) = rest.strip_prefix('{') {
                // The first name of each item at the group's own depth.
                let (mut depth, mut at_item) = (0, true);
                for (i, c) in group.char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        ',' if depth == 0 => at_item = true,
                        c if at_item && (c.is_alphanumeric() || c == '_') => {
                            let name: String =
                                group[i..].chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                            out.insert(name);
                            at_item = false;
                        }
                        _ => {}
                    }
                }
            } else {
                let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                out.insert(name);
            }
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_module_imports_only_the_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut broken = Vec::new();
    for file in &files {
        let module = module_of(file, &src);
        let Some(allowed) = allowed(&module) else { continue };
        let text = std::fs::read_to_string(file).unwrap();
        for name in imports(&text) {
            if name != module && !allowed.contains(name.as_str()) {
                broken.push(format!("{} names crate::{name}", file.strip_prefix(&src).unwrap().display()));
            }
        }
    }
    assert!(broken.is_empty(), "the dependency rule is broken:\n{}", broken.join("\n"));
}

#[test]
fn the_reader_of_imports_sees_every_form() {
    let text = "use crate::api::X;\nuse crate::{gateway::app, ids, tokens::{a, b}};\nlet x = crate::operator::run;";
    let found: Vec<String> = imports(text).into_iter().collect();
    assert_eq!(found, ["api", "gateway", "ids", "operator", "tokens"]);
    assert!(!allowed("gateway").unwrap().contains("operator"));
    assert!(allowed("local").is_none());
}
