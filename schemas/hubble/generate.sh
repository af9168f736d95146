#!/usr/bin/env bash
# Regenerate the Python code (*_pb2.py, *_pb2.pyi, *_pb2_grpc.py) for the Hubble-compatible protos.
#
# Import paths are rooted at the repository root (protoc -I .), so the generated modules are
# schemas.hubble.flow.flow_pb2, schemas.hubble.relay.relay_pb2, schemas.hubble.observer.observer_pb2(_grpc),
# schemas.hubble.peer.peer_pb2(_grpc). The generated files are checked in: a plain `pip install` needs no protoc.
#
# Checked-in code was generated with grpcio-tools 1.85.1 ("Protobuf Python Version: 7.35.1" gencode).
# Version constraints this creates at import time (hence the lower bounds in pyproject.toml):
#   - *_pb2.py call ValidateProtobufRuntimeVersion(7, 35, 1): the protobuf runtime must be >= 7.35.1
#     (and < 8), so pyproject.toml pins protobuf>=7.35.1,<8.
#   - *_pb2_grpc.py raise RuntimeError unless grpcio >= GRPC_GENERATED_VERSION (1.85.1), so
#     pyproject.toml pins grpcio>=1.85.1.
# If you regenerate with another grpcio-tools, check the "Protobuf Python Version" header and
# GRPC_GENERATED_VERSION in the output and move those lower bounds to match.
#
# Usage: schemas/hubble/generate.sh   (from anywhere; uses $PYTHON or the repo's .venv/bin/python)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo_root"
python="${PYTHON:-$repo_root/.venv/bin/python}"
if [[ ! -x "$python" ]]; then
  python="$(command -v python3)"
fi

protos=(
  schemas/hubble/flow/flow.proto
  schemas/hubble/relay/relay.proto
  schemas/hubble/observer/observer.proto
  schemas/hubble/peer/peer.proto
  schemas/messages/batch.proto
)

"$python" -m grpc_tools.protoc -I . \
  --python_out=. --pyi_out=. --grpc_python_out=. \
  "${protos[@]}"

# The generated *_pb2*.py files are excluded from ruff in pyproject.toml; the .pyi stubs are not matched by
# that pattern, so mark them as generated for ruff here (a comment line only; nothing else is changed).
for proto in "${protos[@]}"; do
  stub="${proto%.proto}_pb2.pyi"
  if ! head -n 1 "$stub" | grep -q '^# ruff: noqa'; then
    printf '%s\n%s\n' '# ruff: noqa' "$(cat "$stub")" > "$stub"
  fi
done

echo "generated with $("$python" -m pip show grpcio-tools 2>/dev/null | awk '/^Version:/ {print "grpcio-tools " $2}')"
