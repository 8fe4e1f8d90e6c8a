# A local stand-in for `rayproject/ray:<version>-py311-gpu` (the trainer's base), built on
# the Python base: the same user as Ray's image (`ray`, uid 1000, group `users` gid 100,
# home /home/ray) owning the Python environment that `pip install` adds to, so the trainer
# image runs as pods run it. No CUDA toolkit and no preinstalled Ray: the trainer's
# install brings Ray at the pinned version. Not for publishing (see docs/images.md).
ARG PYTHON_IMAGE=localhost/polypythia-python:3.11-bookworm
FROM ${PYTHON_IMAGE}
RUN useradd --uid 1000 --gid 100 --create-home --home-dir /home/ray --shell /bin/bash ray \
    && python -m venv /home/ray/venv \
    && chown -R 1000:100 /home/ray/venv
ENV PATH=/home/ray/venv/bin:$PATH \
    HOME=/home/ray
USER 1000:100
WORKDIR /home/ray
CMD ["python"]
