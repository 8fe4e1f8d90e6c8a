# Container images (included by the Makefile). Needs a Docker engine with BuildKit;
# see docs/images.md. Override IMAGE_REGISTRY / IMAGE_TAG / DOCKER on the command line.

IMAGE_REGISTRY ?= ghcr.io/polypythia
IMAGE_TAG ?= $(shell sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$$/\1/p' charts/polypythia/Chart.yaml)
DOCKER ?= docker
HADOLINT ?= $(if $(wildcard .venv/bin/hadolint),.venv/bin/hadolint,hadolint)
DOCKERFILES := operator/Dockerfile trainer_image/Dockerfile eval_image/Dockerfile

OPERATOR_IMAGE := $(IMAGE_REGISTRY)/polypythia-operator:$(IMAGE_TAG)
TRAINER_IMAGE := $(IMAGE_REGISTRY)/polypythia-trainer:$(IMAGE_TAG)
EVAL_IMAGE := $(IMAGE_REGISTRY)/polypythia-eval:$(IMAGE_TAG)

.PHONY: images image-operator image-trainer image-eval images-push lint-images

images: image-operator image-trainer image-eval ## build and tag the three images

image-operator:
	DOCKER_BUILDKIT=1 $(DOCKER) build -f operator/Dockerfile -t $(OPERATOR_IMAGE) .

image-trainer:
	DOCKER_BUILDKIT=1 $(DOCKER) build -f trainer_image/Dockerfile -t $(TRAINER_IMAGE) .

image-eval:
	DOCKER_BUILDKIT=1 $(DOCKER) build -f eval_image/Dockerfile -t $(EVAL_IMAGE) .

images-push: images ## push the three images to IMAGE_REGISTRY
	$(DOCKER) push $(OPERATOR_IMAGE)
	$(DOCKER) push $(TRAINER_IMAGE)
	$(DOCKER) push $(EVAL_IMAGE)

lint-images: ## hadolint the Dockerfiles (also run by the tests)
	$(HADOLINT) --config .hadolint.yaml $(DOCKERFILES)
