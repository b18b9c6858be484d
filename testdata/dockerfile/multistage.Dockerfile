# syntax=docker/dockerfile:1
# escape=\

ARG GO_VERSION=1.22
ARG BASE=127.0.0.1:5000/test/busybox:latest

from ${BASE} AS Build-Env
ARG GO_VERSION
ENV CGO_ENABLED=0 \
    GOFLAGS="-mod=vendor -trimpath"
WORKDIR /src
# copy sources, minus tests
COPY --exclude=*_test.go --chown=1000:1000 go.mod go.sum ./
copy . .
RUN --mount=type=cache,target=/root/.cache \
    --network=none \
    echo building && \
    echo done

FROM scratch
LABEL org.opencontainers.image.title="demo app" \
      version=1.0
COPY --from=build-env --chmod=0755 /src/app /usr/local/bin/app
COPY <<-EOF /etc/app.conf
	listen=:8080
	EOF
USER 65534:65534
EXPOSE 8080/tcp
VOLUME ["/data"]
HEALTHCHECK --interval=30s --timeout=3s CMD ["/usr/local/bin/app", "health"]
STOPSIGNAL SIGTERM
ONBUILD RUN echo child \
    build
ENTRYPOINT ["/usr/local/bin/app"]
CMD ["serve"]
