# syntax=docker/dockerfile:1
# The control plane: `tunery serve --role api` and `tunery serve --role scheduler`. No torch: the API and the
# scheduler never import it (tests/test_architecture.py), so the image stays small and starts in about a second.
# Build from the repository root:  docker build -f deploy/control-plane.Dockerfile -t tunery/control-plane .
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/tunery && /opt/tunery/bin/pip install pip==25.3
WORKDIR /src
COPY pyproject.toml README.md ./
COPY deploy/control-plane.lock deploy/
COPY api api
COPY scheduler scheduler
COPY serving serving
COPY trainer trainer
COPY tunery tunery
# No extras: the [train] extra (torch, TRL, PEFT) belongs to the trainer image. The lock pins every dependency.
RUN /opt/tunery/bin/pip install --constraint deploy/control-plane.lock . \
    && /opt/tunery/bin/python -c "import importlib.util as u; assert u.find_spec('torch') is None, 'torch in the control plane'"

FROM ${PYTHON_IMAGE}
RUN groupadd --gid 10001 tunery && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin tunery
COPY --from=build /opt/tunery /opt/tunery
# Compile once at build time: the root filesystem is read-only at run time.
RUN /opt/tunery/bin/python -m compileall -q /opt/tunery/lib
ENV PATH=/opt/tunery/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TUNERY_HOST=0.0.0.0 \
    TUNERY_DATA_DIR=/var/lib/tunery \
    TUNERY_DEMO_MODEL=false
WORKDIR /var/lib/tunery
# Numeric user, so that Kubernetes can check runAsNonRoot.
USER 10001:10001
EXPOSE 8000 50051
ENTRYPOINT ["tunery"]
CMD ["serve", "--role", "api"]
