#!/usr/bin/env bash
# Build IBM aihwkit 1.2.0 from source into benchmarks/.aihwkit-venv (git-ignored), for the peer check
#   python benchmarks/bench_cim_peers.py --only aihwkit
# aihwkit is never a lowbit dependency. PyPI has only its source distribution: the build compiles the
# rpu_base C++ extension (pybind11, CMake, a CBLAS) against the installed torch, so torch is pinned to
# lowbit's torch==2.13.0 (CPU) and installed first, and the build runs without isolation (an isolated
# build would compile against whatever torch pip picks, and the extension would not load).
# Time (2 cores shared with other work, MAX_JOBS=2): the compile took 18.5 min at nice 5 under load ~8 and
# 50 min at nice 15 under load ~15-18; installing the dependencies takes 1-3 min more.
# Needs: apt (libopenblas-dev for cblas.h), a C++ compiler, python3-venv, network access to PyPI.
set -euo pipefail
cd "$(dirname "$0")"
VENV=.aihwkit-venv

if ! [ -e /usr/include/cblas.h ] && ! [ -e /usr/include/x86_64-linux-gnu/cblas.h ] && ! [ -e /usr/include/openblas/cblas.h ]; then
  # the runtime libblas.so.3 alone is not enough: the build needs OpenBLAS's headers (cblas.h)
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libopenblas-dev)
fi

python3 -m venv "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
# mypy: aihwkit's CMake runs mypy's `stubgen` on rpu_base right after linking it; without it the build fails
# at its very last step ("stubgen: not found", seen here after 50 minutes of compiling)
pip install -q torch==2.13.0 'scikit-build>=0.18.1' 'pybind11>=3.0.1' 'setuptools>=77' wheel cmake ninja \
  numpy scipy requests tqdm protobuf mypy
# torch repeated on the command line so the resolver cannot move it while installing aihwkit's requirements
# --no-clean keeps the build folder (pip's temp dir) so a failure late in the build can be looked at
MAX_JOBS=2 CMAKE_BUILD_PARALLEL_LEVEL=2 pip install -v --no-clean --no-build-isolation torch==2.13.0 aihwkit==1.2.0
# lowbit runs from src/ (PYTHONPATH=src, set by the benchmark); its digits loader needs scikit-learn
pip install -q scikit-learn safetensors torch==2.13.0
python -c "import aihwkit, torch; from aihwkit.simulator.rpu_base import tiles; print('aihwkit', aihwkit.__version__, 'torch', torch.__version__)"
