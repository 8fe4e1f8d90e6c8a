# A local stand-in for the official `python:3.11-slim-bookworm` image, for machines that
# cannot pull from a registry: Debian bookworm (debootstrap minbase, imported by
# tools/images/base-image.sh) with Debian's own Python 3.11. Not for publishing: the
# released images build on the official base (see docs/images.md).
ARG ROOTFS_IMAGE=localhost/polypythia-rootfs:bookworm
FROM ${ROOTFS_IMAGE}
# The official image's conventions: `python` and `pip` on PATH, UTF-8 locale.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
       python3 python3-venv python3-pip python-is-python3 ca-certificates \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \
    && rm -f /usr/lib/python3.11/EXTERNALLY-MANAGED
ENV LANG=C.UTF-8
CMD ["python3"]
