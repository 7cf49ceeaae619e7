# Sourced by scripts/setup, scripts/test and scripts/demo: puts the tools scripts/setup may have installed on PATH.
# A Go toolchain fetched by setup (only when the machine's is missing or too old) comes first; the usual
# /usr/local/go comes after whatever PATH already has; uv installed by setup lives in its own venv.
AMBIENT_TOOLS="${AMBIENT_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/ambient-tools}"
GO_FALLBACK_VERSION="1.24.13"  # the 1.24 line Kubernetes 1.33 is built with; setup passes it to fetch_go.py
[ -x "$AMBIENT_TOOLS/go$GO_FALLBACK_VERSION/bin/go" ] && PATH="$AMBIENT_TOOLS/go$GO_FALLBACK_VERSION/bin:$PATH"
[ -x /usr/local/go/bin/go ] && PATH="$PATH:/usr/local/go/bin"
[ -x "$AMBIENT_TOOLS/bin/uv" ] && PATH="$PATH:$AMBIENT_TOOLS/bin"
export PATH AMBIENT_TOOLS
