# Container images (included by the Makefile); see docs/images.md.
#   make images                       the three images on the official bases (needs a registry)
#   make images IMAGE_BASE=standin    on local stand-in bases (`make base-image`: debootstrap +
#                                     Debian's Python 3.11), for machines without a registry
#   make test-images                  builds the three images (cached layers: seconds when only
#                                     code changed), then runs tests/images as pods would
# Override IMAGE_REGISTRY / IMAGE_TAG / CONTAINER_ENGINE on the command line.

IMAGE_REGISTRY ?= ghcr.io/polypythia
IMAGE_TAG ?= $(shell sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$$/\1/p' charts/polypythia/Chart.yaml)
# podman or docker, whichever is installed (podman first: it needs no daemon).
CONTAINER_ENGINE ?= $(or $(shell command -v podman 2>/dev/null),$(shell command -v docker 2>/dev/null),docker)
HADOLINT ?= $(if $(wildcard .venv/bin/hadolint),.venv/bin/hadolint,hadolint)
# One Dockerfile, one target per image (operator, trainer, eval), built from the repository root.
DOCKERFILE := Dockerfile
DOCKERFILES := $(DOCKERFILE)
RAY_VERSION := $(shell sed -n 's/^ARG RAY_VERSION=//p' $(DOCKERFILE))
IMAGE_VERSION := $(shell sed -n 's/^version = "\(.*\)"$$/\1/p' pyproject.toml)

# Bases: the official images, or the local stand-ins that `make base-image` builds.
IMAGE_BASE ?= official
STANDIN_ROOTFS_IMAGE := localhost/polypythia-rootfs:bookworm
STANDIN_PYTHON_IMAGE := localhost/polypythia-python:3.11-bookworm
STANDIN_RAY_IMAGE := localhost/polypythia-ray:$(RAY_VERSION)-py311
ifeq ($(IMAGE_BASE),standin)
PYTHON_IMAGE ?= $(STANDIN_PYTHON_IMAGE)
RAY_IMAGE ?= $(STANDIN_RAY_IMAGE)
BASE_DEPS := base-image
else ifeq ($(IMAGE_BASE),official)
PYTHON_IMAGE ?= $(shell sed -n 's/^ARG PYTHON_IMAGE=//p' $(DOCKERFILE))
RAY_IMAGE ?= rayproject/ray:$(RAY_VERSION)-py311-gpu
BASE_DEPS :=
else
$(error IMAGE_BASE=$(IMAGE_BASE) is not allowed: use official or standin)
endif

OPERATOR_IMAGE := $(IMAGE_REGISTRY)/polypythia-operator:$(IMAGE_TAG)
TRAINER_IMAGE := $(IMAGE_REGISTRY)/polypythia-trainer:$(IMAGE_TAG)
EVAL_IMAGE := $(IMAGE_REGISTRY)/polypythia-eval:$(IMAGE_TAG)

# The host's network (apt and pip reach their mirrors as the host does), its pip CA bundle
# as a build secret (for TLS-intercepting proxies), labels with the project version.
BUILD_FLAGS = --network host --build-arg PYTHON_IMAGE=$(PYTHON_IMAGE) \
  --build-arg VERSION=$(IMAGE_VERSION) \
  $(if $(PIP_CERT),--secret id=pip_cert$(comma)src=$(PIP_CERT))
comma := ,
# The root .dockerignore keeps the context to what the Dockerfile copies; BuildKit finds it
# itself, podman is told (it would also read a .containerignore first).
IGNOREFILE = $(if $(findstring podman,$(notdir $(CONTAINER_ENGINE))),--ignorefile .dockerignore)
# $(1): the target, also the pyproject extra its requirement stages install; $(2): the tag.
BUILD = DOCKER_BUILDKIT=1 $(CONTAINER_ENGINE) build $(BUILD_FLAGS) $(3) $(IGNOREFILE) \
  --target $(1) --build-arg EXTRA=$(1) -f $(DOCKERFILE) -t $(2) .

.PHONY: images image-operator image-trainer image-eval images-push lint-images base-image \
  test-images image-sizes

images: image-operator image-trainer image-eval ## build and tag the three images

image-operator: $(BASE_DEPS)
	$(call BUILD,operator,$(OPERATOR_IMAGE))

image-trainer: $(BASE_DEPS)
	$(call BUILD,trainer,$(TRAINER_IMAGE),--build-arg RAY_IMAGE=$(RAY_IMAGE))

image-eval: $(BASE_DEPS)
	$(call BUILD,eval,$(EVAL_IMAGE))

# Stand-in bases for machines that cannot pull from a registry (kept once built).
base-image:
	tools/images/base-image.sh $(CONTAINER_ENGINE) $(STANDIN_ROOTFS_IMAGE) \
	  $(STANDIN_PYTHON_IMAGE) $(STANDIN_RAY_IMAGE)

image-sizes: ## the size of each built image, in MB
	@for image in $(OPERATOR_IMAGE) $(TRAINER_IMAGE) $(EVAL_IMAGE); do \
	  size=$$($(CONTAINER_ENGINE) image inspect --format '{{.Size}}' $$image 2>/dev/null) \
	    && echo "$$image $$((size / 1000000)) MB" || echo "$$image not built"; done

# Builds the images from this tree first (never tests an image older than the code), then
# runs the tests that start them.
test-images: install-dev images
	POLYPYTHIA_IMAGE_TESTS=1 CONTAINER_ENGINE=$(CONTAINER_ENGINE) OPERATOR_IMAGE=$(OPERATOR_IMAGE) \
	  TRAINER_IMAGE=$(TRAINER_IMAGE) EVAL_IMAGE=$(EVAL_IMAGE) \
	  $(PY) -m pytest -q -p no:cacheprovider tests/images

images-push: images ## push the three images to IMAGE_REGISTRY
	@[ "$(IMAGE_BASE)" = official ] || { echo "images-push: IMAGE_BASE=$(IMAGE_BASE) images are local stand-ins, not for publishing; build with IMAGE_BASE=official" >&2; exit 2; }
	$(CONTAINER_ENGINE) push $(OPERATOR_IMAGE)
	$(CONTAINER_ENGINE) push $(TRAINER_IMAGE)
	$(CONTAINER_ENGINE) push $(EVAL_IMAGE)

lint-images: ## hadolint the Dockerfile and the stand-ins' (also run by the tests)
	$(HADOLINT) --config .hadolint.yaml $(DOCKERFILES) tools/images/*.Dockerfile
