//! Real Node.js of each Lambda Node runtime, as `scripts/setup` installs them (the official
//! Linux binaries from the npm registry, under [`NODE_ROOT`]), and `tests/node/runtime.js`, a
//! Lambda runtime written with Node's own clients.

use std::path::PathBuf;

use crate::warden::workspace_root;

/// Where `scripts/setup` puts one directory per Node.js version (`<version>/bin/node`).
pub const NODE_ROOT: &str = "/usr/local/lib/egress-warden-test-node";

/// The Node.js version of each Lambda runtime the tests cover: nodejs20.x, and the first
/// release with `NODE_USE_ENV_PROXY` (22.21) and a 24 LTS for nodejs22.x and nodejs24.x.
pub const LAMBDA_NODE_VERSIONS: [(&str, &str); 3] = [
    ("nodejs20.x", "20.19.5"),
    ("nodejs22.x", "22.21.0"),
    ("nodejs24.x", "24.11.0"),
];

/// `bin/node` of `version`, or why it is missing and how to get it.
pub fn node_binary(version: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(NODE_ROOT)
        .join(version)
        .join("bin")
        .join("node");
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "{} is missing: scripts/setup installs Node.js {version} there",
            path.display()
        ))
    }
}

/// `tests/node/runtime.js`.
pub fn node_runtime_script() -> PathBuf {
    workspace_root()
        .join("tests")
        .join("node")
        .join("runtime.js")
}
