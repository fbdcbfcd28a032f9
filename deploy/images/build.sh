#!/usr/bin/env bash
# `make image`: builds ghcr.io/fleetprof/fleetprof and fleetprof-agent with
# Docker (BuildKit) from the repository root, stamped with $VERSION.
#   VERSION   image tag and --version of the binaries (default: git describe)
#   REGISTRY  image name prefix (default: ghcr.io/fleetprof)
#   PLATFORMS e.g. linux/amd64,linux/arm64 to build with buildx (default: this host's)
#   PUSH=1    push the images (buildx --push, or docker push)
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
VERSION="${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}"
REGISTRY="${REGISTRY:-ghcr.io/fleetprof}"
images=("fleetprof:deploy/images/Dockerfile.fleet" "fleetprof-agent:deploy/images/Dockerfile.agent")

commands() {
  for i in "${images[@]}"; do
    name=${i%%:*} file=${i#*:}
    if [[ -n "${PLATFORMS:-}" ]]; then
      echo "docker buildx build --platform $PLATFORMS -f $file --build-arg VERSION=$VERSION -t $REGISTRY/$name:$VERSION ${PUSH:+--push }."
    else
      echo "docker build -f $file --build-arg VERSION=$VERSION -t $REGISTRY/$name:$VERSION ."
      [[ -z "${PUSH:-}" ]] || echo "docker push $REGISTRY/$name:$VERSION"
    fi
  done
}

if ! command -v docker >/dev/null 2>&1 || ! timeout 20 docker info >/dev/null 2>&1; then
  echo "make image: no Docker engine here (docker CLI missing or its daemon unreachable); nothing was built." >&2
  echo "On a machine with Docker (BuildKit), from $root, these commands build the images:" >&2
  commands | sed 's/^/  /' >&2
  exit 1
fi
export DOCKER_BUILDKIT=1
commands | while read -r cmd; do
  echo "+ $cmd"
  eval "$cmd"
done
