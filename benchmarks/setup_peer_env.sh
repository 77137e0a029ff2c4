#!/usr/bin/env bash
# Build the SEPARATE Python environment in which the peer pipeline -- the `fer` package
# (PyPI, MIT: facenet-pytorch MTCNN + mini-Xception on TFLite) -- runs for the side-by-side
# speed benchmark (benchmarks/pipeline_speed.py --peer). It is never a dependency of emoadapt.
#
#   bash benchmarks/setup_peer_env.sh            # creates benchmarks/.peer-env (git-ignored)
#   PEER_ENV=/somewhere/else bash benchmarks/setup_peer_env.sh
#
# What is installed, and why only that:
#   * torch 2.13.0 CPU build first (from the local wheel directory when there is one,
#     $PIP_FIND_LINKS / /opt/wheels), then TensorFlow + tf-keras (fer imports tensorflow and
#     runs its emotion model with tf.lite.Interpreter). Order matters: torch before TF.
#   * facenet-pytorch 2.6.0 and fer 25.10.3 with --no-deps: their declared dependencies
#     include torchvision (a CUDA build on PyPI whose ops do not load next to the CPU torch),
#     opencv-contrib-python, moviepy, ffmpeg-python, pandas, matplotlib -- none of which
#     `from fer.fer import FER` + FER(mtcnn=True).detect_emotions needs.
#   * the light modules those two imports do need: opencv-python-headless<5 (fer reads
#     cv2.data.haarcascades even when mtcnn=True; OpenCV 5 headless has no cv2.data),
#     requests, Pillow, tqdm, and setuptools<81 (fer imports pkg_resources).
#   * torchvision is NOT installed: benchmarks/peer_fer.py registers the same minimal
#     stand-in (torchvision's CPU nms / batched_nms and to_tensor) that
#     scripts/builders/mtcnn.py's ensure_torchvision() uses to build our MTCNN models.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
env_dir="${PEER_ENV:-$here/.peer-env}"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null 2>&1 || python=python3

if [ ! -x "$env_dir/bin/python" ]; then
    "$python" -m venv "$env_dir"
fi
# keep the environment out of git without touching the repository's .gitignore
printf '*\n' > "$env_dir/.gitignore"
pip=("$env_dir/bin/python" -m pip install --disable-pip-version-check)

links=()
for d in ${PIP_FIND_LINKS:-} /opt/wheels; do
    [ -d "$d" ] && links+=(--find-links "$d")
done

"${pip[@]}" --upgrade pip
# 1. torch (CPU build; the local wheel is 2.13.0+cpu, preferred over the CUDA one on PyPI)
if ls /opt/wheels/torch-2.13.0+cpu-*.whl >/dev/null 2>&1; then
    "${pip[@]}" "${links[@]}" /opt/wheels/torch-2.13.0+cpu-*.whl
else
    "${pip[@]}" torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
fi
# 2. TensorFlow (fer's emotion model runs on tf.lite.Interpreter)
"${pip[@]}" "${links[@]}" tensorflow tf-keras
# 3. the peer packages, without their heavy/unusable declared dependencies
"${pip[@]}" --no-deps facenet-pytorch==2.6.0 fer==25.10.3
# 4. what `from fer.fer import FER` and facenet_pytorch import
"${pip[@]}" "opencv-python-headless<5" requests Pillow tqdm "setuptools<81"

"$env_dir/bin/python" - <<'EOF'
import torch  # first: torch before tensorflow
import importlib.metadata as md
print("peer env ready:", {p: md.version(p) for p in ("torch", "tensorflow", "facenet-pytorch", "fer", "opencv-python-headless")})
EOF
