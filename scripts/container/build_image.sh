#!/bin/bash
# Build the bids_ketamine image from the Dockerfile, with Docker or, without a daemon, buildah.
#
#   scripts/container/build_image.sh [TAG]        (default bidsketamine/bids_ketamine:VERSION)
#
# Environment:
#   BUILDER=docker|buildah   default: docker where installed, else buildah (root, Debian's buildah)
#   TEMPLATEFLOW_PREFETCH=0  build without the TemplateFlow files (no access to TemplateFlow)
#   CONSTRAINTS=FILE         pin library versions with a pip constraints file (buildah only)
#   CA_BUNDLE=FILE           CA bundle of a TLS-intercepting proxy, for pip in the build
#                            (buildah only; default: PIP_CERT, else pip's global.cert setting)
#   BUILDAH_OPTS             global buildah options, e.g. "--storage-driver vfs"
# Then: docker save TAG -o bids_ketamine.tar (or buildah push TAG docker-archive:bids_ketamine.tar)
# and scripts/container/build_sif.sh bids_ketamine.tar for Apptainer/Singularity.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
version=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$repo/bids_ketamine/__init__.py")
tag=${1:-bidsketamine/bids_ketamine:$version}
builder=${BUILDER:-$(command -v docker >/dev/null 2>&1 && echo docker || echo buildah)}
build_args=(--build-arg "VERSION=$version"
            --build-arg "BUILD_DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
            --build-arg "VCS_REF=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)"
            --build-arg "TEMPLATEFLOW_PREFETCH=${TEMPLATEFLOW_PREFETCH:-1}")

case "$builder" in
docker)
    docker build "${build_args[@]}" -t "$tag" "$repo" ;;
buildah)
    read -r -a buildah_opts <<<"${BUILDAH_OPTS:-}"
    mounts=()
    # Read-only mounts outside /etc/ssl/certs (the ca-certificates package rewrites that folder).
    ca=${CA_BUNDLE:-${PIP_CERT:-$(python3 -m pip config list 2>/dev/null \
        | sed -n "s/^global\.cert='\(.*\)'\$/\1/p" | head -n 1)}}
    if [[ -n "$ca" ]]; then
        [[ -f "$ca" ]] || { echo "CA bundle '$ca' not found" >&2; exit 2; }
        conf=$(mktemp -d)
        trap 'rm -rf "$conf"' EXIT
        printf '[global]\ncert = /run/build-ca/ca-bundle.crt\n' > "$conf/pip.conf"
        chmod -R a+rX "$conf"
        mounts+=(--volume "$(realpath "$ca"):/run/build-ca/ca-bundle.crt:ro"
                 --volume "$conf/pip.conf:/etc/pip.conf:ro")
    fi
    if [[ -n "${CONSTRAINTS:-}" ]]; then
        mounts+=(--volume "$(realpath "$CONSTRAINTS"):/run/build-constraints.txt:ro")
        build_args+=(--build-arg PIP_CONSTRAINT=/run/build-constraints.txt)
    fi
    buildah "${buildah_opts[@]}" bud --isolation chroot --layers --force-rm "${build_args[@]}" \
        "${mounts[@]}" -t "$tag" "$repo" ;;
*)
    echo "BUILDER must be docker or buildah, not '$builder'" >&2; exit 2 ;;
esac
echo "built $tag with $builder" >&2
