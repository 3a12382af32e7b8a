#!/bin/bash
# Make the base image `debian:bookworm-slim` from Debian's own packages, where Docker Hub
# cannot be reached (an offline mirror, a proxy that blocks registries). Needs root,
# mmdebstrap and buildah (Debian: apt-get install mmdebstrap buildah).
#
#   scripts/container/debian_base.sh [TARBALL]
#
# Writes TARBALL (default debian-bookworm-minbase.tar; a valid one younger than 30 days is
# reused) and imports it into buildah's storage as docker.io/library/debian:bookworm-slim
# (skipped when the image there came from the same tarball). Buildah options (storage
# root, driver) come from BUILDAH_OPTS, e.g. BUILDAH_OPTS="--storage-driver vfs".
set -euo pipefail

tarball=${1:-debian-bookworm-minbase.tar}
image=docker.io/library/debian:bookworm-slim
read -r -a buildah_opts <<<"${BUILDAH_OPTS:-}"
buildah=(buildah "${buildah_opts[@]}")

valid_tarball() {  # a minbase bookworm root file system: Debian 12 with apt and a shell
    local listing
    [[ -s "$1" ]] && listing=$(tar -tf "$1" 2>/dev/null) || return 1
    grep -qx './usr/bin/apt-get' <<<"$listing" && grep -qx './usr/bin/sh' <<<"$listing" \
        && [[ "$(tar -xOf "$1" ./etc/debian_version)" == 12.* ]]
}

if valid_tarball "$tarball" && [[ -n "$(find "$tarball" -mtime -30)" ]]; then
    echo "reusing $tarball (less than 30 days old)" >&2
else
    # The apt sources of the official image (bookworm, bookworm-updates, security);
    # documentation and man pages left out as in the -slim images.
    tmp="$tarball.tmp.$$"
    trap 'rm -f "$tmp"' EXIT
    mmdebstrap --variant=minbase --format=tar \
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        bookworm "$tmp" \
        "deb http://deb.debian.org/debian bookworm main" \
        "deb http://deb.debian.org/debian bookworm-updates main" \
        "deb http://deb.debian.org/debian-security bookworm-security main"
    valid_tarball "$tmp" || { echo "mmdebstrap wrote no usable bookworm root file system" >&2; exit 1; }
    mv "$tmp" "$tarball"
    trap - EXIT
fi

# Import it, unless the image in buildah's storage was made from this very tarball.
digest=$(sha256sum "$tarball" | cut -d' ' -f1)
if [[ "$("${buildah[@]}" inspect --type image --format '{{index .OCIv1.Config.Labels "org.opencontainers.image.base.digest"}}' \
        "$image" 2>/dev/null)" == "$digest" ]]; then
    echo "$image (already imported from $tarball)"
    exit 0
fi
container=$("${buildah[@]}" from scratch)
trap '"${buildah[@]}" rm "$container" >/dev/null' EXIT
"${buildah[@]}" add "$container" "$tarball" /
"${buildah[@]}" config --cmd bash --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --label org.opencontainers.image.source=mmdebstrap \
    --label "org.opencontainers.image.base.digest=$digest" "$container"
"${buildah[@]}" commit --rm "$container" "$image" >/dev/null
trap - EXIT
echo "$image"
