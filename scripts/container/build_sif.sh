#!/bin/bash
# Build an Apptainer/Singularity image (SIF) of bids_ketamine from its Docker image.
#
#   scripts/container/build_sif.sh SOURCE [OUT.sif]
#
# SOURCE is one of
#   docker://bidsketamine/bids_ketamine:0.1.0          a registry
#   docker-daemon://bidsketamine/bids_ketamine:0.1.0   the local Docker daemon
#   bids_ketamine-0.1.0.tar                            an archive from `docker save` or
#                                                      `buildah push IMAGE docker-archive:FILE`
# OUT defaults to bids_ketamine.sif. See docs/hpc.md for running it.
set -euo pipefail

if [[ $# -lt 1 || $# -gt 2 ]]; then
    sed -n '2,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
fi
source=$1
out=${2:-bids_ketamine.sif}

if command -v apptainer >/dev/null 2>&1; then
    builder=apptainer
elif command -v singularity >/dev/null 2>&1; then
    builder=singularity
else
    echo "neither apptainer nor singularity is installed (module load apptainer?)" >&2
    exit 1
fi

case "$source" in
    docker://*|docker-daemon://*|docker-archive://*) uri=$source ;;
    *.tar|*.tar.gz)
        [[ -f "$source" ]] || { echo "archive '$source' not found" >&2; exit 2; }
        uri="docker-archive://$source" ;;
    *)
        echo "SOURCE '$source' is neither docker://, docker-daemon://, nor a .tar archive" >&2
        exit 2 ;;
esac

echo "$builder build $out $uri" >&2
"$builder" build "$out" "$uri"
"$builder" run "$out" --version
