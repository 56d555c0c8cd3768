# The confmesh image for those who build with Docker; `make image` builds
# the same layout offline without it. /usr/local/bin/confmesh is the
# entrypoint (the manifests pass only arguments); the agent copies
# /usr/local/bin/confmesh-cni onto the host once its node is attested.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -buildvcs=false -ldflags "-s -w -buildid=" -o /out/ ./cmd/confmesh ./cmd/confmesh-cni

FROM scratch
COPY --from=build /out/confmesh /out/confmesh-cni /usr/local/bin/
ENTRYPOINT ["/usr/local/bin/confmesh"]
