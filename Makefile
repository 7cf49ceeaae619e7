# Container images for users: `make images` builds <HUB>/<image>:<TAG> for every component with Docker
# (image names are upstream's, and the ones the local cluster's image table maps: meshtest.cluster.images).
HUB ?= localhost:5000
TAG ?= latest
DOCKER ?= docker
# Plain single-platform images, no attestation manifests: with Docker's containerd image store (the default
# since Docker 29) an image with them is an index that `kind load docker-image` cannot import (kind#3795).
DOCKER_BUILD_FLAGS ?= --provenance=false --sbom=false

IMAGES := pilot ztunnel install-cni proxyv2 app
dockerfile.pilot := services/istiod/Dockerfile
dockerfile.ztunnel := services/ztunnel/Dockerfile
dockerfile.install-cni := services/cni/Dockerfile
dockerfile.proxyv2 := services/waypoint/Dockerfile
dockerfile.app := e2e/src/meshtest/e2e/Dockerfile.app

.PHONY: images $(addprefix image.,$(IMAGES)) push help
help:
	@echo "make images [HUB=$(HUB)] [TAG=$(TAG)]   build $(IMAGES)"
	@echo "make push                              push them to HUB"

images: $(addprefix image.,$(IMAGES))

$(addprefix image.,$(IMAGES)): image.%:
	$(DOCKER) build $(DOCKER_BUILD_FLAGS) -f $(dockerfile.$*) -t $(HUB)/$*:$(TAG) .

push: images
	@for image in $(IMAGES); do $(DOCKER) push $(HUB)/$$image:$(TAG) || exit 1; done
