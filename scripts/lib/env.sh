# Sourced by scripts/setup, scripts/test and .ci/run: puts cargo and the console scripts of the
# first python3 (cargo-lambda, cfn-lint; with pyenv they are not on PATH until a rehash) on PATH.
case ":$PATH:" in *":$HOME/.cargo/bin:"*) ;; *) [ -d "$HOME/.cargo/bin" ] && PATH=$HOME/.cargo/bin:$PATH ;; esac
command -v cargo >/dev/null || { echo "cargo not found: install a Rust toolchain (rustup) first" >&2; exit 1; }
command -v python3 >/dev/null || { echo "python3 not found" >&2; exit 1; }
py_scripts=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
case ":$PATH:" in *":$py_scripts:"*) ;; *) PATH=$py_scripts:$PATH ;; esac
export PATH
