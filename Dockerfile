# bids_ketamine as a container: a BIDS App whose entry point is `bids-ketamine`.
#
#   docker build -t bidsketamine/bids_ketamine:0.1.0 .
#   docker run --rm -v /data/bids:/data:ro -v /data/out:/out \
#       bidsketamine/bids_ketamine:0.1.0 /data /out participant --participant-label 01
#
# Build scripts (Docker, daemonless buildah, Apptainer/Singularity): scripts/container/.
# Build arguments:
#   TEMPLATEFLOW_PREFETCH=1  fetch the TemplateFlow files at build time (0: none; the app then
#                            uses nilearn's MNI152NLin2009aSym, shipped with nilearn)
#   PIP_CONSTRAINT=FILE      a pip constraints file visible to the build (pin library versions)
FROM debian:bookworm-slim

# Debian's Python 3.11; the app lives in its own virtual environment, first on PATH.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
       python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

# TEMPLATEFLOW_HOME: templates fetched below, read-only at run time (no downloads then).
# BIDS_KETAMINE_CACHE: where the app caches converted template files; must be writable.
# NUMBA_CACHE_DIR: the MP-PCA kernels compiled at build time (below), reused by any user.
# NIPYPE_NO_ET / NO_ET: no network check by nipype (compute nodes are often offline).
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    VIRTUAL_ENV=/opt/venv \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TEMPLATEFLOW_HOME=/opt/templateflow \
    TEMPLATEFLOW_AUTOUPDATE=0 \
    BIDS_KETAMINE_CACHE=/tmp/bids_ketamine_cache \
    MPLCONFIGDIR=/tmp/matplotlib \
    NUMBA_CACHE_DIR=/opt/numba_cache \
    NIPYPE_NO_ET=1 \
    NO_ET=1

# The same install step as the README: `python3 -m pip install .` from the source tree.
ARG PIP_CONSTRAINT=/dev/null
COPY . /src/bids_ketamine
RUN cd /src/bids_ketamine \
    && python3 -m pip install --no-cache-dir . \
    && cd / && rm -rf /src/bids_ketamine \
    && bids-ketamine --version \
    && python3 -c "import numpy as np; from bids_ketamine.dwi.denoise import mppca; \
mppca(np.random.default_rng(0).normal(100, 10, (12, 12, 12, 20)))" \
    && chmod -R a+rwX "${NUMBA_CACHE_DIR}"

ARG TEMPLATEFLOW_PREFETCH=1
# TemplateFlow files the app uses (MNI152NLin2009cAsym, 1 mm and 2 mm): T1w, brain mask,
# GM/WM/CSF probability maps. Fetched at build time, then made read-only.
RUN if [ "$TEMPLATEFLOW_PREFETCH" = 1 ]; then python3 -c "import templateflow.api as tf; \
files = [tf.get('MNI152NLin2009cAsym', resolution=res, extension='.nii.gz', raise_empty=True, **query) \
         for res in (1, 2) \
         for query in (dict(desc=None, suffix='T1w'), dict(desc='brain', suffix='mask'), \
                       dict(label='GM', suffix='probseg'), dict(label='WM', suffix='probseg'), \
                       dict(label='CSF', suffix='probseg'))]; \
print(*files, sep='\n')"; \
    else echo "TEMPLATEFLOW_PREFETCH=$TEMPLATEFLOW_PREFETCH: no TemplateFlow files (nilearn's template is used)"; fi \
    && mkdir -p "${TEMPLATEFLOW_HOME}" \
    && chown -R root:root "${TEMPLATEFLOW_HOME}" \
    && chmod -R a+rX,a-w "${TEMPLATEFLOW_HOME}"

# Run as an unprivileged user.
RUN useradd --create-home --uid 1000 --user-group --shell /bin/bash bidsapp
USER bidsapp
WORKDIR /home/bidsapp

# Build arguments that change with every build come last, so the steps above stay cached.
ARG VERSION=0.1.0
ARG BUILD_DATE=unknown
ARG VCS_REF=unknown
LABEL org.opencontainers.image.title="bids_ketamine" \
      org.opencontainers.image.description="BIDS App: longitudinal grey-matter mean diffusivity change and its relation to clinical response in two-arm trials" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.authors="bids_ketamine developers" \
      org.opencontainers.image.created="${BUILD_DATE}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.base.name="docker.io/library/debian:bookworm-slim"

ENTRYPOINT ["bids-ketamine"]
CMD ["--help"]
