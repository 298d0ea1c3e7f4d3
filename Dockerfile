# syntax=docker/dockerfile:1
# vipavatar image. Build: `docker build -t vipavatar .`  Run: see docker-compose.yml.
#
# Stage 1 builds with the same set-up script developers use (scripts/setup.sh reads
# scripts/packages.txt: Debian packages, the PyTorch wheel that provides libtorch, and the
# registry-fetched model files), so packages and versions have one source of truth.
# Stage 2 is a slim Debian 12 with only what the binary needs at run time: the Debian packages
# that provide the libraries it links (computed from the binary, so OpenCV's runtime libraries
# follow the build), the "runtime" section of scripts/packages.txt (ffmpeg, redis-server, ...),
# libtorch (+ its CUDA libraries) copied from the wheel, the models, and a non-root user.

ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
WORKDIR /src
ENV DEBIAN_FRONTEND=noninteractive
# Set-up first (cached as long as the script, the package list and the manifest do not change).
COPY scripts/ scripts/
COPY checkpoints/manifest.json checkpoints/fetch.sh checkpoints/README.md checkpoints/
RUN SKIP_BUILD=1 scripts/setup.sh
COPY . .
RUN CARGO_PROFILE=release scripts/setup.sh \
 && mkdir -p /out/torch \
 && site="$(echo .venv/lib/python3*/site-packages)" \
 && cp -a "$site/torch/lib" /out/torch/lib \
 && if [ -d "$site/nvidia" ]; then cp -a "$site/nvidia" /out/nvidia; else mkdir -p /out/nvidia; fi \
 && cp target/release/vipavatar /out/vipavatar \
 && cp -a checkpoints /out/checkpoints \
 && for lib in $(objdump -p /out/vipavatar | awk '/NEEDED/ {print $2}'); do \
      path="$(ldconfig -p | awk -v l="$lib" '$1 == l {print $NF; exit}')"; \
      [ -n "$path" ] && dpkg -S "*/$(basename "$(readlink -f "$path")")" 2>/dev/null | head -n1 | cut -d: -f1; \
    done | sort -u > /out/runtime-libs.txt \
 && sed -n '/^# runtime/,/^# tests/p' scripts/packages.txt | grep -vE '^\s*(#|$)' > /out/runtime-packages.txt \
 && echo "runtime packages: $(cat /out/runtime-libs.txt /out/runtime-packages.txt | tr '\n' ' ')"

FROM ${RUNTIME_IMAGE} AS runtime
ENV DEBIAN_FRONTEND=noninteractive
COPY --from=build /out/runtime-libs.txt /out/runtime-packages.txt /tmp/
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends ca-certificates $(cat /tmp/runtime-libs.txt /tmp/runtime-packages.txt) \
 && rm -rf /var/lib/apt/lists/* /tmp/runtime-*.txt
# libtorch keeps the wheel's layout (torch/lib next to nvidia/*/lib) so its relative rpaths to the
# CUDA libraries resolve.
COPY --from=build /out/torch/lib /opt/torch/site-packages/torch/lib
COPY --from=build /out/nvidia /opt/torch/site-packages/nvidia
COPY --from=build /out/vipavatar /usr/local/bin/vipavatar
COPY --from=build /out/checkpoints /app/checkpoints
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin vipavatar \
 && mkdir -p /data && chown vipavatar:vipavatar /data
ENV LD_LIBRARY_PATH=/opt/torch/site-packages/torch/lib \
    VIPAVATAR_BIND=0.0.0.0:8000 \
    VIPAVATAR_DATA_DIR=/data \
    VIPAVATAR_CHECKPOINTS=/app/checkpoints \
    RUST_LOG=info
USER vipavatar
WORKDIR /app
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8000 && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 && grep -q '200 OK' <&3"]
ENTRYPOINT ["vipavatar"]
CMD ["serve"]
